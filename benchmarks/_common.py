"""What the benchmark scripts share: batches of labelled rows, alternating timed calls, the
command line, printing, the JSON file, exit codes."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from cl_lora import inits
from cl_lora.cli import OneLineParser
from cl_lora.errors import BadInputError

SettingsT = TypeVar("SettingsT")
#: A warm-up call at least this long counts as a timed call: the one-time costs a warm-up removes
#: (first-use allocations, library initialization, well under 0.1 s) are then under 1% of it.
LONG_CALL_S = 5.0


def settings_from_args(cls: type[SettingsT], args: argparse.Namespace) -> SettingsT:
    """The ``cls`` dataclass from the parsed options of the same names (lists become tuples)."""
    values = {field.name: getattr(args, field.name) for field in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def init_method_names(methods: Sequence[str]) -> list[str]:
    """``methods`` without repeats, or every registered init method when empty; an unknown name
    is a one-line error listing the known ones."""
    known = inits.available()
    unknown = [name for name in methods if name not in known]
    if unknown:
        raise BadInputError(
            f"unknown init method {', '.join(unknown)}: choose from {', '.join(known)}"
        )
    return list(dict.fromkeys(methods)) if methods else known


def labelled_collate(
    collate: Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]],
) -> Callable[[Sequence[tuple[dict[str, Any], int]]], tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """A DataLoader collate for ``(row, label)`` items: the backbone's inputs and the labels."""

    def collate_fn(items):
        examples, labels = zip(*items, strict=True)
        return collate(examples), torch.tensor(labels)

    return collate_fn


def alternating_calls(
    sides: Mapping[str, Callable[[], float]], repeats: int
) -> dict[str, list[float]]:
    """``repeats`` timed calls of each side, the sides taking turns call by call so that drift in
    machine load hits all of them; a side's call returns the seconds it measured (so it can leave
    its own preparation untimed). One warm-up call per side first, kept as its first timed call
    when it takes :data:`LONG_CALL_S` or more."""
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for call in range(1 + repeats):  # call 0: the warm-up
        for name, side in sides.items():
            if len(seconds[name]) < repeats:
                elapsed = side()
                if call or elapsed >= LONG_CALL_S:
                    seconds[name].append(elapsed)
    return seconds


def finish(result: dict[str, Any], table: str, json_path: Path | None) -> dict[str, Any]:
    """Print the table, write the numbers to ``json_path`` when given, return them."""
    print(table)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"numbers: {json_path}")
    return result


def benchmark_parser(module: str, doc: str) -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks.<module>``: one-line errors, the first line of
    ``doc`` as its description, and ``--json OUT`` (read by :func:`run_benchmark`)."""
    parser = OneLineParser(prog=f"python -m benchmarks.{module}", description=doc.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    return parser


def settings_parser(module: str, doc: str, settings_cls: type) -> argparse.ArgumentParser:
    """:func:`benchmark_parser` with one flag per field of the ``settings_cls`` dataclass
    (``--field-name``, of the default's type and value)."""
    parser = benchmark_parser(module, doc)
    for name, default in vars(settings_cls()).items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, dest=name, type=type(default), default=default)
    return parser


def run_benchmark(
    argv: Sequence[str] | None,
    parser: argparse.ArgumentParser,
    settings_cls: type[SettingsT],
    measure: Callable[[SettingsT], dict[str, Any]],
    report: Callable[[dict[str, Any]], str],
) -> dict[str, Any]:
    """A benchmark's ``main``: parse ``argv`` into ``settings_cls``, measure, print the
    ``report``, write ``--json`` when given; return the numbers."""
    args = parser.parse_args(argv)
    result = measure(settings_from_args(settings_cls, args))
    return finish(result, report(result), args.json)


def entry_point(main: Callable[[], Any]) -> None:
    """Run ``main``; bad input is one line on stderr and exit code 2."""
    try:
        main()
    except BadInputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
