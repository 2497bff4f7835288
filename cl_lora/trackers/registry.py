"""The registry of experiment trackers (``--track NAME``, repeatable).

A tracker receives what a run produces as it goes: the resolved config when the run starts,
the training loss and learning rate of every optimizer step, each row of the accuracy matrix
and the knowledge probes' scores after every task, and the summary metrics at the end. Each
writes with its own library's API (Avalanche's loggers read Avalanche's evaluation metrics,
which the suite computes itself, so they do not fit); offline stores are the default, so a run
needs no server or network."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cl_lora.errors import BadInputError
from cl_lora.registry import Registry


class Tracker(Protocol):
    """One tracker's run: opened by its kind's ``open``, closed by :meth:`finish`."""

    def log_scalars(self, values: Mapping[str, float], step: int, axis: str) -> None:
        """``values`` at ``step`` of ``axis``: ``optimizer_step`` (``train/*``) or ``task``
        (``matrix/*``, ``knowledge/*``; tasks trained so far)."""

    def finish(self, summary: Mapping[str, float]) -> None: ...


@dataclass(frozen=True)
class TrackerKind:
    """A registered tracker: ``open(run_id, config, run_dir)`` starts its run; ``package`` is
    the module it needs and ``extra`` the package extra that installs it."""

    name: str
    description: str
    package: str
    open: Callable[[str, dict[str, Any], Path], Tracker]

    def require(self) -> None:
        """Bad input, in one line, when this tracker's library is not installed."""
        if importlib.util.find_spec(self.package) is None:
            raise BadInputError(
                f'--track {self.name} needs {self.package}: pip install -e ".[trackers]"'
            )


TRACKERS: Registry[TrackerKind] = Registry("tracker", "cl_lora.trackers")


def register_tracker(
    name: str, description: str, *, package: str
) -> Callable[[Callable[..., Tracker]], Callable[..., Tracker]]:
    """Decorator: make a tracker's ``open`` function selectable as ``--track name``."""

    def decorate(open_run: Callable[..., Tracker]) -> Callable[..., Tracker]:
        TRACKERS.add(name, TrackerKind(name, description, package, open_run))
        return open_run

    return decorate
