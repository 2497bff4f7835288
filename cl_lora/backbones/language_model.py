"""A language model as the strategy's model: the LM itself is what LoRA adapts, and it has no
task heads -- every task's answer is text the LM generates.

It answers the same questions the strategy asks of :class:`ContinualClassifier` (``encoder``,
``heads``, ``add_head``/``has_head``/``head_of``, ``features``), so the loop, calibration and
plugins need not know which of the two they hold. ``has_head`` is true for the tasks trained so
far: the tasks the loop evaluates after each task (an LM could answer any task zero-shot, but
scoring untrained tasks costs a generation pass each and only FWT reads those cells).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from cl_lora.backbones.base import Backbone, Inputs


class LanguageModel(nn.Module):
    """``backbone.encoder`` (a causal LM) with the head bookkeeping of the strategy."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.encoder = backbone.encoder
        self.heads = nn.ModuleDict()  # none: kept so that code reading heads finds nothing
        self.register_buffer("tasks_seen", torch.zeros((), dtype=torch.long))
        # the calibration forward needs hidden states only: skip most of the vocabulary matmul
        self._one_logit = "logits_to_keep" in inspect.signature(self.encoder.forward).parameters

    def head_key(self, task_id: int) -> str:
        return str(task_id)

    def add_head(
        self, task_id: int, num_labels: int | None = None, classes: Sequence[int] | None = None
    ) -> None:
        """Mark ``task_id`` as trained (an LM has no head to create)."""
        self.tasks_seen.fill_(max(int(self.tasks_seen), task_id + 1))

    def has_head(self, task_id: int) -> bool:
        return task_id < int(self.tasks_seen)

    def head_of(self, task_id: int) -> nn.Module:
        """The parameters a task trains besides the LM's adapter: none."""
        return nn.ModuleList()

    def features(self, inputs: Inputs) -> torch.Tensor:
        """The plain forward pass that calibration hooks observe (its output is not used)."""
        extra: dict[str, Any] = {"logits_to_keep": 1} if self._one_logit else {}
        return self.encoder(**inputs, use_cache=False, **extra).logits

    def forward(self, inputs: Inputs, task_labels: Any = None) -> torch.Tensor:
        """Next-token logits ``(batch, tokens, vocabulary)``; the task does not matter."""
        return self.encoder(**inputs, use_cache=False).logits
