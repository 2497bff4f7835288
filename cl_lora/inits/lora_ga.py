"""LoRA-GA: LoRA read off the task's gradient (Wang et al., "LoRA-GA: Low-Rank Adaptation with
Gradient Approximation", NeurIPS 2024)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from cl_lora.arguments import Argument
from cl_lora.errors import BadInputError
from cl_lora.inits.base import InitMethod, LoRAFactors
from cl_lora.inits.registry import register

#: ``direction`` -> which block of ``r`` gradient singular vectors (0: first, 1: second) seeds
#: ``A`` and which seeds ``B``.
DIRECTIONS = {"ArB2r": (0, 1), "A2rBr": (1, 0)}
VARIANTS = ("paper", "peft")


@register("lora-ga", "LoRA-GA: A, B from the SVD of the task gradient (first step ~ full FT's)")
class LoRAGA(InitMethod):
    """Wang, Yu & Li 2024, "LoRA-GA: Low-Rank Adaptation with Gradient Approximation"
    (NeurIPS 2024, arXiv 2407.05000), Algorithm 1.

    From the accumulated gradient ``G = U S V^T`` of the weight on task batches:
    ``A = c V_[0,r)^T``, ``B = c U_[r,2r)`` with ``c = out^{1/4} / sqrt(gamma)`` (the paper's
    "stable" scale, §3.3), residual ``W - s B A``. Then a first SGD step of LoRA changes
    ``s B A`` by ``-lr s^2 (B B^T G + G A^T A) = -lr s^2 c^2 G_2r``, ``G_2r`` the best
    rank-``2r`` approximation of the full fine-tuning gradient (§3.2: the adapter's first step
    is aligned with full fine-tuning's). ``direction=A2rBr`` swaps the index sets
    (``A`` from ``V_[r,2r)``, ``B`` from ``U_[0,r)``), with the same first step; ``ArB2r`` is the
    default of the authors' code and PEFT.

    ``variant=peft`` reproduces PEFT 0.21's ``lora_ga_init`` ("stable" scale) instead, which
    departs from the paper: ``B = c U_[r,2r) S_[r,2r)`` carries the gradient's singular values
    and ``A = V_[0,r)^T`` is not scaled, so the init depends on the gradient's magnitude
    (PEFT averages ``G`` over backward calls; ``stats["grad"]`` may be a sum). PEFT also uses a
    randomized SVD where this uses the exact one.
    """

    needs = ("grad",)
    arguments = {
        "direction": Argument(
            str, "ArB2r", "ArB2r (A from V_[0,r), B from U_[r,2r)) or A2rBr (the swap)"
        ),
        "gamma": Argument(float, 16.0, "stable scale: factors times out^(1/4) / sqrt(gamma)"),
        "variant": Argument(str, "paper", "paper (Algorithm 1) or peft (PEFT 0.21's lora_ga_init)"),
    }

    def factors(
        self,
        weight: torch.Tensor,
        *,
        rank: int,
        scale: float,
        stats: Mapping[str, torch.Tensor],
        generator: torch.Generator | None,
        direction: str,
        gamma: float,
        variant: str,
    ) -> LoRAFactors:
        if direction not in DIRECTIONS:
            raise BadInputError(
                f"lora-ga direction={direction!r} is unknown: choose {' or '.join(DIRECTIONS)}"
            )
        if variant not in VARIANTS:
            raise BadInputError(
                f"lora-ga variant={variant!r} is unknown: choose {' or '.join(VARIANTS)}"
            )
        if gamma <= 0:
            raise BadInputError(f"lora-ga gamma={gamma} must be positive")
        out_features, in_features = weight.shape
        if 2 * rank > min(out_features, in_features):
            raise BadInputError(
                f"lora-ga needs 2r = {2 * rank} gradient components but a {out_features}x"
                f"{in_features} layer has {min(out_features, in_features)}: choose --rank at most "
                f"{min(out_features, in_features) // 2}"
            )
        grad = stats["grad"]
        if grad.shape != weight.shape:
            raise ValueError(
                f"grad has shape {tuple(grad.shape)} but the weight is {out_features}x{in_features}"
            )
        U, S, Vh = torch.linalg.svd(grad.detach().to(weight), full_matrices=False)
        a_block, b_block = DIRECTIONS[direction]
        a_index = slice(a_block * rank, (a_block + 1) * rank)
        b_index = slice(b_block * rank, (b_block + 1) * rank)
        c = out_features**0.25 / gamma**0.5
        if variant == "paper":
            A = c * Vh[a_index]
            B = c * U[:, b_index]
        else:
            A = Vh[a_index]
            B = c * U[:, b_index] * S[b_index]
        return LoRAFactors(A=A.contiguous(), B=B.contiguous(), residual=weight - scale * B @ A)
