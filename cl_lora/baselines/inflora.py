"""``inflora``: interference-free low-rank adaptation (Liang & Li, "InfLoRA: Interference-Free
Low-Rank Adaptation for Continual Learning", CVPR 2024, arXiv:2404.00228).

InfLoRA writes a task's update as ``dW = B_t A_t`` with the down-projection ``A_t`` (PEFT's
``lora_A``; the paper calls it ``B_t``) *designed* before the task and frozen, and only the
up-projection trained from zero. Training then moves ``W`` only inside ``span(A_t^T)``, and the
design puts that span where it cannot interfere with earlier tasks:

1. ``M`` (per layer) is an orthonormal basis of earlier tasks' input subspace, grown after each
   task from ``C``, the covariance of the finished task's layer inputs.
2. The new task's ``A_t`` are the top-``r`` directions of the new task's covariance ``C_t`` with
   the old tasks' subspace projected out (the paper's Sec. 3, designing the
   dimensionality-reduction matrix), so ``A_t M = 0``: the update does not change the layer's
   output on earlier tasks' inputs (to the energy the basis leaves out).

``rule`` picks how, ``official`` by default:

- ``official`` follows the authors' code (liangyanshuo/InfLoRA, ``methods/inflora.py``,
  ``update_DualGPM`` and the design before training): GPM's energy criterion (Saha et al., ICLR
  2021, Eq. 5 and the projected representation of Eq. 8) applied to the singular values of
  the covariance *squared*: after the first task ``M`` takes the fewest top singular vectors
  of ``C`` whose squared singular values fall short of ``threshold`` of their sum (at least
  one); after later tasks it adds the top left singular vectors of ``C - M M^T C`` until the
  squared-singular-value energy of ``C`` outside them reaches ``threshold``. The threshold
  rises linearly over the stream, ``threshold + (threshold_end - threshold) t / T`` after task
  ``t`` (0-based) of ``T`` (the code's ``lamb`` 0.95 and ``lame`` 1.0). ``A_t`` is the top
  ``r`` left singular vectors of ``C_t - M M^T C_t``, divided by ``sqrt 3``.
- ``eigenvalue`` is the suite's earlier reading of the paper: a fixed ``threshold`` on the
  eigenvalues themselves (``M`` captures that fraction of ``tr C``), ``A_t`` the top
  eigenvectors of ``(I - M M^T) C_t (I - M M^T)``, orthonormal. Squaring the spectrum
  concentrates the energy in the top directions, so the official rule keeps far fewer: on
  MiniLM's first layer after one offline-text task the official memory holds a handful of
  directions where the eigenvalue rule holds dozens (docs/baselines.md).

Differences from the official code, on purpose: the previous adapter is merged into the base
weight instead of kept as a frozen branch (the same function); ``M`` is capped at ``n - r``
directions so a new task always has ``r`` free directions (the official code caps it at ``n``);
DualGPM's "retain" form (the memory stored as its complement once it passes half the dimension)
is not implemented -- the cap makes it unnecessary for the design. The statistics use
``--calib-size`` examples of the task (``--calib`` does not apply).

Every decomposition is of a symmetric matrix, through ``eigh`` (float64 unless the run chose
float32): ``C`` itself, or ``(C - M M^T C)(C - M M^T C)^T``, whose eigenvectors are the left
singular vectors the official code takes from an SVD and whose eigenvalues their squares; GPM's
total energy (the sum of the squared singular values of ``C``) is ``||C||_F^2``, which needs
none. The layers that read one input (q/k/v, gate/up) share its covariance and memory, so the
design is computed once for them (:meth:`InfLoRAInit.factors`).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from cl_lora.arguments import Argument as Arg
from cl_lora.baselines.registry import register
from cl_lora.inits import InitMethod, LoRAFactors
from cl_lora.inits.factors import decomposition_dtype

if TYPE_CHECKING:  # types only: registering a baseline must not load Avalanche or PEFT
    from cl_lora.backbones import ContinualClassifier


def _top_eigenvectors(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending, clipped at 0) and eigenvectors (columns) of a symmetric PSD
    matrix."""
    values, vectors = torch.linalg.eigh(cov.to(decomposition_dtype()))
    return values.flip(0).clamp_min(0), vectors.flip(1)


