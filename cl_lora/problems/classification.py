"""Classification with task heads: a backbone's pooled features, one linear head per task (or
one shared head), cross-entropy, and the argmax as the prediction."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from avalanche.training.regularization import LearningWithoutForgetting
from torch import nn

from cl_lora.backbones import ContinualClassifier
from cl_lora.backbones.base import Inputs
from cl_lora.problems.base import Batch, Problem


def cross_entropy_on(task_id: int) -> Callable[[nn.Module, Inputs, torch.Tensor], torch.Tensor]:
    """The loss of a batch of task ``task_id`` through its head, as calibration takes it (for
    code that calibrates a classifier without a stream, such as the benchmarks)."""
    return lambda model, inputs, labels: nn.functional.cross_entropy(model(inputs, task_id), labels)


class Classification(Problem):
    """The encoder-with-heads problem (see :class:`ContinualClassifier` for the heads)."""

    kind = "classification"

    def build_model(self) -> ContinualClassifier:
        return ContinualClassifier(
            self.backbone,
            shared_head=self.stream.shared_head,
            class_incremental=self.stream.scenario == "class",
        )

    def collate(
        self, examples: Sequence[dict[str, Any]], labels: Sequence[int] | None, training: bool
    ) -> Batch:
        targets = None if labels is None else torch.tensor(list(labels))
        return self.backbone.collate(examples), targets

    def forward(self, model: nn.Module, inputs: Inputs, task_labels: Any) -> torch.Tensor:
        return model(inputs, task_labels)

    def loss(self, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(output, targets)

    def predict(self, model: nn.Module, inputs: Inputs, task_labels: Any) -> torch.Tensor:
        return model(inputs, task_labels).argmax(dim=1)

    def distillation(self, lwf: LearningWithoutForgetting, strategy: Any) -> torch.Tensor | float:
        """Avalanche's LwF over every earlier head, on the classes each head has seen."""
        return lwf(strategy.mb_x, strategy.mb_output, strategy.model)
