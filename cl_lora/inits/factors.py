"""Building blocks several init methods share: LoRA factors from singular components of a
weight, and the input covariance a method reads from its statistics."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from cl_lora.inits.base import LoRAFactors


def factors_from_svd(
    weight: torch.Tensor,
    svd: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    components: slice | torch.Tensor,
    scale: float,
) -> LoRAFactors:
    """LoRA factors holding the chosen singular ``components`` of ``weight = U diag(S) Vh``."""
    U, S, Vh = svd
    root = torch.sqrt(S[components] / scale)
    B = U[:, components] * root
    A = root[:, None] * Vh[components]
    return LoRAFactors(A=A, B=B, residual=weight - scale * B @ A)


def window_factors(weight: torch.Tensor, start: int, rank: int, scale: float) -> LoRAFactors:
    """LoRA factors holding singular components ``start .. start+rank-1`` of ``weight``."""
    svd = torch.linalg.svd(weight, full_matrices=False)
    return factors_from_svd(weight, svd, slice(start, start + rank), scale)


def input_covariance(stats: Mapping[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """``stats["input_cov"]`` (``C = X^T X``, ``in x in``) as a symmetric float64 matrix.

    Float64 because the methods that read it resolve its smallest eigenvalues or invert it,
    where float32 round-off is of the size of the quantities themselves.
    """
    cov = stats["input_cov"]
    in_features = weight.shape[1]
    if cov.shape != (in_features, in_features):
        raise ValueError(
            f"input_cov has shape {tuple(cov.shape)} but this layer takes {in_features} inputs: "
            f"it must be {in_features}x{in_features}"
        )
    cov = cov.detach().to(device=weight.device, dtype=torch.float64)
    return (cov + cov.T) / 2
