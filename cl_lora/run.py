"""``python -m cl_lora.run``: one continual-learning run from the command line.

Exit codes: 0 success, 2 bad input (one line, no traceback), 1 a failure while running.
The run settings' flags come from :class:`~cl_lora.config.RunConfig` (each declared once);
heavy libraries (Avalanche, PEFT, transformers, timm) load only when a run or ``--list`` needs
them, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cl_lora.cli import OneLineParser, setup_logging
from cl_lora.config import RunConfig
from cl_lora.config_cli import add_settings, given_settings
from cl_lora.distributed import launched_rank
from cl_lora.errors import BadInputError, RunFailure

log = logging.getLogger("cl_lora")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m cl_lora.run", description=__doc__.splitlines()[0])
    p.add_argument(
        "--list",
        action="store_true",
        help="list streams, backbone families, init methods, baselines, plugins and "
        "calibration statistics, then exit",
    )
    source = p.add_argument_group("recipe (defaults < recipe or config file < flags)")
    chosen = source.add_mutually_exclusive_group()
    chosen.add_argument(
        "--recipe", metavar="NAME", help="a published setup's settings (see --list), e.g. o-lora-t5"
    )
    chosen.add_argument(
        "--config", metavar="FILE", type=Path, help="your own recipe file (YAML, same form)"
    )
    source.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved settings as a file --config reads, then exit",
    )
    add_settings(p)
    output = p.add_argument_group("output")
    output.add_argument("--output-dir", default="results/runs", type=Path)
    output.add_argument(
        "--resume",
        action="store_true",
        help="continue this config's run after its last finished task; skip it if finished",
    )
    output.add_argument("--quiet", action="store_true", help="no progress bars")
    output.add_argument(
        "--track",
        action="append",
        default=[],
        metavar="NAME",
        help="also log to an experiment tracker: tensorboard, wandb or mlflow (repeatable)",
    )
    return p


def listing() -> str:
    """Every registered kind, one line per entry (with its arguments and defaults), then the
    built-in recipes with their source."""
    from cl_lora import recipes
    from cl_lora.registry_index import registries

    lines = []
    for title, registry, extras in registries():
        lines.append(title)
        lines += registry.listing(extras)
    lines.append("recipes (--recipe NAME; copy the file to start your own --config)")
    for name, path in recipes.available().items():
        recipe = recipes.load(path, name)
        lines += [f"  {name:<22} {recipe.description}", f"  {'':<22} from {recipe.source}"]
        lines.append(f"  {'':<22} file {recipe.path}")
    return "\n".join(lines)


def config_from_command_line(args: argparse.Namespace) -> RunConfig:
    """The run's settings: defaults, then ``--recipe``/``--config``, then the flags given."""
    from cl_lora import recipes

    given = given_settings(args)
    if args.recipe is not None:
        return recipes.builtin(args.recipe).config(given)
    if args.config is not None:
        return recipes.load(args.config).config(given)
    return RunConfig(**given)


def printed_config(config: RunConfig) -> str:
    """``--print-config``: the settings as resolved (names checked, arguments typed and
    complete), as a file that ``--config`` reads back to the same run."""
    from cl_lora.experiment import resolve_config
    from cl_lora.recipes import to_yaml

    config = resolve_config(config)
    header = (
        f"# python -m cl_lora.run --config FILE runs these settings ({config.recipe or 'flags'})\n"
    )
    return to_yaml(config, header).rstrip()


def _fmt(value: Any) -> str:
    return "  -  " if value is None or value != value else f"{value:.3f}"


