"""``python -m cl_lora.sweep``: a grid of runs, locally or on Ray, safe to re-run.

Exit codes: 0 every run finished, 1 some run failed (the others still ran), 2 bad input
(nothing ran).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from cl_lora import recipes
from cl_lora.cli import OneLineParser, setup_logging
from cl_lora.config import RunConfig
from cl_lora.distributed import launched_world
from cl_lora.errors import BadInputError
from cl_lora.experiment import CHECKPOINT, finished_result, run_id_of
from cl_lora.results import write_json
from cl_lora.sweep.backends import BACKENDS, Event, local_runs, ray_runs
from cl_lora.sweep.grid import expand_grid, parse_overrides

log = logging.getLogger("cl_lora.sweep")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m cl_lora.sweep", description=__doc__.splitlines()[0])
    p.add_argument(
        "--streams", nargs="+", metavar="STREAM", help="default: the recipe's, else offline-text"
    )
    chosen = p.add_mutually_exclusive_group()
    chosen.add_argument(
        "--recipe", metavar="NAME", help="a published setup's settings for every run (--list)"
    )
    chosen.add_argument("--config", metavar="FILE", type=Path, help="your own recipe file")
    p.add_argument(
        "--inits",
        nargs="+",
        metavar="INIT",
        help="init methods, each NAME or NAME:KEY=VALUE,... (e.g. intermediate:f=0.25); "
        "default lora unless --baselines is given",
    )
    p.add_argument(
        "--baselines",
        nargs="+",
        default=[],
        metavar="BASELINE",
        help="baselines, each NAME or NAME:KEY=VALUE,... (e.g. o-lora:lambda_orth=0.1)",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="SEED")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a run setting for every run, as named in result.json's config (e.g. epochs=1)",
    )
    p.add_argument("--backend", choices=BACKENDS, default="local")
    p.add_argument(
        "--max-parallel",
        type=int,
        help="runs at once (local: default 1; ray: default 0 = as many as resources allow)",
    )
    p.add_argument("--cpus-per-run", type=float, default=1.0, help="ray: CPUs each run asks for")
    p.add_argument(
        "--gpus-per-run",
        type=float,
        help="ray: GPUs each run asks for, fractions allowed (default 1 if the cluster has any)",
    )
    p.add_argument("--output-dir", default="results/runs", type=Path)
    p.add_argument("--dry-run", action="store_true", help="show the grid and its state, run none")
    return p


def _skipped(run_id: str, result: dict[str, Any]) -> dict[str, Any]:
    metrics = result["metrics"]
    return {
        "run_id": run_id,
        "status": "skipped",
        "acc": metrics["acc"],
        "forgetting": metrics["forgetting"],
    }


def _events(
    args: argparse.Namespace, todo: Mapping[str, RunConfig], output_dir: Path
) -> Iterator[Event]:
    if args.backend == "ray":
        parallel = 0 if args.max_parallel is None else args.max_parallel
        return ray_runs(todo, output_dir, parallel, args.cpus_per_run, args.gpus_per_run)
    return local_runs(todo, output_dir, args.max_parallel or 1)


def _line(record: dict[str, Any]) -> str:
    if record["status"] == "failed":
        return f"FAILED {record['run_id']}: {record['error']}"
    scores = "  ".join(
        f"{key} {record[key]:.3f}" for key in ("acc", "forgetting") if record.get(key) is not None
    )
    return f"{record['status']} {record['run_id']}  {scores}  ({record.get('wall_s', 0):.0f} s)"


def run_sweep(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run the grid, printing one line per event; returns a record per run, in grid order."""
    if launched_world() > 1:
        raise BadInputError(
            f"a sweep was launched as {launched_world()} processes: launch it as one process "
            "(its runs spread over --backend local or ray), or launch single runs with "
            "torchrun / accelerate launch -m cl_lora.run"
        )
    if args.max_parallel is not None and args.max_parallel < 0:
        raise BadInputError("--max-parallel must be 0 (ray: no limit) or more")
    inits = args.inits if args.inits is not None else ([] if args.baselines else ["lora"])
    overrides = parse_overrides(args.set)
    recipe = recipes.builtin(args.recipe) if args.recipe else None
    if args.config is not None:
        recipe = recipes.load(args.config)
    configs = expand_grid(args.streams, inits, args.seeds, overrides, args.baselines, recipe)
    grid = {run_id_of(config): config for config in configs}
    output_dir = args.output_dir.resolve()
    finished = {
        run_id: result
        for run_id in grid
        if (result := finished_result(output_dir / run_id)) is not None
    }
    records = {run_id: _skipped(run_id, result) for run_id, result in finished.items()}
    todo = {run_id: config for run_id, config in grid.items() if run_id not in finished}
    resumable = {run_id for run_id in todo if (output_dir / run_id / CHECKPOINT).exists()}
    states = {run_id: "finished" if run_id in finished else "new" for run_id in grid}
    states.update(dict.fromkeys(resumable, "resume"))
    counts = {s: list(states.values()).count(s) for s in ("finished", "resume", "new")}
    print(
        f"sweep: {len(grid)} runs -> {output_dir}: {counts['finished']} finished (skipped), "
        f"{counts['resume']} to resume, {counts['new']} new; backend {args.backend}",
        flush=True,
    )
    if args.dry_run:
        for run_id, state in states.items():
            print(f"  {state:<9} {run_id}")
        return list(records.values())
    output_dir.mkdir(parents=True, exist_ok=True)
    running = 0
    for kind, payload in _events(args, todo, output_dir) if todo else ():  # no Ray start-up
        running += 1 if kind == "start" else -1
        if kind == "end":
            records[payload["run_id"]] = payload
        failed = sum(r["status"] == "failed" for r in records.values())
        status = f"[{len(records)}/{len(grid)} done | {running} running | {failed} failed]"
        text = f"start {payload}" if kind == "start" else _line(payload)
        print(f"{time.strftime('%H:%M:%S')} {status} {text}", flush=True)
    ordered = [records[run_id] for run_id in grid]
    _write_manifest(output_dir, args, ordered)
    return ordered


def _write_manifest(output_dir: Path, args: argparse.Namespace, records: list[dict]) -> Path:
    """``sweep-<hash of the run ids>.json``: the command and every run's outcome."""
    digest = hashlib.sha256(" ".join(r["run_id"] for r in records).encode()).hexdigest()[:8]
    path = output_dir / f"sweep-{digest}.json"
    write_json(path, {"argv": sys.argv[1:], "backend": args.backend, "runs": records})
    return path


def summary(records: Sequence[dict[str, Any]]) -> str:
    columns = ["run_id", "status", "acc", "forgetting", "wall_s", "error"]
    frame = pd.DataFrame(records).reindex(columns=columns)
    return frame.dropna(axis=1, how="all").to_string(index=False, float_format="%.3f", na_rep="-")


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    try:
        args = build_parser().parse_args(argv)
        records = run_sweep(args)
    except BadInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if records:
        print(summary(records))
    failed = [r for r in records if r["status"] == "failed"]
    if failed:
        print(f"{len(failed)} run(s) failed; their error.json says why", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
