"""Task-specific directions (Si et al., "Unleashing the Power of Task-Specific Directions in
Parameter Efficient Fine-tuning", ICLR 2025; extended as arXiv 2409.01035 v4+).

A short warm-up of plain LoRA gives the update ``dW`` a task wants; for each singular pair
``(u_i, sigma_i, v_i)`` of ``W`` its *change rate* ``|u_i^T dW v_i| / sigma_i`` says how much the
task amplifies that direction relative to its strength. LoRA-Init trains the ``r`` directions
with the largest rates; LoRA-Dash adds one trainable scalar per top direction during training;
LoRA-TSD does both.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from cl_lora.arguments import Argument
from cl_lora.inits.base import InitMethod, LoRAFactors
from cl_lora.inits.factors import factors_from_svd
from cl_lora.inits.lora import KaimingLoRA
from cl_lora.inits.registry import register


def change_rates(
    U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor, delta: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """``|u_i^T dW v_i| / sigma_i`` for every singular pair of ``W = U diag(S) Vh``, with the
    update given as factors ``dW = left @ right`` (a warm-up's ``s B A``): ``u_i^T left`` times
    ``right v_i``, never the dense ``dW`` (a 7B model's would be ~26 GB in float32)."""
    left, right = (factor.to(U.dtype) for factor in delta)
    projected = ((U.T @ left) * (Vh @ right.T)).sum(1)
    return projected.abs() / S.clamp(min=torch.finfo(S.dtype).tiny)


WARMUP = {"warmup_steps": Argument(int, 10, "plain-LoRA warm-up steps that reveal the directions")}
DASH = {
    "s": Argument(int, 8, "task-specific directions LoRA-Dash adds per layer"),
    "t": Argument(int, 100, "optimizer steps of the task before LoRA-Dash picks its directions"),
}


@register("lora-init", "LoRA-Init: train the r singular directions a warm-up changes the most")
class LoRAInit(InitMethod):
    """LoRA-Init: window = the ``r`` singular pairs of ``W`` with the largest change rates under
    a ``warmup_steps`` plain-LoRA warm-up (``stats["warmup_delta"]``, its update as the factors
    ``(s B, A)``), split like PiSSA (both
    factors train, residual ``W - s B A``). The warm-up adapter is discarded."""

    needs = ("warmup_delta",)
    arguments = WARMUP

    def factors(
        self,
        weight: torch.Tensor,
        *,
        rank: int,
        scale: float,
        stats: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
        generator: torch.Generator | None,
        warmup_steps: int,
    ) -> LoRAFactors:
        svd = torch.linalg.svd(weight, full_matrices=False)
        chosen = change_rates(*svd, stats["warmup_delta"]).topk(rank).indices
        return factors_from_svd(weight, svd, chosen, scale)


@register(
    "lora-dash", "LoRA-Dash: plain LoRA plus s trainable task-specific directions after t steps"
)
class LoRADash(KaimingLoRA):
    """LoRA-Dash: plain LoRA at init; after ``t`` optimizer steps the ``dash`` training plugin
    adds ``sum_i d_i u_i v_i^T`` over the top-``s`` directions by change rate, ``d`` from 0.

    ``t`` counts optimizer steps. The authors' reference code counts forward calls of the
    layer, so with gradient accumulation or activation checkpointing (more forwards per step)
    its ``t`` arrives after fewer optimizer steps; without them the two agree."""

    arguments = DASH
    training_plugin = "dash"

    def factors(self, weight: torch.Tensor, **kwargs: object) -> LoRAFactors:
        kwargs = {key: value for key, value in kwargs.items() if key not in DASH}
        return super().factors(weight, **kwargs)


@register("lora-tsd", "LoRA-TSD: LoRA-Init at init, then LoRA-Dash during training")
class LoRATSD(LoRAInit):
    """LoRA-TSD: the LoRA-Init initialization followed by the LoRA-Dash training plugin."""

    arguments = {**WARMUP, **DASH}
    training_plugin = "dash"

    def factors(self, weight: torch.Tensor, **kwargs: object) -> LoRAFactors:
        kwargs = {key: value for key, value in kwargs.items() if key not in DASH}
        return super().factors(weight, **kwargs)