def summary(result: dict[str, Any]) -> str:
    """The accuracy matrix and the metrics as a terminal table."""
    names = [task["name"] for task in result["tasks"]]
    width = max(len(n) for n in names) + 2
    lines = [
        f"{result['stream']['name']} / {result['method']['name']} / seed {result['seed']}",
        "R[i][j]: score on task j (columns) after training task i (rows)",
        " " * width + "".join(f"{n[:9]:>10}" for n in names),
    ]
    for name, row in zip(names, result["matrix"], strict=True):
        lines.append(f"{name:<{width}}" + "".join(f"{_fmt(v):>10}" for v in row))
    metrics = result["metrics"]
    keys = ("acc", "acc_pooled", "avg_incremental_acc", "learning_acc", "bwt", "forgetting")
    for key in (*keys, "fwt"):
        why = metrics["undefined_reasons"].get(key, "")
        lines.append(f"{key:<20} {_fmt(metrics[key])}" + (f"  ({why})" if why else ""))
    retention = result.get("retention")
    if retention and retention.get("curve"):
        curve = " ".join(_fmt(v).strip() for v in retention["curve"])
        lines.append(
            f"{'retention':<20} {curve}  (probe {retention['probe']}, {retention['head']} head; "
            f"drop {_fmt(retention['drop']).strip()})"
        )
    if retention and retention.get("gold_loglik"):
        loglik = retention["gold_loglik"]
        curve = " ".join(_fmt(v).strip() for v in loglik["curve"])
        lines.append(
            f"{'':<20} {curve}  (gold log-likelihood per token; "
            f"drop {_fmt(loglik['drop']).strip()})"
        )
    lines += _probe_lines(retention or {})
    lines += _lr_lines(result)
    return "\n".join(lines)


def _lr_lines(result: dict[str, Any]) -> list[str]:
    """The adapter rate the stream trained at; when searched, how (candidates, task, cost) and
    a line when the best rate sat at an edge of the rates tried."""
    from cl_lora.lr_search import LRSearch
    from cl_lora.results import trained_lr

    lr = trained_lr(result)
    if lr is None:
        return []
    if not result.get("lr_search"):
        return [f"{'lr (trained)':<20} {lr:g}  (fixed)"]
    search = LRSearch.from_record(result["lr_search"])
    added = len(search.extended)
    tried = f"{len(search.candidates) - added}" + (f" + {added} added" if added else "")
    cost = f", {sum(search.seconds):.0f} s" if search.seconds else ""
    lines = [
        f"{'lr (trained)':<20} {lr:g}  (searched: best of {tried} rates, "
        f"{min(search.candidates):g}..{max(search.candidates):g}, on "
        f"{', '.join(search.tasks)}'s validation split{cost})"
    ]
    note = search.edge_note()
    if note:
        lines.append(f"{'':<20} {note}; the rates tried do not bracket it")
    return lines


def _probe_lines(retention: dict[str, Any]) -> list[str]:
    """One line per probe after the first (whose curve is the retention line), then TRACE's
    general-ability change."""
    probes = list(retention.get("probes", {}).items())[1:]
    lines = []
    for name, probe in probes:
        curve = " ".join(_fmt(v).strip() for v in probe["curve"])
        chance = probe.get("chance")
        lines.append(
            f"{'probe ' + name:<20} {curve}  ({probe['metric']}"
            + (f", chance {_fmt(chance).strip()}" if chance is not None else "")
            + f"; drop {_fmt(probe['drop']).strip()})"
        )
    if "general_ability" in retention:
        delta = retention["general_ability"]["delta"]
        lines.append(f"{'general ability':<20} {_fmt(delta)}  (mean change over the probes)")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    rank = launched_rank()  # > 0: another process of a multi-process run
    try:
        args = build_parser().parse_args(argv)
        if args.list:
            print(listing())
            return 0
        config = config_from_command_line(args)
        if args.print_config:
            print(printed_config(config))
            return 0
        from cl_lora.experiment import run_experiment
        from cl_lora.trackers import check_trackers

        check_trackers(args.track)
        output = run_experiment(
            config,
            args.output_dir,
            verbose=not args.quiet and not rank,
            resume=args.resume,
            track=args.track,
        )
    except BadInputError as error:  # every process finds the same: the first one says it
        if not rank:
            print(f"error: {error}", file=sys.stderr)
        return 2
    except RunFailure as error:  # possibly in one process only: each says its own
        print(f"{f'process {rank}: ' if rank else ''}run failed: {error}", file=sys.stderr)
        return 1
    if rank:
        return 0
    if output.skipped:
        print(f"already finished: {output.run_dir} (nothing ran)")
    print(summary(output.result))
    print(f"result: {output.run_dir / 'result.json'}")
    if output.result["config"].get("save_adapters"):
        print(f"adapters (PEFT, after each task): {output.run_dir / 'adapters'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
