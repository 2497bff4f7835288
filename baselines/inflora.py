"""``inflora``: interference-free low-rank adaptation (Liang & Li, "InfLoRA: Interference-Free
Low-Rank Adaptation for Continual Learning", CVPR 2024, arXiv:2404.00228).

InfLoRA writes a task's update as ``dW = B_t A_t`` with the down-projection ``A_t`` (PEFT's
``lora_A``; the paper calls it ``B_t``) *designed* before the task and frozen, and only the
up-projection trained from zero. Training then moves ``W`` only inside ``span(A_t^T)``, and the
design puts that span where it cannot interfere with earlier tasks:

1. ``M`` (per layer) is an orthonormal basis of earlier tasks' input subspace. After each task
   it grows by GPM's rule (Saha et al., ICLR 2021, "Gradient Projection Memory": the projected
   representation, Eq. 8, and the energy criterion, Eq. 5 -- the numbering InfLoRA's code cites
   for its DualGPM update): with ``C`` the covariance of the finished task's layer inputs and
   ``C^ = (I - M M^T) C (I - M M^T)`` its part outside ``M``, add the top eigenvectors of ``C^``
   until ``M`` holds a fraction ``threshold`` of the energy ``tr C``.
2. The new task's ``A_t`` are the top-``r`` eigenvectors of ``(I - M M^T) C_t (I - M M^T)``,
   ``C_t`` the covariance of the new task's inputs (the paper's Sec. 3, designing the
   dimensionality-reduction matrix: the new task's input directions with the old tasks'
   subspace projected out; its code takes them from the SVD of the projected covariance), so
   ``A_t M = 0``: the update does
   not change the layer's output on earlier tasks' inputs (to the ``1 - threshold`` energy the
   basis leaves out).

Differences from the official code, on purpose: the previous adapter is merged into the base
weight instead of kept as a frozen branch (the same function); ``A_t`` has orthonormal rows
(the official code divides them by ``sqrt 3``: a constant the LoRA scale and learning rate
absorb); the threshold is fixed instead of DualGPM's per-task schedule, and ``M`` is capped at
``n - r`` directions so a new task always has ``r`` free directions. The statistics use
``--calib-size`` examples of the task (``--calib`` does not apply).
"""

from __future__ import annotations

from typing import Any

import torch

from baselines.registry import register
from cl_lora.backbones import ContinualClassifier
from cl_lora.inits import Argument as Arg
from cl_lora.inits import InitMethod, LoRAFactors
from cl_lora.strategy import LoRAStrategy


def _top_eigenvectors(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending, clipped at 0) and eigenvectors (columns) of a symmetric PSD
    matrix."""
    values, vectors = torch.linalg.eigh(cov.double())
    return values.flip(0).clamp_min(0), vectors.flip(1)


def project_out(cov: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
    """``(I - M M^T) C (I - M M^T)``: the part of ``C`` outside ``span(M)``."""
    if basis is None or basis.shape[1] == 0:
        return cov
    eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
    outside = eye - basis.to(cov) @ basis.to(cov).T
    return outside @ cov @ outside


def extend_basis(
    basis: torch.Tensor | None, cov: torch.Tensor, threshold: float, max_dim: int
) -> torch.Tensor:
    """GPM's update: ``M`` plus the fewest top eigenvectors of ``C`` outside ``M`` that make
    ``M`` capture ``threshold`` of ``C``'s energy, at most ``max_dim`` columns in all."""
    cov = cov.double()
    n = cov.shape[0]
    basis = torch.zeros(n, 0, dtype=cov.dtype, device=cov.device) if basis is None else basis
    basis = basis.to(cov)
    total = torch.trace(cov).clamp_min(1e-12)
    values, vectors = _top_eigenvectors(project_out(cov, basis))
    captured = total - values.sum()  # energy of C already inside span(M)
    needed = threshold * total - captured
    count = int((values.cumsum(0) < needed).sum().item()) + 1 if needed > 0 else 0
    count = max(0, min(count, max_dim - basis.shape[1], n - basis.shape[1]))
    grown = torch.cat([basis, vectors[:, :count]], dim=1)
    return torch.linalg.qr(grown).Q if count else basis  # re-orthonormalize against drift


class InfLoRAInit(InitMethod):
    """InfLoRA's designed down-projection; not a registered ``--init`` (it needs the strategy's
    subspace memory, ``stats["subspace"]``)."""

    name = "inflora"
    description = "InfLoRA's designed A (orthogonal to earlier tasks' inputs), B = 0"
    needs = ("input_cov",)
    calibration = ("task",)

    def factors(
        self,
        weight: torch.Tensor,
        *,
        rank: int,
        scale: float,
        stats: dict[str, torch.Tensor],
        generator: torch.Generator | None,
        **args: Any,
    ) -> LoRAFactors:
        cov = project_out(stats["input_cov"].double(), stats.get("subspace"))
        _, vectors = _top_eigenvectors(cov)
        A = vectors[:, :rank].T.to(weight)
        B = torch.zeros(weight.shape[0], rank, dtype=weight.dtype, device=weight.device)
        return LoRAFactors(A=A, B=B, residual=weight.clone(), trainable=frozenset({"B"}))


@register(
    "inflora",
    "InfLoRA: frozen A designed outside earlier tasks' input subspace, B trains (CVPR 2024)",
    uses_init=False,
    arguments={"threshold": Arg(float, 0.95, "energy of each task's inputs the memory keeps")},
)
class InterferenceFreeLoRA(LoRAStrategy):
    """Merge + fresh LoRA per task, with InfLoRA's design and its subspace memory ``basis``."""

    checkpointed = ("basis",)

    def __init__(self, *, threshold: float, **kwargs: Any) -> None:
        kwargs.update(init=InfLoRAInit(), init_args={}, calib_sources=("task",))
        super().__init__(**kwargs)
        self.threshold = threshold
        self.basis: dict[str, torch.Tensor] = {}

    def init_stats(
        self, model: ContinualClassifier, generator: torch.Generator
    ) -> dict[str, dict[str, torch.Tensor]]:
        """First grow the memory with the finished task's inputs (read through the merged model,
        which computes what the trained one did), then the new task's covariance."""
        if self.task_id > 0:
            finished = self.calibrator.collect(model, self.task_id - 1, generator)
            grown: dict[int, torch.Tensor] = {}  # layers that read one input share one update
            for name, layer_stats in finished.items():
                cov = layer_stats["input_cov"]
                if id(cov) not in grown:
                    grown[id(cov)] = extend_basis(
                        self.basis.get(name), cov, self.threshold, cov.shape[0] - self.lora.rank
                    )
                self.basis[name] = grown[id(cov)]
        stats = super().init_stats(model, generator)
        for name, layer_stats in stats.items():
            if name in self.basis:
                layer_stats["subspace"] = self.basis[name]
        return stats
