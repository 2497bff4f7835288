"""Start-up time of the command line against ``import torch``, side by side in one run.

Each command runs in a fresh interpreter (``subprocess``, output discarded), the three
alternating for ``--repeats`` rounds so that drift in machine load hits all of them; the table
shows each one's median wall time and its ratio to ``import torch`` (the target: at most 2x for
``--help`` and ``--list``).

    python -m benchmarks.startup [--repeats 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import entry_point, finish
from cl_lora.cli import OneLineParser, require_at_least_one

COMMANDS = {
    "import torch": ["-c", "import torch"],
    "run --help": ["-m", "cl_lora.run", "--help"],
    "run --list": ["-m", "cl_lora.run", "--list"],
}


def wall_time(arguments: list[str]) -> float:
    """Seconds one fresh interpreter takes for ``python <arguments>``."""
    start = time.perf_counter()
    subprocess.run([sys.executable, *arguments], check=True, capture_output=True)
    return time.perf_counter() - start


def measure(repeats: int) -> dict[str, Any]:
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(repeats):
        for name, arguments in COMMANDS.items():
            times[name].append(wall_time(arguments))
    medians = {name: statistics.median(values) for name, values in times.items()}
    base = medians["import torch"]
    return {
        "repeats": repeats,
        "seconds": times,
        "median_s": medians,
        "ratio_to_torch": {name: value / base for name, value in medians.items()},
    }


def table(result: dict[str, Any]) -> str:
    lines = [f"start-up, median of {result['repeats']} fresh interpreters"]
    lines.append(f"{'command':<14} {'median s':>9} {'x torch':>8}  rounds")
    for name, median in result["median_s"].items():
        rounds = " ".join(f"{value:.2f}" for value in result["seconds"][name])
        ratio = result["ratio_to_torch"][name]
        lines.append(f"{name:<14} {median:>9.2f} {ratio:>7.2f}x  {rounds}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m benchmarks.startup", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="rounds of the three commands")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    require_at_least_one(args, ("repeats",))
    result = measure(args.repeats)
    return finish(result, table(result), args.json)


if __name__ == "__main__":
    entry_point(main)
