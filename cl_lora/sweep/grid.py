"""From sweep arguments to the list of resolved run configs, checked before anything runs."""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from cl_lora.cli import parse_bool, parse_key_values
from cl_lora.config import RunConfig
from cl_lora.errors import BadInputError
from cl_lora.experiment import resolve_config, run_id_of

GRID_AXES = ("stream", "init", "init_args", "baseline", "baseline_args", "seed")  # not --set
_HINTS = typing.get_type_hints(RunConfig)


def parse_init_spec(spec: str, option: str = "--inits") -> tuple[str, dict[str, str]]:
    """``NAME`` or ``NAME:KEY=VALUE,KEY=VALUE`` (e.g. ``intermediate:f=0.25``)."""
    name, _, args = spec.partition(":")
    pairs = [pair for pair in args.split(",") if pair]
    return name, parse_key_values(pairs, option=f"{option} {name}:")


def _coerce(key: str, text: str) -> Any:
    """``text`` as the type of RunConfig field ``key`` (``none`` for an optional field)."""
    declared = _HINTS[key]
    if typing.get_origin(declared) in (typing.Union, types.UnionType):  # "X | None"
        if text.lower() == "none":
            return None
        declared = next(m for m in typing.get_args(declared) if m is not type(None))
    kind = typing.get_origin(declared) or declared  # tuple[str, ...] -> tuple
    if kind is tuple:
        parts = [part for part in text.split(",") if part]
        element = (typing.get_args(declared) or (str,))[0]
        try:
            return tuple(element(part) for part in parts)
        except ValueError:
            raise BadInputError(f"--set {key}={text}: {key} takes {element.__name__}s") from None
    if kind is bool:
        return parse_bool(text, f"--set {key}")
    try:
        return kind(text)
    except ValueError:
        raise BadInputError(f"--set {key}={text}: {key} takes a {kind.__name__}") from None


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs as typed RunConfig fields; unknown keys name the close ones."""
    fields = [f.name for f in dataclasses.fields(RunConfig) if f.name not in GRID_AXES]
    overrides = {}
    for key, text in parse_key_values(pairs, option="--set").items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f": did you mean '{close[0]}'?" if close else ""
            axes = " (streams, inits and seeds are grid axes)" if key in GRID_AXES else ""
            raise BadInputError(f"--set {key} is not a run setting{hint}{axes}")
        overrides[key] = _coerce(key, text)
    return overrides


def expand_grid(
    streams: Sequence[str],
    inits: Sequence[str],
    seeds: Sequence[int],
    overrides: Mapping[str, Any] | None = None,
    baselines: Sequence[str] = (),
) -> list[RunConfig]:
    """Every (stream, method, seed) as a resolved config; any bad name fails before a run.

    Methods are the init specs and the baseline specs (``NAME[:KEY=VALUE,...]`` each).
    Duplicates (e.g. ``intermediate`` and ``intermediate:f=0.5``, the default) collapse.
    """
    methods = [{"init": name, "init_args": args} for name, args in map(parse_init_spec, inits)] + [
        {"baseline": name, "baseline_args": args}
        for name, args in (parse_init_spec(spec, "--baselines") for spec in baselines)
    ]
    configs: dict[str, RunConfig] = {}
    for stream, method, seed in itertools.product(streams, methods, seeds):
        config = RunConfig(stream=stream, seed=seed, **method, **(overrides or {}))
        resolved = resolve_config(config)
        configs.setdefault(run_id_of(resolved), resolved)
    return list(configs.values())
