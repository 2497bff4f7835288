"""A backbone with task heads, as an Avalanche multi-task module.

Task-incremental streams get one head per task, created when the task starts (so there is no
head, and no score, for a task before it is trained). Domain-incremental streams share one head
over a common label space. Class-incremental streams share one head over all classes of the
stream whose logits of classes not trained yet are masked, so the head covers exactly the
classes seen so far; a task is scored only once it was trained.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from avalanche.models import MultiTaskModule
from torch import nn

from cl_lora.backbones.base import Backbone, Inputs

SHARED_HEAD = "shared"


class ContinualClassifier(MultiTaskModule):
    """``backbone.encoder`` -> pooled features -> the head of the example's task."""

    def __init__(
        self, backbone: Backbone, shared_head: bool, class_incremental: bool = False
    ) -> None:
        super().__init__()
        if class_incremental and not shared_head:
            raise ValueError("a class-incremental classifier has one shared head")
        self.encoder = backbone.encoder
        self.shared_head = shared_head
        self.class_incremental = class_incremental
        self.heads = nn.ModuleDict()
        self._features = backbone.features
        self._feature_dim = backbone.feature_dim

    def head_key(self, task_id: int) -> str:
        return SHARED_HEAD if self.shared_head else str(task_id)

    def has_head(self, task_id: int) -> bool:
        """Whether ``task_id`` can be scored: its head exists (class-incremental: it trained)."""
        if self.class_incremental:
            return hasattr(self, "tasks_seen") and task_id < int(self.tasks_seen)
        return self.head_key(task_id) in self.heads

    def head_of(self, task_id: int) -> nn.Module:
        """The head ``task_id`` trains (the shared one, with a shared head)."""
        return self.heads[self.head_key(task_id)]

    def add_head(self, task_id: int, num_labels: int, classes: Sequence[int] | None = None) -> None:
        """Create the head for ``task_id`` unless it exists (a shared head is created once).

        Class-incremental: ``classes`` are the task's label ids, unmasked from now on (the
        mask and the count of tasks seen are buffers, so they travel with the state dict).
        """
        key = self.head_key(task_id)
        device = next(self.encoder.parameters()).device
        if key not in self.heads:
            self.heads[key] = nn.Linear(self._feature_dim, num_labels).to(device)
        if self.class_incremental and classes is not None:
            if not hasattr(self, "seen_classes"):
                self.register_buffer("seen_classes", torch.zeros(num_labels, dtype=torch.bool))
                self.register_buffer("tasks_seen", torch.zeros((), dtype=torch.long))
            self.seen_classes[list(classes)] = True
            self.tasks_seen.fill_(max(int(self.tasks_seen), task_id + 1))

    def features(self, inputs: Inputs) -> torch.Tensor:
        return self._features(self.encoder, inputs)

    def forward_single_task(self, x: Inputs, task_label: int) -> torch.Tensor:
        return self._head_logits(self.features(x), task_label)

    def _head_logits(self, features: torch.Tensor, task_label: int) -> torch.Tensor:
        logits = self.heads[self.head_key(int(task_label))](features)
        if self.class_incremental and hasattr(self, "seen_classes"):
            unseen = ~self.seen_classes.to(logits.device)
            logits = logits.masked_fill(unseen, torch.finfo(logits.dtype).min)
        return logits

    def forward_all_tasks(self, x: Inputs) -> dict[int, torch.Tensor]:
        """Logits of every head trained so far, keyed by task id (what LwF distills).

        The encoder runs once, not once per task as in Avalanche's default; a head shared by
        several tasks appears once, under the first task that uses it.
        """
        features = self.features(x)
        outputs: dict[int, torch.Tensor] = {}
        seen: set[str] = set()
        for task_id in sorted(self.known_train_tasks_labels):
            key = self.head_key(int(task_id))
            if key in self.heads and key not in seen:
                seen.add(key)
                outputs[int(task_id)] = self.heads[key](features)
        return outputs

    def forward(
        self, x: Inputs, task_labels: torch.Tensor | int | None
    ) -> torch.Tensor | dict[int, torch.Tensor]:
        """Logits; ``None`` task labels give every head's logits (a dict, as in Avalanche).

        Batches are single-task in sequential training; in mixed batches (replay, joint
        training) the encoder runs once on the whole batch and each task's rows go to its head
        (one encoder pass per batch whatever its tasks: sharded weights need every process to
        run the same passes). Heads of different widths are padded with ``-inf``, so the
        padding gets zero probability in softmax and cross-entropy and is never the argmax.
        """
        if task_labels is None:
            return self.forward_all_tasks(x)
        if isinstance(task_labels, int):
            return self.forward_single_task(x, task_labels)
        tasks = task_labels.unique()
        if len(tasks) == 1:
            return self.forward_single_task(x, int(tasks[0]))
        features = self.features(x)
        outputs = [self._head_logits(features[task_labels == t], int(t)) for t in tasks]
        logits = torch.full(
            (len(task_labels), max(o.shape[1] for o in outputs)),
            float("-inf"),
            device=outputs[0].device,
            dtype=outputs[0].dtype,
        )
        for t, out in zip(tasks, outputs, strict=True):
            logits[task_labels == t, : out.shape[1]] = out
        return logits
