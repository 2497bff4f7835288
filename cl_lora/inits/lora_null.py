"""LoRA-Null: LoRA initialized in the null space of pretrained-knowledge activations.

Tang et al., "Put the Space of LoRA Initialization to the Extreme to Preserve Pre-trained
Knowledge" (arXiv 2503.02659, AAAI 2026).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch

from cl_lora.arguments import Argument
from cl_lora.inits.base import InitMethod, LoRAFactors
from cl_lora.inits.factors import decompose_input, eigenvectors_between
from cl_lora.inits.registry import register


def smallest_eigenvectors(cov: torch.Tensor, count: int) -> torch.Tensor:
    """The eigenvectors of the ``count`` smallest eigenvalues of the symmetric ``cov``,
    ascending (the reference code takes them from a full ``eigh``; see
    :func:`~cl_lora.inits.factors.eigenvectors_between` for how they are computed)."""
    return eigenvectors_between(cov, 0, count)


def null_space_factors(
    weight: torch.Tensor, null: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``B, A`` with ``s B A = W Q Q^T``, ``Q`` (``null``, ``in x r``, in the decomposition's
    float type) the ``r`` least-excited input directions: the eigenvectors of ``C`` with the
    ``r`` smallest eigenvalues (:func:`smallest_eigenvectors`).

    ``W_p = W Q Q^T`` has rank at most ``r``, so its top-``r`` SVD is the thin SVD of the
    ``out x r`` matrix ``W Q = U S V^T``: ``W_p = U S (Q V)^T``, split with ``sqrt(S / s)``
    like PiSSA. The rows of ``A`` then lie in ``span(Q)``.
    """
    U, S, Vh = torch.linalg.svd(weight.to(null) @ null, full_matrices=False)
    root = torch.sqrt(S / scale)
    B = U * root
    A = root[:, None] * (Vh @ null.T)
    return B.to(weight.dtype), A.to(weight.dtype)


@register("lora-null", "LoRA-Null: A, B from W projected onto the null space of knowledge inputs")
class LoRANull(InitMethod):
    """Tang et al. 2025 (arXiv 2503.02659), LoRA-Null: ``C = X^T X`` over pretrained-knowledge
    activations ``X``; ``Q_null`` = eigenvectors of its ``r`` smallest eigenvalues; ``B, A`` from
    the top-``r`` SVD of ``W_p = W Q_null Q_null^T``; residual ``W - W_p``.

    ``A``'s rows span (an approximation of) the activations' null space, so right after init
    the adapter barely reads inputs of pretrained knowledge (``A x ~ 0`` for them) and the
    frozen residual alone reproduces ``W x`` on them. ``stats["input_cov"]`` should therefore
    come from knowledge inputs (the probe set, plus a memory of earlier tasks in a stream).

    ``normalize=true`` scales each calibration sequence by its largest entry before the
    covariance, as the reference code does (see :mod:`cl_lora.calibration.covariance`); off by
    default, which weighs sequences by their activation scale (the paper's ``X^T X``).
    """

    needs = ("input_cov",)
    calibration = ("probe",)
    arguments: ClassVar[dict[str, Argument]] = {
        "normalize": Argument(bool, False, "scale each calibration sequence by its max entry")
    }
    trainable: ClassVar[frozenset[str]] = frozenset({"A", "B"})

    def factors(
        self,
        weight: torch.Tensor,
        *,
        rank: int,
        scale: float,
        stats: Mapping[str, torch.Tensor],
        generator: torch.Generator | None,
        normalize: bool = False,  # acts in calibration (the covariance), not here
    ) -> LoRAFactors:
        null = decompose_input(stats, weight, smallest_eigenvectors, rank)  # once per input
        B, A = null_space_factors(weight, null, scale)
        return LoRAFactors(A=A, B=B, residual=weight - scale * B @ A, trainable=self.trainable)


@register("lora-null-v2", "LoRA-Null-v2: LoRA-Null with A frozen; only B trains")
class LoRANullV2(LoRANull):
    """Tang et al. 2025 (arXiv 2503.02659), LoRA-Null-v2: the LoRA-Null init with the
    down-projection ``A`` frozen, so the adapter keeps reading only null-space input directions
    during training, not just at init."""

    trainable = frozenset({"B"})
