"""The command line of :class:`~cl_lora.config.RunConfig`, generated from its fields: one flag
per setting (``max_length`` -> ``--max-length``), grouped as the settings are, with the help
text and default the field declares.

A setting declared with a ``bare`` value may be given without one (``--lr-search`` alone: the
default grid); the flag then takes its value only from the next word if that word does not
start with ``-``.

Only the flags a user typed reach the namespace (their argparse default is ``SUPPRESS``), so a
recipe or config file can sit between the defaults and the command line:
defaults < recipe/config file < flags (:func:`given_settings`).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import Any

from cl_lora.cli import parse_key_values
from cl_lora.config import GROUPS, RunConfig, declared_type, flag_of, parse_setting
from cl_lora.errors import BadInputError

_DICTS = ("init_args", "baseline_args", "plugin_args")  # repeatable KEY=VALUE flags
_REPEATED = ("plugins",)  # repeatable NAME flags
_PER_TASK = "per_task"  # repeatable TASK:KEY=VALUE flags


def add_settings(parser: argparse.ArgumentParser) -> None:
    """One option per :class:`RunConfig` field, in one argument group per settings group."""
    groups = {name: parser.add_argument_group(title) for name, title in GROUPS.items()}
    for spec in dataclasses.fields(RunConfig):
        meta = spec.metadata
        if not meta["flag"]:
            continue
        flag = flag_of(spec.name)
        group = groups[meta["group"]]
        help_text = meta["help"].replace("%", "%%")  # argparse formats help with %
        common = {"dest": spec.name, "default": argparse.SUPPRESS}
        if spec.name in (*_DICTS, _PER_TASK):
            metavar = "TASK:KEY=VALUE" if spec.name == _PER_TASK else "KEY=VALUE"
            group.add_argument(
                flag, action="append", metavar=metavar, help=f"{help_text}; repeatable", **common
            )
        elif spec.name in _REPEATED:
            group.add_argument(flag, action="append", help=f"{help_text}; repeatable", **common)
        elif declared_type(spec.name)[0] is bool:
            group.add_argument(
                flag, action=argparse.BooleanOptionalAction, help=help_text, **common
            )
        else:
            default = spec.default
            shown = f" (default {_shown(default)})" if default not in (None, "") else ""
            bare = {} if meta["bare"] is None else {"nargs": "?", "const": meta["bare"]}
            group.add_argument(
                flag,
                choices=meta["choices"],
                type=lambda text, name=spec.name: parse_setting(name, text),
                metavar=spec.name.upper() if meta["choices"] is None else None,
                help=help_text + shown,
                **bare,  # a flag that may stand alone: argparse passes const as it is
                **common,
            )


def _shown(default: Any) -> str:
    """A default as ``--help`` shows it (a tuple comma-separated, as the flag takes it)."""
    return ",".join(f"{item:g}" for item in default) if isinstance(default, tuple) else str(default)


def parse_per_task(pairs: Sequence[str]) -> dict[str, dict[str, str]]:
    """``TASK:KEY=VALUE`` strings to ``{task: {key: value}}`` (values typed later)."""
    per_task: dict[str, dict[str, str]] = {}
    for pair in pairs:
        task, sep, rest = pair.partition(":")
        if not sep or not task.strip():
            raise BadInputError(
                f"--per-task '{pair}' is not TASK:KEY=VALUE (e.g. --per-task mnli:epochs=2)"
            )
        per_task.setdefault(task.strip(), {}).update(parse_key_values([rest], "--per-task"))
    return per_task


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the command line gave, typed, by field name (nothing for an absent flag)."""
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(RunConfig):
        if not hasattr(args, spec.name):
            continue
        value = getattr(args, spec.name)
        if spec.name in _DICTS:
            value = parse_key_values(value, flag_of(spec.name))
        elif spec.name == _PER_TASK:
            value = parse_per_task(value)
        elif spec.name in _REPEATED:
            value = tuple(value)
        values[spec.name] = value
    return values
