"""The command line of :class:`~cl_lora.config.RunConfig`, generated from its fields: one flag
per setting (``max_length`` -> ``--max-length``), grouped as the settings are, with the help
text and default the field declares."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from cl_lora.cli import parse_key_values
from cl_lora.config import GROUPS, RunConfig, declared_type, flag_of, parse_setting

_DICTS = ("init_args", "baseline_args", "plugin_args")  # repeatable KEY=VALUE flags
_REPEATED = ("plugins",)  # repeatable NAME flags


def add_settings(parser: argparse.ArgumentParser) -> None:
    """One option per :class:`RunConfig` field, in one argument group per settings group."""
    groups = {name: parser.add_argument_group(title) for name, title in GROUPS.items()}
    for spec in dataclasses.fields(RunConfig):
        meta = spec.metadata
        flag = flag_of(spec.name)
        group = groups[meta["group"]]
        help_text = meta["help"].replace("%", "%%")  # argparse formats help with %
        if spec.name in _DICTS:
            group.add_argument(
                flag, dest=spec.name, action="append", default=[], metavar="KEY=VALUE",
                help=f"{help_text}; repeatable",
            )  # fmt: skip
        elif spec.name in _REPEATED:
            group.add_argument(
                flag, dest=spec.name, action="append", default=[], help=f"{help_text}; repeatable"
            )
        elif declared_type(spec.name)[0] is bool:
            group.add_argument(flag, dest=spec.name, action="store_true", help=help_text)
        else:
            default = spec.default
            shown = f" (default {default})" if default not in (None, "") else ""
            group.add_argument(
                flag,
                dest=spec.name,
                default=default,
                choices=meta["choices"],
                type=lambda text, name=spec.name: parse_setting(name, text),
                metavar=spec.name.upper() if meta["choices"] is None else None,
                help=help_text + shown,
            )


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The :class:`RunConfig` the parsed settings describe."""
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(RunConfig):
        value = getattr(args, spec.name)
        if spec.name in _DICTS:
            value = parse_key_values(value, flag_of(spec.name))
        elif spec.name in _REPEATED:
            value = tuple(value)
        values[spec.name] = value
    return RunConfig(**values)
