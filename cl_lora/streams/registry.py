"""Stream registry: builders register under a name with a one-line description."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cl_lora.errors import BadInputError
from cl_lora.registry import Registry
from cl_lora.streams.base import Stream, StreamOptions

Builder = Callable[[StreamOptions], Stream]


@dataclass(frozen=True)
class StreamEntry:
    """A registered stream: ``build(options) -> Stream`` and what is known before building.

    ``recipe`` holds the stream's own defaults for run settings the user did not set (e.g. a
    language-model stream's ``max_length``). ``sequences`` says the builder honours
    ``options.order`` and ``options.tasks``; other streams have one fixed task sequence.
    """

    name: str
    description: str
    build: Builder
    recipe: Mapping[str, Any] = field(default_factory=dict)
    sequences: bool = False


STREAMS: Registry[StreamEntry] = Registry("stream")


def register(
    name: str,
    description: str,
    recipe: Mapping[str, Any] | None = None,
    sequences: bool = False,
) -> Callable[[Builder], Builder]:
    """Decorator that makes ``build(options) -> Stream`` available as stream ``name``."""

    def decorate(builder: Builder) -> Builder:
        STREAMS.add(name, StreamEntry(name, description, builder, dict(recipe or {}), sequences))
        return builder

    return decorate


def recipe(name: str) -> dict[str, Any]:
    """The run-setting defaults stream ``name`` was registered with (may be empty)."""
    return dict(STREAMS.get(name).recipe)


def build(name: str, options: StreamOptions | None = None) -> Stream:
    """Build stream ``name`` with ``options`` (defaults when omitted).

    A scenario the stream does not offer is bad input (streams that offer several build the
    one asked for), and so are ``--order``/``--tasks`` for a stream with one fixed sequence.
    """
    options = options or StreamOptions()
    entry = STREAMS.get(name)
    if (options.order is not None or options.tasks is not None) and not entry.sequences:
        with_orders = ", ".join(e.name for e in STREAMS if e.sequences)
        raise BadInputError(
            f"stream '{name}' has one fixed task sequence: drop --order/--tasks (streams with "
            f"orders: {with_orders})"
        )
    stream = entry.build(options)
    if options.scenario is not None and stream.scenario != options.scenario:
        raise BadInputError(
            f"stream '{name}' is {stream.scenario}-incremental only: drop --scenario "
            f"{options.scenario}"
        )
    return stream
