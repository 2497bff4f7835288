"""From sweep arguments to the list of resolved run configs, checked before anything runs."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from cl_lora.cli import parse_key_values
from cl_lora.config import RunConfig, parse_setting
from cl_lora.errors import BadInputError, did_you_mean
from cl_lora.experiment import resolve_config, run_id_of
from cl_lora.recipes import Recipe

GRID_AXES = ("stream", "init", "init_args", "baseline", "baseline_args", "seed")  # not --set


def parse_init_spec(spec: str, option: str = "--inits") -> tuple[str, dict[str, str]]:
    """``NAME`` or ``NAME:KEY=VALUE,KEY=VALUE`` (e.g. ``intermediate:f=0.25``)."""
    name, _, args = spec.partition(":")
    pairs = [pair for pair in args.split(",") if pair]
    return name, parse_key_values(pairs, option=f"{option} {name}:")


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs as typed RunConfig fields; unknown keys name the close ones."""
    fields = [f.name for f in dataclasses.fields(RunConfig) if f.name not in GRID_AXES]
    overrides = {}
    for key, text in parse_key_values(pairs, option="--set").items():
        if key not in fields:
            hint = did_you_mean(key, fields, n=1)
            axes = "(streams, inits and seeds are grid axes)" if key in GRID_AXES else ""
            raise BadInputError(f"--set {key} is not a run setting: {hint}{axes}".rstrip(": "))
        overrides[key] = parse_setting(key, text, f"--set {key}")
    return overrides


def expand_grid(
    streams: Sequence[str] | None,
    inits: Sequence[str],
    seeds: Sequence[int],
    overrides: Mapping[str, Any] | None = None,
    baselines: Sequence[str] = (),
    recipe: Recipe | None = None,
) -> list[RunConfig]:
    """Every (stream, method, seed) as a resolved config; any bad name fails before a run.

    Methods are the init specs and the baseline specs (``NAME[:KEY=VALUE,...]`` each).
    Duplicates (e.g. ``intermediate`` and ``intermediate:f=0.5``, the default) collapse.
    With a ``recipe``, each run's settings are the recipe's under the grid's and the
    overrides' (``streams=None``: the recipe's stream; without one, the default stream).
    """
    methods = [{"init": name, "init_args": args} for name, args in map(parse_init_spec, inits)] + [
        {"baseline": name, "baseline_args": args}
        for name, args in (parse_init_spec(spec, "--baselines") for spec in baselines)
    ]
    configs: dict[str, RunConfig] = {}
    for stream, method, seed in itertools.product(streams or [None], methods, seeds):
        given = {"seed": seed, **method, **(overrides or {})}
        if stream is not None:
            given["stream"] = stream
        config = recipe.config(given) if recipe else RunConfig(**given)
        resolved = resolve_config(config)
        configs.setdefault(run_id_of(resolved), resolved)
    return list(configs.values())
