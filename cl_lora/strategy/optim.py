"""The per-task optimizer recipe, in one place so every loop that claims the same recipe
(the strategy, the benchmarks' bare loops) builds exactly the same thing."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TrainingRecipe:
    """How each task's adapter is optimized: AdamW at ``lr`` (heads at ``head_lr``), a
    learning-rate schedule over the task's optimizer steps, gradient accumulation and clipping.

    ``scheduler`` is a transformers ``get_scheduler`` name, or ``None`` for the suite's own
    linear warm-up and decay (:func:`linear_warmup_decay`). Warm-up is ``warmup_steps`` when
    given, else ``warmup_ratio`` of the steps (rounded up for transformers' schedules, as its
    ``TrainingArguments`` does; rounded for the suite's). ``grad_accumulation`` micro-batches
    make one optimizer step; ``max_grad_norm`` clips each step's gradient (``None``: never).
    """

    lr: float
    head_lr: float
    weight_decay: float = 0.0
    scheduler: str | None = None
    warmup_ratio: float = 0.1
    warmup_steps: int | None = None
    grad_accumulation: int = 1
    max_grad_norm: float | None = None

    def steps(self, micro_batches: int, epochs: int) -> int:
        """Optimizer steps of a task: a last, shorter group of micro-batches is a step too."""
        return math.ceil(micro_batches / self.grad_accumulation) * epochs

    def schedule(
        self, optimizer: torch.optim.Optimizer, total_steps: int
    ) -> torch.optim.lr_scheduler.LambdaLR:
        """This recipe's learning-rate schedule over ``total_steps`` optimizer steps."""
        if self.scheduler is None:
            warmup = self.warmup_steps
            if warmup is None:
                warmup = max(1, round(self.warmup_ratio * max(1, total_steps)))
            return linear_warmup_decay(optimizer, total_steps, warmup)
        from transformers import get_scheduler

        warmup = self.warmup_steps
        if warmup is None:
            warmup = math.ceil(self.warmup_ratio * total_steps)
        return get_scheduler(
            self.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps
        )


def task_optimizer(
    encoder: nn.Module, head: nn.Module, lr: float, head_lr: float, weight_decay: float
) -> torch.optim.AdamW:
    """AdamW over the encoder's trainable (adapter) parameters at ``lr`` and the head's at
    ``head_lr``."""
    return torch.optim.AdamW(
        [
            {"params": [p for p in encoder.parameters() if p.requires_grad], "lr": lr},
            {"params": list(head.parameters()), "lr": head_lr},
        ],
        weight_decay=weight_decay,
    )


def linear_warmup_decay(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over the first ``warmup`` of ``total_steps`` (the first step already at
    ``1 / warmup`` of the rate), then linear decay to 0; ``warmup = 0`` decays from the start."""
    total = max(1, total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
