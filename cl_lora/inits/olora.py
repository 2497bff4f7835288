"""OLoRA: LoRA factors from the weight's QR decomposition (``olora``)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from cl_lora.inits.base import InitMethod, LoRAFactors
from cl_lora.inits.registry import register


@register("olora", "OLoRA: B, A = the first r columns of Q and rows of R in W = QR (as PEFT)")
class OLoRA(InitMethod):
    """Büyükakyüz 2024, "OLoRA: Orthonormal Low-Rank Adaptation of Large Language Models"
    (arXiv 2406.01775): ``W = Q R``, ``B = Q[:, :r]`` (orthonormal columns), ``A = R[:r]``.

    Identical to PEFT's ``LoraLayer.olora_init``, which does not divide the factors by the LoRA
    scale: ``s B A = s Q_r R_r`` is moved out of the weight, so the residual ``W - s Q_r R_r``
    is not a truncation of ``W`` unless ``s = 1``; the function stays the same either way.
    """

    def factors(
        self,
        weight: torch.Tensor,
        *,
        rank: int,
        scale: float,
        stats: Mapping[str, torch.Tensor],
        generator: torch.Generator | None,
    ) -> LoRAFactors:
        Q, R = torch.linalg.qr(weight)
        B = Q[:, :rank].contiguous()
        A = R[:rank].contiguous()
        # PEFT's W - (s B) @ A bit for bit, written into the product: one out x in buffer, not two.
        update = (scale * B) @ A
        return LoRAFactors(A=A, B=B, residual=torch.sub(weight, update, out=update))
