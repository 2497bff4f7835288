"""Building blocks several init methods share: LoRA factors from singular components of a
weight, a window of a weight's singular components, and the input covariance a method reads
from its statistics."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from cl_lora.inits.base import LoRAFactors

#: On the CPU, :func:`window_svd` decomposes a weight QR first when its long side is at least this
#: many times its short side (measured on 1024-wide weights: slower at 1.25, faster from 1.5 on).
QR_FIRST_ASPECT = 1.5


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
    # W - s B A in one pass (no temporaries for B A and s B A): half the time of the expression.
    return LoRAFactors(A=A, B=B, residual=torch.addmm(weight, B, A, alpha=-scale))


def window_svd(
    weight: torch.Tensor, window: slice
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(U[:, window], S, Vh[window])`` of the thin SVD ``W = U diag(S) Vh`` (``S`` descending).

    On the CPU it decomposes the tall orientation (``W^T`` for a wide ``W``: ``torch.linalg.svd``
    of a wide matrix takes about twice as long as of its transpose, measured), and one at least
    :data:`QR_FIRST_ASPECT` times taller than wide QR first: ``W = Q R``, ``R = U_R diag(S) Vh``,
    ``U[:, window] = Q U_R[:, window]`` with ``Q`` applied as its Householder reflectors
    (``ormqr``) to the window's columns only. LAPACK's SVD takes the same QR-first path for such a
    matrix but forms all of ``Q`` and multiplies all of ``U_R``: the same ``S`` and ``Vh``, ``U``
    equal to float round-off. On one CPU core that is 0.7x the time of ``torch.linalg.svd`` on
    LLaMA-7B's 11008x4096 ``gate/up_proj`` and 0.35x on its 4096x11008 ``down_proj``
    (``benchmarks/svd_init.py``). Elsewhere (CUDA, not measured) it is ``torch.linalg.svd(weight)``,
    as PEFT's PiSSA.
    """
    out_features, in_features = weight.shape
    on_cpu = weight.device.type == "cpu"
    wide = on_cpu and out_features < in_features
    tall = weight.T if wide else weight
    rows, columns = tall.shape
    if on_cpu and rows >= QR_FIRST_ASPECT * columns:
        reflectors, tau = torch.geqrf(tall)
        U_R, S, Vh = torch.linalg.svd(reflectors[:columns].triu(), full_matrices=False)
        top = U_R[:, window]
        U = torch.ormqr(
            reflectors, tau, torch.cat([top, top.new_zeros(rows - columns, top.shape[1])])
        )
    else:
        U, S, Vh = torch.linalg.svd(tall, full_matrices=False)
        U = U[:, window]
    Vh = Vh[window]
    return (Vh.T, S, U.T) if wide else (U, S, Vh)


def window_factors(weight: torch.Tensor, start: int, rank: int, scale: float) -> LoRAFactors:
    """LoRA factors holding singular components ``start .. start+rank-1`` of ``weight``."""
    window = slice(start, start + rank)
    U, S, Vh = window_svd(weight, window)
    return factors_from_svd(weight, (U, S[window], Vh), slice(None), scale)  # all: the window


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
