"""EVA: LoRA read off the task's own input activations (Paischer et al., "One Initialization to
Rule them All", arXiv 2410.07170)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from cl_lora.inits.base import InitMethod, LoRAFactors
from cl_lora.inits.factors import decompose_input, eigenvectors_between
from cl_lora.inits.registry import register


def largest_eigenvectors(cov: torch.Tensor, count: int) -> torch.Tensor:
    """The eigenvectors of the ``count`` largest eigenvalues of the symmetric ``cov``, largest
    first."""
    return eigenvectors_between(cov, len(cov) - count, len(cov)).flip(-1)


@register("eva", "EVA: A = top-r right singular vectors of the task's input activations, B = 0")
class EVA(InitMethod):
    """Paischer et al. 2024, "One Initialization to Rule them All: Fine-tuning via Explained
    Variance Adaptation" (arXiv 2410.07170): ``A`` = the top-``r`` right singular vectors of the
    task's activations ``X`` entering the layer, ``B = 0``, residual ``W``.

    They are read from ``C = X^T X = V S^2 V^T``: the eigenvectors of ``C`` with the largest
    eigenvalues, largest first. Differences from PEFT's EVA, which runs an incremental PCA over
    batches: that PCA centres the activations (ours decomposes the raw ``X``; the two agree
    when the activations have zero mean); PEFT redistributes ranks across layers by explained
    variance (``rho``, here every layer keeps rank ``r``) and can whiten ``A``
    (off by default there, not done here). Like PEFT, ``A``'s rows are orthonormal.
    """

    needs = ("input_cov",)

    def factors(
        self,
        weight: torch.Tensor,
        *,
        rank: int,
        scale: float,
        stats: Mapping[str, torch.Tensor],
        generator: torch.Generator | None,
    ) -> LoRAFactors:
        top = decompose_input(stats, weight, largest_eigenvectors, rank)  # once per input
        A = top.T.to(weight.dtype).contiguous()
        B = torch.zeros(weight.shape[0], rank, device=weight.device)
        return LoRAFactors(A=A, B=B, residual=weight.clone())
