"""Experiment trackers (``--track tensorboard|wandb|mlflow``): what a run logs to them and
when. :class:`RunTrackers` opens the chosen ones for a run; its :meth:`~RunTrackers.plugin`
logs every optimizer step's loss and learning rate (``train/loss``, ``train/lr``, step = the
run's optimizer step), :meth:`~RunTrackers.task_done` each matrix row (``matrix/<task>``, step
= tasks trained) and each knowledge probe's score (``knowledge/<probe>``), and
:meth:`~RunTrackers.finish` the summary metrics."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cl_lora.trackers import mlflow_run, tensorboard_run, wandb_run  # noqa: F401 (registers)
from cl_lora.trackers.registry import TRACKERS, Tracker, TrackerKind, register_tracker


def check_trackers(names: Sequence[str]) -> None:
    """Every name registered and its library installed: one line otherwise, before any work."""
    for name in names:
        TRACKERS.get(name).require()


class RunTrackers:
    """The trackers a run logs to, opened with its id and resolved config."""

    def __init__(
        self, names: Sequence[str], run_id: str, config: dict[str, Any], run_dir: Path
    ) -> None:
        check_trackers(names)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.trackers: list[Tracker] = [
            TRACKERS.get(name).open(run_id, config, run_dir) for name in dict.fromkeys(names)
        ]
        self.step = 0

    def log(self, values: Mapping[str, float], step: int, axis: str) -> None:
        finite = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(v)}
        for tracker in self.trackers:
            tracker.log_scalars(finite, step, axis)

    def plugin(self) -> Any:
        """An Avalanche plugin that logs each optimizer step's loss and adapter learning rate."""
        from avalanche.core import SupervisedPlugin

        trackers = self

        class StepLogger(SupervisedPlugin):
            def after_update(self, strategy: Any, **kwargs: Any) -> None:
                trackers.step += 1
                rate = strategy.optimizer.param_groups[0]["lr"]
                values = {"train/loss": float(strategy.loss), "train/lr": rate}
                trackers.log(values, trackers.step, "optimizer_step")

        return StepLogger()

    def task_done(
        self, task: int, names: Sequence[str], row: Sequence[float], probes: Mapping[str, float]
    ) -> None:
        """After task ``task`` (0-based): the matrix row and the knowledge probes' scores."""
        values = {f"matrix/{name}": score for name, score in zip(names, row, strict=True)}
        values |= {f"knowledge/{name}": score for name, score in probes.items()}
        self.log(values, task + 1, "task")

    def finish(self, summary: Mapping[str, float | None]) -> None:
        finite = {
            k: float(v)
            for k, v in summary.items()
            if isinstance(v, int | float) and math.isfinite(v)
        }
        for tracker in self.trackers:
            tracker.finish(finite)


__all__ = [
    "TRACKERS",
    "RunTrackers",
    "Tracker",
    "TrackerKind",
    "check_trackers",
    "register_tracker",
]
