"""Stream registry: builders register under a name with a one-line description."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cl_lora.errors import BadInputError, did_you_mean
from cl_lora.registry import Registry
from cl_lora.streams.base import Stream, StreamOptions

Builder = Callable[[StreamOptions], Stream]


@dataclass(frozen=True)
class StreamEntry:
    """A registered stream: ``build(options) -> Stream`` and what is known before building.

    ``recipe`` holds the stream's own defaults for run settings the user did not set (e.g. a
    language-model stream's ``max_length``). ``sequences`` says the builder honours
    ``options.order`` and ``options.tasks`` itself (a pool of tasks with published orders);
    any other stream has one fixed order, and ``--tasks`` picks a subsequence of it.
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
    one asked for), and so is ``--order`` for a stream with one fixed order; ``--tasks`` on
    such a stream keeps the named tasks in the order given (:func:`subsequence`).
    """
    options = options or StreamOptions()
    entry = STREAMS.get(name)
    if options.order is not None and not entry.sequences:
        with_orders = ", ".join(e.name for e in STREAMS if e.sequences)
        raise BadInputError(
            f"stream '{name}' has one fixed order: drop --order (streams with published "
            f"orders: {with_orders}; --tasks picks a subsequence of any stream)"
        )
    if options.tasks is None or entry.sequences:
        stream = entry.build(options)
    else:
        stream = subsequence(entry.build(replace(options, tasks=None)), options.tasks)
    if options.scenario is not None and stream.scenario != options.scenario:
        raise BadInputError(
            f"stream '{name}' is {stream.scenario}-incremental only: drop --scenario "
            f"{options.scenario}"
        )
    return stream


def subsequence(stream: Stream, names: tuple[str, ...]) -> Stream:
    """The tasks of ``stream`` called ``names``, in that order, as the stream
    ``<stream>:<a,b,...>`` (so results never mix with the whole stream's).

    A class-incremental stream cannot drop tasks: its shared head's classes are laid out over
    all of them.
    """
    if stream.scenario == "class":
        raise BadInputError(
            f"stream '{stream.name}' is class-incremental: its tasks share one label space "
            "laid out over all of them, so --tasks cannot pick some (pass --scenario task)"
        )
    by_name = {task.name: task for task in stream.tasks}
    for task_name in names:
        if task_name not in by_name:
            hint = did_you_mean(task_name, list(by_name))
            raise BadInputError(
                f"stream '{stream.name}' has no task '{task_name}': {hint}its tasks are "
                + ", ".join(by_name)
            )
    if len(set(names)) != len(names):
        raise BadInputError(f"--tasks names a task twice: {','.join(names)}")
    return replace(
        stream,
        name=f"{stream.name}:{','.join(names)}",
        tasks=tuple(by_name[task_name] for task_name in names),
    )
