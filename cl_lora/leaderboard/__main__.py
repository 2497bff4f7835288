"""``python -m cl_lora.leaderboard RUNS_DIR``: tables, comparisons and figures over many runs.

Reads every ``result.json`` under RUNS_DIR and writes ``LEADERBOARD.md`` (and with ``--format
csv`` ``leaderboard.csv``, ``paired.csv``, ``runs.csv``) plus ``plots/`` into ``--out``
(default: RUNS_DIR); ``--html DIR`` writes the static site (:mod:`.site`) to DIR, alone unless
``--format`` or ``--out`` asks for the rest too. Exit codes: 0 written, 2 bad input (nothing
written).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from cl_lora.cli import OneLineParser
from cl_lora.errors import BadInputError
from cl_lora.leaderboard.aggregate import aggregate, paired_with_reference
from cl_lora.leaderboard.collect import METRICS, collect_runs
from cl_lora.leaderboard.plots import write_plots
from cl_lora.leaderboard.references import load_references, split_references
from cl_lora.leaderboard.report import FORMATS, Leaderboard, to_csv, to_markdown
from cl_lora.leaderboard.site import check_site_folder, write_site
from cl_lora.results import write_atomic

DEFAULT_REFERENCES = Path(__file__).resolve().parents[2] / "results" / "references"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m cl_lora.leaderboard", description=__doc__.splitlines()[0])
    p.add_argument("runs_dir", type=Path, metavar="RUNS_DIR", help="folder of run folders")
    p.add_argument("--out", type=Path, help="output folder (default: RUNS_DIR)")
    p.add_argument(
        "--format",
        nargs="+",
        type=_format,
        choices=FORMATS,
        metavar="FORMAT",
        help=f"any of {', '.join(FORMATS)} (default md; none with --html alone)",
    )
    p.add_argument(
        "--html",
        type=Path,
        metavar="DIR",
        help="write the leaderboard as a static site to DIR (open DIR/index.html; an earlier "
        "site there is replaced)",
    )
    p.add_argument(
        "--compare", action="store_true", help="place published reference numbers next to ours"
    )
    p.add_argument(
        "--references",
        type=Path,
        default=DEFAULT_REFERENCES,
        metavar="DIR",
        help="folder of reference CSV files (default: the checkout's results/references)",
    )
    return p


def _format(text: str) -> str:
    if text == "html":
        raise argparse.ArgumentTypeError(
            "html is no longer a format: pass --html DIR for the leaderboard site"
        )
    return text


def build(args: argparse.Namespace) -> tuple[Leaderboard, list[str]]:
    """Collect, aggregate and compare; returns the leaderboard (figures not drawn yet) and
    the warnings to print."""
    if args.html is not None:
        check_site_folder(args.html)
    if not args.runs_dir.is_dir():
        raise BadInputError(
            f"{args.runs_dir} is not a folder: pass the folder that holds the run folders "
            "(e.g. results/runs)"
        )
    runs = collect_runs(args.runs_dir)
    warnings = [f"skipped {path}: {reason}" for path, reason in runs.skipped]
    if runs.table.empty:
        raise BadInputError(
            f"no usable result.json under {args.runs_dir} ({len(runs.skipped)} skipped): "
            "run python -m cl_lora.run or python -m cl_lora.sweep with --output-dir there first"
        )
    matching = other = None
    if args.compare:
        references, problems = load_references(args.references)
        warnings += problems
        if references.empty:
            raise BadInputError(
                f"--compare: no reference rows in {args.references}: pass --references DIR "
                "with the reference CSV files"
            )
        matching, other = split_references(references, runs.table, METRICS)
    skipped = [
        f"{path.relative_to(args.runs_dir).as_posix()}: {reason}" for path, reason in runs.skipped
    ]
    board = Leaderboard(
        table=aggregate(runs.table),
        runs=runs.table,
        paired=paired_with_reference(runs.table),
        matching=matching,
        other=other,
        figures=[],
        skipped=skipped,
    )
    return board, warnings


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        board, warnings = build(args)
    except BadInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"read {len(board.runs)} runs of {len(board.table)} methods; drawing figures", flush=True)
    if args.html is None or args.format or args.out:
        out = args.out or args.runs_dir
        board.figures = write_plots(board.runs, board.table, out / "plots")
        files = {"LEADERBOARD.md": to_markdown(board, out)}
        if "csv" in (args.format or []):
            files.update(to_csv(board, args.runs_dir))
        for name, text in files.items():
            write_atomic(out / name, text.encode())
        print(f"wrote {', '.join(files)} and {len(board.figures)} figures to {out}")
    if args.html is not None:
        pages, figures = write_site(board, args.runs_dir, args.html)
        print(
            f"wrote the site to {args.html}: open {args.html / 'index.html'} "
            f"({pages} run pages, {figures} figures)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
