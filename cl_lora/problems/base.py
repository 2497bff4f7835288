"""The seam between the training loop and the kind of model: a *problem*.

A problem owns everything that depends on how a model learns a task -- how examples become
batches, the training loss, how a batch is predicted and scored, and the plain forward pass that
calibration hooks observe -- so that the strategy, calibration, plugins and the retention probe
never branch on the model kind. Two problems exist (the shape of Avalanche's ``problem_type``
mixins): :class:`~cl_lora.problems.classification.Classification` (a backbone with task heads)
and :class:`~cl_lora.problems.text_to_text.TextToText` (a language model that generates the
answer).

Batches are ``(inputs, targets)``: ``inputs`` a dict of tensors the model reads, ``targets`` what
the loss compares with (class ids, or token ids with the prompt masked) when training and the
examples' label ids when evaluating.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from avalanche.training.regularization import LearningWithoutForgetting
from torch import nn

from cl_lora.backbones.base import Backbone, Inputs
from cl_lora.streams import Stream

Batch = tuple[Inputs, torch.Tensor | None]


class Problem(ABC):
    """How one kind of model learns, predicts and is observed (see the module docstring).

    ``model`` arguments are what :meth:`build_model` returns: a module with ``encoder`` (the
    network LoRA adapts), ``heads``, ``add_head``/``has_head`` and ``features`` (the plain
    forward that calibration observes).
    """

    kind: ClassVar[str]

    def __init__(self, backbone: Backbone, stream: Stream) -> None:
        self.backbone = backbone
        self.stream = stream

    @abstractmethod
    def build_model(self) -> nn.Module:
        """The model the strategy trains, wrapping ``backbone.encoder``."""

    @abstractmethod
    def collate(
        self, examples: Sequence[dict[str, Any]], labels: Sequence[int] | None, training: bool
    ) -> Batch:
        """Raw rows (and their label ids, ``None`` for unlabelled inputs) into a batch: the
        training form with ``training``, the evaluation form otherwise."""

    @abstractmethod
    def forward(self, model: nn.Module, inputs: Inputs, task_labels: Any) -> torch.Tensor:
        """The output the training loss reads (head logits, or next-token logits)."""

    @abstractmethod
    def loss(self, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training loss of a batch, from :meth:`forward`'s output."""

    @abstractmethod
    def predict(self, model: nn.Module, inputs: Inputs, task_labels: Any) -> torch.Tensor:
        """Predicted label ids of an evaluation batch (one task's examples; -1: no label)."""

    @abstractmethod
    def distillation(self, lwf: LearningWithoutForgetting, strategy: Any) -> torch.Tensor | float:
        """LwF's weighted distillation term for the strategy's current training batch: how far
        the model's output is from what ``lwf.prev_model`` (the model after the previous task,
        kept by Avalanche's :class:`LearningWithoutForgetting`) predicts on the same inputs."""

    def loss_terms(self, targets: torch.Tensor) -> int:
        """How many terms :meth:`loss` averages over for these training ``targets`` (one per
        example here): what weighs a micro-batch in an accumulated optimizer step."""
        return len(targets)

    def batch_loss(
        self, model: nn.Module, inputs: Inputs, targets: torch.Tensor, task_labels: Any
    ) -> torch.Tensor:
        """The training loss of one batch: :meth:`loss` of :meth:`forward` (what calibration's
        gradients and warm-ups and EWC's Fisher differentiate)."""
        return self.loss(self.forward(model, inputs, task_labels), targets)

    def eval_order(self, dataset: Sequence[tuple[dict[str, Any], int, int]]) -> list[int] | None:
        """An order of an evaluation dataset (items ``(example, label, task)``) that makes
        evaluation cheaper; ``None`` keeps the dataset's order."""
        return None

    def record(self) -> dict[str, Any]:
        """What ``result.json`` records about the problem."""
        return {"kind": self.kind}
