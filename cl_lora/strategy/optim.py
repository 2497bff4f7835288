"""The per-task optimizer recipe, in one place so every loop that claims the same recipe
(the strategy, the benchmarks' bare loops) builds exactly the same thing."""

from __future__ import annotations

import torch
from torch import nn


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
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_ratio`` of ``total_steps``, then linear decay to 0."""
    total = max(1, total_steps)
    warmup = max(1, round(warmup_ratio * total))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
