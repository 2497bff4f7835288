"""MiCA: a frozen up-projection onto the weight's minor output directions."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from cl_lora.inits.base import InitMethod, LoRAFactors
from cl_lora.inits.registry import register


@register("mica", "MiCA: B = the r minor left singular vectors of W (frozen), A = 0; A trains")
class MiCA(InitMethod):
    """Minor Component Adaptation (arXiv 2604.01694), as PEFT's ``LoraLayer.mica_init``.

    ``W = U S V^T`` with singular values descending, ``k = min(out, in)``: ``B = U[:, k-r:k]``
    (the output directions the weight uses least) is frozen and ``A = 0`` trains, so every
    update ``s B A`` writes only into those minor directions. ``A = 0`` makes the update zero at
    init and the residual is ``W`` itself.
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
        U, _, _ = torch.linalg.svd(weight, full_matrices=False)
        B = U[:, -rank:].contiguous()
        A = torch.zeros(rank, weight.shape[1], device=weight.device)
        return LoRAFactors(A=A, B=B, residual=weight.clone(), trainable=frozenset({"A"}))
