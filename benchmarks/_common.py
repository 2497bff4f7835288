"""What the benchmark scripts share: batches of labelled rows, printing, the JSON file, exit
codes."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from cl_lora.errors import BadInputError

SettingsT = TypeVar("SettingsT")


def settings_from_args(cls: type[SettingsT], args: argparse.Namespace) -> SettingsT:
    """The ``cls`` dataclass from the parsed options of the same names (lists become tuples)."""
    values = {field.name: getattr(args, field.name) for field in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def labelled_collate(
    collate: Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]],
) -> Callable[[Sequence[tuple[dict[str, Any], int]]], tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """A DataLoader collate for ``(row, label)`` items: the backbone's inputs and the labels."""

    def collate_fn(items):
        examples, labels = zip(*items, strict=True)
        return collate(examples), torch.tensor(labels)

    return collate_fn


def finish(result: dict[str, Any], table: str, json_path: Path | None) -> dict[str, Any]:
    """Print the table, write the numbers to ``json_path`` when given, return them."""
    print(table)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"numbers: {json_path}")
    return result


def entry_point(main: Callable[[], Any]) -> None:
    """Run ``main``; bad input is one line on stderr and exit code 2."""
    try:
        main()
    except BadInputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
