"""Inits from a window of the weight's singular spectrum.

``W = U S V^T`` with singular values descending, ``k = min(out, in)``. The window ``[i, i+r)``
becomes ``B = U_win sqrt(S_win / s)``, ``A = sqrt(S_win / s) V_win^T`` (so ``s B A`` is exactly
the window's part of ``W``); the residual keeps the rest of the spectrum and both factors train.

The exact SVD is ``factors.window_svd``: on the CPU a weight whose long side is at least 1.5
times its short side is decomposed QR first, on its tall orientation, forming only the window's
singular vectors where ``torch.linalg.svd`` (PEFT's call) forms them all: the same window to
float round-off in less time (``benchmarks/svd_init.py``).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping

import torch

from cl_lora.arguments import Argument
from cl_lora.errors import BadInputError
from cl_lora.inits.base import InitMethod, LoRAFactors
from cl_lora.inits.factors import factors_from_svd, window_factors
from cl_lora.inits.registry import register


class SpectrumWindow(InitMethod):
    """Base for methods defined by where their window starts."""

    @abstractmethod
    def start(self, k: int, rank: int, **args: object) -> int:
        """Where the trained window starts (subclasses define it)."""

    def factors(
        self,
        weight: torch.Tensor,
        *,
        rank: int,
        scale: float,
        stats: Mapping[str, torch.Tensor],
        generator: torch.Generator | None,
        **args: object,
    ) -> LoRAFactors:
        k = min(weight.shape)
        return window_factors(weight, self.start(k, rank, **args), rank, scale)


@register("pissa", "PiSSA: train the r principal singular components, freeze the rest")
class PiSSA(SpectrumWindow):
    """Meng et al. 2024: window ``[0, r)``.

    ``niter > 0`` finds the window with a randomized SVD (``torch.svd_lowrank`` with ``q = r``
    and ``niter`` subspace iterations), as PEFT's ``init_lora_weights="pissa_niter_<n>"`` does:
    on large layers much faster than the full SVD, and the same factors up to the randomized
    SVD's error. It draws from torch's global generator, as PEFT's does.
    """

    arguments = {
        "niter": Argument(int, 0, "0: full SVD; n > 0: randomized SVD with n iterations (PEFT)")
    }

    def start(self, k: int, rank: int, **args: object) -> int:
        return 0

    def factors(
        self,
        weight: torch.Tensor,
        *,
        rank: int,
        scale: float,
        stats: Mapping[str, torch.Tensor],
        generator: torch.Generator | None,
        niter: int,
    ) -> LoRAFactors:
        if niter < 0:
            raise BadInputError(f"pissa niter={niter} is negative: use 0 (full SVD) or more")
        if niter == 0:
            return window_factors(weight, 0, rank, scale)
        U, S, V = torch.svd_lowrank(weight, q=rank, niter=niter)
        return factors_from_svd(weight, (U, S, V.T), slice(0, rank), scale)


@register("milora", "MiLoRA: train the r minor singular components, freeze the rest")
class MiLoRA(SpectrumWindow):
    """Wang et al. 2024: window ``[k-r, k)``."""

    def start(self, k: int, rank: int) -> int:
        return k - rank


@register(
    "intermediate",
    "intermediate components: train a window in the middle of the spectrum (f=0 PiSSA, f=1 MiLoRA)",
)
class Intermediate(SpectrumWindow):
    """Quercia et al. 2026 ("Least but not Last"): window ``[i, i+r)``, ``i = round(f (k - r))``.

    Default ``f = 0.5``, the middle of the spectrum: the paper finds forgetting U-shaped in the
    window position with its minimum between the principal and the minor ends, and its exact
    selection rule is not available to us; the benchmark's ``f`` sweep measures the curve.
    ``start`` gives an absolute start index instead and overrides ``f``.
    """

    arguments = {
        "f": Argument(float, 0.5, "window position in [0, 1]: 0 = principal, 1 = minor"),
        "start": Argument(int, None, "absolute index of the first component (overrides f)"),
    }

    def start(self, k: int, rank: int, f: float, start: int | None) -> int:
        if start is not None:
            if not 0 <= start <= k - rank:
                raise BadInputError(
                    f"intermediate start={start} does not fit rank {rank} in a layer with "
                    f"{k} components: choose start between 0 and {k - rank}"
                )
            return start
        if not 0.0 <= f <= 1.0:
            raise BadInputError(f"intermediate f={f} is outside [0, 1]: choose f in [0, 1]")
        return round(f * (k - rank))
