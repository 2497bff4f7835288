"""Inits that start the update at zero: ``B = 0``, so the residual is the weight itself."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from cl_lora.inits.base import InitMethod, LoRAFactors
from cl_lora.inits.registry import register


@register("lora", "plain LoRA (PEFT's default): A Kaiming-uniform(a=sqrt 5), B = 0")
class KaimingLoRA(InitMethod):
    """Hu et al. 2021 as PEFT implements it: ``nn.Linear``'s default init for ``A``."""

    def factors(
        self,
        weight: torch.Tensor,
        *,
        rank: int,
        scale: float,
        stats: Mapping[str, torch.Tensor],
        generator: torch.Generator | None,
    ) -> LoRAFactors:
        out_features, in_features = weight.shape
        # kaiming_uniform_(a=sqrt(5)) on an r x in matrix has bound 1/sqrt(in).
        bound = 1.0 / math.sqrt(in_features)
        A = torch.rand(rank, in_features, generator=generator, device=weight.device)
        A = (A * 2 - 1) * bound
        B = torch.zeros(out_features, rank, device=weight.device)
        return LoRAFactors(A=A, B=B, residual=weight.clone())
