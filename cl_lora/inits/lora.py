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
        A = (torch.rand(rank, in_features, generator=generator) * 2 - 1) * bound
        A = A.to(weight.device)  # drawn on the CPU: one seed, the same A on every device
        B = torch.zeros(out_features, rank, device=weight.device)
        return LoRAFactors(A=A, B=B, residual=weight.clone())


@register("gaussian", "LoRA with a Gaussian A: A ~ N(0, 1/r), B = 0")
class GaussianLoRA(InitMethod):
    """Hu et al. 2021 (LoRA, §4.1: "random Gaussian initialization for A and zero for B").

    ``A`` has i.i.d. entries of variance ``1/r`` (std ``1/sqrt(r)``), so ``E ||A x||^2 = ||x||^2``:
    the down-projection keeps input norms in expectation whatever the rank. PEFT's ``"gaussian"``
    draws with std ``1/r`` instead; the suite's ``gaussian`` fixes the variance at ``1/r``.
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
        out_features, in_features = weight.shape
        A = torch.randn(rank, in_features, generator=generator) / math.sqrt(rank)
        A = A.to(weight.device)  # drawn on the CPU: one seed, the same A on every device
        B = torch.zeros(out_features, rank, device=weight.device)
        return LoRAFactors(A=A, B=B, residual=weight.clone())
