"""Typed keyword arguments of registered things (init methods, baselines, plugins): what
``--init-arg``/``--baseline-arg``/``--plugin-arg KEY=VALUE`` may set, with defaults and help."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cl_lora.cli import parse_bool
from cl_lora.errors import BadInputError


@dataclass(frozen=True)
class Argument:
    """One ``KEY=VALUE`` an entry accepts (``choices``: the values allowed, if only a few are)."""

    type: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None


def resolve_arguments(
    owner: str, arguments: Mapping[str, Argument], args: Mapping[str, Any]
) -> dict[str, Any]:
    """``args`` with every declared argument's default filled in and values coerced to the
    declared types; unknown keys and uncoercible values are :class:`BadInputError` naming
    ``owner`` (e.g. ``"init 'pissa'"``, ``"baseline 'o-lora'"``)."""
    unknown = sorted(set(args) - set(arguments))
    if unknown:
        accepted = ", ".join(sorted(arguments)) or "no arguments"
        raise BadInputError(f"{owner} does not take {', '.join(unknown)}: it accepts {accepted}")
    resolved = {}
    for key, spec in arguments.items():
        value = args.get(key, spec.default)
        if spec.type is bool and isinstance(value, str):
            value = parse_bool(value, f"{owner} argument {key}")
        if value is not None and not isinstance(value, spec.type):
            try:
                value = spec.type(value)
            except (TypeError, ValueError):
                raise BadInputError(
                    f"{owner} argument {key}={value!r} is not a {spec.type.__name__}: {spec.help}"
                ) from None
        if spec.choices is not None and value not in spec.choices:
            allowed = ", ".join(map(str, spec.choices))
            raise BadInputError(f"{owner} argument {key}={value!r}: choose one of {allowed}")
        resolved[key] = value
    return resolved


def defaults_text(arguments: Mapping[str, Argument]) -> str:
    """``key=default, ...`` for a one-line listing."""
    return ", ".join(f"{key}={spec.default}" for key, spec in arguments.items())
