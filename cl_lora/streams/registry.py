"""Stream registry: builders register under a name with a one-line description."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any

from cl_lora.errors import BadInputError
from cl_lora.streams.base import Stream, StreamOptions

Builder = Callable[[StreamOptions], Stream]

_BUILDERS: dict[str, Builder] = {}
_DESCRIPTIONS: dict[str, str] = {}
_RECIPES: dict[str, dict[str, Any]] = {}
_SEQUENCES: set[str] = set()


def register(
    name: str,
    description: str,
    recipe: Mapping[str, Any] | None = None,
    sequences: bool = False,
) -> Callable[[Builder], Builder]:
    """Decorator that makes ``build(options) -> Stream`` available as stream ``name``.

    ``recipe`` holds the stream's own defaults for run settings the user did not set (e.g. a
    language-model stream's ``max_length``), so that they are known before the stream is built.
    ``sequences`` says the builder honours ``options.order`` and ``options.tasks``; other
    streams have one fixed task sequence and refuse them.
    """

    def decorate(builder: Builder) -> Builder:
        if name in _BUILDERS:
            raise ValueError(f"stream '{name}' is already registered")
        _BUILDERS[name] = builder
        _DESCRIPTIONS[name] = description
        _RECIPES[name] = dict(recipe or {})
        if sequences:
            _SEQUENCES.add(name)
        return builder

    return decorate


def recipe(name: str) -> dict[str, Any]:
    """The run-setting defaults stream ``name`` was registered with (may be empty)."""
    get(name)
    return dict(_RECIPES[name])


def available() -> list[str]:
    """Names of all registered streams, sorted."""
    return sorted(_BUILDERS)


def describe(name: str) -> str:
    """The one-line description stream ``name`` was registered with (for ``--list``)."""
    get(name)  # the same error and suggestion as get() for an unknown name
    return _DESCRIPTIONS[name]


def get(name: str) -> Builder:
    """The builder registered as ``name``; an unknown name suggests the closest one."""
    if name not in _BUILDERS:
        close = difflib.get_close_matches(name, available(), n=1)
        hint = f": did you mean '{close[0]}'?" if close else ""
        raise BadInputError(
            f"unknown stream '{name}'{hint} (python -m cl_lora.run --list shows all)"
        )
    return _BUILDERS[name]


def build(name: str, options: StreamOptions | None = None) -> Stream:
    """Build stream ``name`` with ``options`` (defaults when omitted).

    A scenario the stream does not offer is bad input (streams that offer several build the
    one asked for).
    """
    options = options or StreamOptions()
    builder = get(name)
    if (options.order is not None or options.tasks is not None) and name not in _SEQUENCES:
        raise BadInputError(
            f"stream '{name}' has one fixed task sequence: drop --order/--tasks (streams with "
            f"orders: {', '.join(sorted(_SEQUENCES))})"
        )
    stream = builder(options)
    if options.scenario is not None and stream.scenario != options.scenario:
        raise BadInputError(
            f"stream '{name}' is {stream.scenario}-incremental only: drop --scenario "
            f"{options.scenario}"
        )
    return stream
