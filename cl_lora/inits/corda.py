"""CorDA: context-oriented decomposition of ``W C`` (``corda-kpm`` / ``corda-ipm``).

Yang et al., "CorDA: Context-Oriented Decomposition Adaptation of Large Language Models for
Task-Aware Parameter-Efficient Fine-tuning" (NeurIPS 2024, arXiv 2406.05223). The weight is
decomposed together with the input covariance ``C``: ``W C = U S V^T``, hence
``W = U S (V^T C^{-1})``; a window of ``r`` components becomes the adapter
``B = U_r sqrt(S_r / s)``, ``A = sqrt(S_r / s) (V^T C^{-1})_r`` and the rest stays frozen in the
residual ``W - s B A``. Same decomposition as PEFT's ``collect_eigens_for_layer`` and
``corda_init`` (reference code: github.com/iboing/CorDA), computed in float64 (the reference:
float32; see :func:`~cl_lora.inits.factors.decomposition_dtype`), with ``C``
normalized to a unit mean eigenvalue (see :func:`damped_inverse`); only the window's singular
vectors are formed (:func:`~cl_lora.inits.factors.window_svd`, as for PiSSA).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping

import torch

from cl_lora.errors import BadInputError
from cl_lora.inits.base import InitMethod, LoRAFactors
from cl_lora.inits.factors import decompose_input, window_svd
from cl_lora.inits.registry import register

#: First damping, relative to the mean eigenvalue ``tr(C) / n`` (CorDA's and PEFT's value).
INITIAL_DAMPING = 0.01
#: ``|| C_d C_d^{-1} - I ||_F`` below which the damped ``C_d`` counts as stably invertible.
MAX_INVERSE_ERROR = 0.05


def damped_inverse(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalized, damped covariance ``C_d = C / m + l I`` (``m = tr(C) / n``, the mean
    eigenvalue) and its inverse, ``l`` doubled from 0.01 until ``|| C_d C_d^{-1} - I ||_F < 0.05``.

    The damping rule is the CorDA reference code's and PEFT's (there: ``C + 0.01 m I``, doubled
    the same way). Dividing by ``m`` fixes the scale that the decomposition leaves free:
    ``s B A`` does not depend on the scale of ``C``, but the split between the factors does
    (``B`` grows with ``sqrt(scale)``, ``A`` shrinks with it), and ``stats["input_cov"]`` is a
    sum over however many calibration tokens there were. With ``m = 1`` the balance of the
    factors no longer depends on the number of calibration tokens. PEFT instead scales each
    batch by its largest activation and averages over batches, so its factors are ours times
    one scalar per layer (``B``) and its inverse (``A``).
    """
    n = cov.shape[0]
    mean_eigenvalue = torch.diagonal(cov).mean()
    if not torch.isfinite(cov).all() or mean_eigenvalue <= 0:
        raise BadInputError(
            "CorDA's input covariance is zero or not finite: the calibration inputs of this "
            "layer were all zero or overflowed; calibrate on real, finite inputs"
        )
    normalized = cov / mean_eigenvalue
    identity = torch.eye(n, dtype=cov.dtype, device=cov.device)
    damping = INITIAL_DAMPING
    while True:
        damped = normalized + damping * identity
        inverse = torch.linalg.inv(damped)
        if torch.dist(damped @ inverse, identity) < MAX_INVERSE_ERROR:
            return damped, inverse
        damping *= 2


class CorDA(InitMethod):
    """Base of the two CorDA modes; they differ in which window of ``W C`` they train."""

    needs = ("input_cov",)

    @abstractmethod
    def window(self, k: int, rank: int) -> slice:
        """Which singular components the adapter trains (each mode defines it)."""

    def factors(
        self,
        weight: torch.Tensor,
        *,
        rank: int,
        scale: float,
        stats: Mapping[str, torch.Tensor],
        generator: torch.Generator | None,
    ) -> LoRAFactors:
        damped, inverse = decompose_input(stats, weight, damped_inverse)  # once per input
        window = self.window(min(weight.shape), rank)
        U, S, Vh = window_svd(weight.to(damped) @ damped, window)  # U, Vh: the window's only
        root = torch.sqrt(S[window] / scale)
        B = (U * root).to(weight.dtype)
        A = (root[:, None] * (Vh @ inverse)).to(weight.dtype)
        return LoRAFactors(A=A, B=B, residual=weight - scale * B @ A)


@register("corda-kpm", "CorDA knowledge-preserved: train the r smallest components of W C")
class CorDAKnowledgePreserved(CorDA):
    """Yang et al. 2024 (arXiv 2406.05223), knowledge-preserved mode (KPM): ``C`` from inputs of
    the knowledge to keep (question answering data in the paper; here the knowledge probe), and
    the adapter takes the last ``r`` components of ``W C``: the directions least used on that
    knowledge are trained, the ones it relies on stay frozen."""

    calibration = ("probe",)

    def window(self, k: int, rank: int) -> slice:
        return slice(k - rank, k)


@register("corda-ipm", "CorDA instruction-previewed: train the r largest components of W C")
class CorDAInstructionPreviewed(CorDA):
    """Yang et al. 2024 (arXiv 2406.05223), instruction-previewed mode (IPM): ``C`` from the
    task's own inputs, and the adapter takes the first ``r`` components of ``W C``, the
    directions the task uses most, for faster adaptation."""

    def window(self, k: int, rank: int) -> slice:
        return slice(0, rank)
