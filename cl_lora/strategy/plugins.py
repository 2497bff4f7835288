"""Avalanche plugins that the cl-lora loop hooks in at named points."""

from __future__ import annotations

import torch
from avalanche.core import SupervisedPlugin

from cl_lora.streams import Stream


class TaskScorePlugin(SupervisedPlugin):
    """Scores each evaluated experience with its task's own metric (accuracy, MCC, F1, ...).

    After ``strategy.eval(experiences)``, ``scores`` maps task id -> the task's ``score`` dict.
    """

    def __init__(self, stream: Stream) -> None:
        super().__init__()
        self.stream = stream
        self.scores: dict[int, dict[str, float]] = {}
        self._predictions: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def before_eval(self, strategy, **kwargs) -> None:
        self.scores = {}

    def before_eval_exp(self, strategy, **kwargs) -> None:
        self._predictions, self._labels = [], []

    def after_eval_iteration(self, strategy, **kwargs) -> None:
        self._predictions.append(strategy.mb_output.cpu())  # predicted label ids
        self._labels.append(strategy.mb_y.cpu())

    def after_eval_exp(self, strategy, **kwargs) -> None:
        task_id = int(strategy.experience.current_experience)
        self.scores[task_id] = self.stream.tasks[task_id].score(
            torch.cat(self._predictions).numpy(), torch.cat(self._labels).numpy()
        )