def left_singular(
    cov: torch.Tensor, basis: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The left singular vectors (columns) of ``C - M M^T C`` for a symmetric ``C``, and the
    squares of its singular values, both in descending order, from one symmetric eigensolve
    (of ``C``, or of ``R R^T`` with ``R = C - M M^T C``)."""
    if basis is None or basis.shape[1] == 0:
        values, vectors = torch.linalg.eigh(cov)
        squares = values.square()  # a PSD C's eigenvalues are its singular values
        order = squares.argsort(descending=True)
        return squares[order], vectors[:, order]
    outside = cov - basis.to(cov) @ (basis.to(cov).T @ cov)
    values, vectors = torch.linalg.eigh(outside @ outside.T)
    return values.flip(0).clamp_min(0), vectors.flip(1)


def project_out(cov: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
    """``(I - M M^T) C (I - M M^T)``: the part of ``C`` outside ``span(M)``."""
    if basis is None or basis.shape[1] == 0:
        return cov
    eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
    outside = eye - basis.to(cov) @ basis.to(cov).T
    return outside @ cov @ outside


RULES = ("official", "eigenvalue")
OFFICIAL_SCALE = 3**-0.5  # the official code divides the designed A by sqrt(3)


def rising_threshold(start: float, end: float, finished_task: int, num_tasks: int) -> float:
    """The official code's threshold after task ``finished_task`` (0-based) of ``num_tasks``:
    linear from ``start`` (``lamb``) towards ``end`` (``lame``)."""
    return (end - start) * finished_task / num_tasks + start


def extend_basis_official(
    basis: torch.Tensor | None, cov: torch.Tensor, threshold: float, max_dim: int
) -> torch.Tensor:
    """The official ``update_DualGPM`` ("remove" form): the energy is the squared singular
    values of ``C``; ``M`` grows by the top left singular vectors of ``C - M M^T C`` until it
    holds ``threshold`` of it (after the first task: the fewest that fall short of it, at least
    one), at most ``max_dim`` columns in all."""
    cov = cov.to(decomposition_dtype())
    total = cov.square().sum().clamp_min(1e-300)  # the sum of C's squared singular values
    first = basis is None or basis.shape[1] == 0
    held = 0 if first else basis.shape[1]
    squares, vectors = left_singular(cov, basis)
    ratio = squares / total
    if first:
        count = max(int((ratio.cumsum(0) < threshold).sum()), 1)
    else:  # add a direction while the energy held so far is below the threshold
        held_energy = 1 - ratio.sum() + torch.cat([ratio.new_zeros(1), ratio.cumsum(0)[:-1]])
        count = int((held_energy < threshold).sum())
    count = max(0, min(count, max_dim - held))
    if first:
        return vectors[:, :count]
    return torch.cat([basis.to(cov), vectors[:, :count]], dim=1) if count else basis


def extend_basis(
    basis: torch.Tensor | None, cov: torch.Tensor, threshold: float, max_dim: int
) -> torch.Tensor:
    """The ``eigenvalue`` rule: ``M`` plus the fewest top eigenvectors of ``C`` outside ``M``
    that make ``M`` capture ``threshold`` of ``tr C``, at most ``max_dim`` columns in all."""
    cov = cov.to(decomposition_dtype())
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


def _alive(ref: weakref.ref | None) -> Any:
    return None if ref is None else ref()


class InfLoRAInit(InitMethod):
    """InfLoRA's designed down-projection; not a registered ``--init`` (it needs the strategy's
    subspace memory, ``stats["subspace"]``)."""

    name = "inflora"
    description = "InfLoRA's designed A (orthogonal to earlier tasks' inputs), B = 0"
    needs = ("input_cov",)
    calibration = ("task",)

    def __init__(self, rule: str = "official") -> None:
        self.rule = rule
        self._last: tuple[Any, ...] | None = None  # the last design, see factors

    def _design(self, cov: torch.Tensor, basis: torch.Tensor | None, rank: int) -> torch.Tensor:
        """``A`` (``rank x n``, in :func:`decomposition_dtype`) for the covariance ``cov`` and
        memory ``basis``."""
        cov = cov.to(decomposition_dtype())
        if self.rule == "official":  # left singular vectors of C - M M^T C, over sqrt(3)
            return left_singular(cov, basis)[1][:, :rank].T * OFFICIAL_SCALE
        return _top_eigenvectors(project_out(cov, basis))[1][:, :rank].T

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
        """The design of the layer's input; layers that read one input come one after another
        with the very same covariance and memory tensors, so the last design is kept (weakly:
        it is recomputed when either tensor is another one or was changed) and reused."""
        cov, basis = stats["input_cov"], stats.get("subspace")
        key = (cov._version, rank, None if basis is None else basis._version)
        last = self._last
        if (
            last is None
            or _alive(last[0]) is not cov
            or _alive(last[1]) is not basis
            or last[2] != key
        ):
            basis_ref = weakref.ref(basis) if basis is not None else None
            self._last = (weakref.ref(cov), basis_ref, key, self._design(cov, basis, rank))
        A = self._last[3].to(weight)
        B = torch.zeros(weight.shape[0], rank, dtype=weight.dtype, device=weight.device)
        return LoRAFactors(A=A, B=B, residual=weight.clone(), trainable=frozenset({"B"}))


@register(
    "inflora",
    "InfLoRA: frozen A designed outside earlier tasks' input subspace, B trains (CVPR 2024)",
    uses_init=False,
    arguments={
        "threshold": Arg(float, 0.95, "energy of each task's inputs the memory keeps (lamb)"),
        "threshold_end": Arg(float, 1.0, "official rule: the threshold rises towards it (lame)"),
        "rule": Arg(
            str,
            "official",
            "official: the authors' code; eigenvalue: the earlier reading",
            choices=RULES,
        ),
    },
)
class InterferenceFreeLoRA:
    """Merge + fresh LoRA per task, with InfLoRA's design and its subspace memory ``basis``."""

    checkpointed = ("basis",)

    def __init__(self, *, threshold: float, threshold_end: float, rule: str, **kwargs: Any) -> None:
        kwargs.update(init=InfLoRAInit(rule), init_args={}, calib_sources=("task",))
        super().__init__(**kwargs)
        self.threshold, self.threshold_end, self.rule = threshold, threshold_end, rule
        self.basis: dict[str, torch.Tensor] = {}

    def _grow(self, basis: torch.Tensor | None, cov: torch.Tensor) -> torch.Tensor:
        """The memory after the finished task ``task_id - 1``, by the chosen rule."""
        max_dim = cov.shape[0] - self.lora.rank
        if self.rule == "eigenvalue":
            return extend_basis(basis, cov, self.threshold, max_dim)
        finished, total = self.task_id - 1, len(self.stream.tasks)
        threshold = rising_threshold(self.threshold, self.threshold_end, finished, total)
        return extend_basis_official(basis, cov, threshold, max_dim)

    def init_stats(
        self, model: ContinualClassifier, generator: torch.Generator, layers: Sequence[str]
    ) -> dict[str, dict[str, torch.Tensor]]:
        """First grow the memory with the finished task's inputs (read through the merged model,
        which computes what the trained one did), then the new task's covariance."""
        if self.task_id > 0:
            finished = self.calibrator.collect(model, self.task_id - 1, generator, layers)
            grown: dict[int, torch.Tensor] = {}  # layers that read one input share one update
            for name, layer_stats in finished.items():
                cov = layer_stats["input_cov"]
                if id(cov) not in grown:
                    grown[id(cov)] = self._grow(self.basis.get(name), cov)
                self.basis[name] = grown[id(cov)]
        stats = super().init_stats(model, generator, layers)
        for name, layer_stats in stats.items():
            if name in self.basis:
                layer_stats["subspace"] = self.basis[name]
        return stats
