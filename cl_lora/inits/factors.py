"""Building blocks several init methods share: LoRA factors from singular components of a
weight, a window of a weight's singular components, and decompositions of the input covariance
a method reads from its statistics, shared by the layers that read the same input."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import torch

from cl_lora.inits.base import LoRAFactors

#: On the CPU, :func:`window_svd` decomposes a weight QR first when its long side is at least this
#: many times its short side (measured on 1024-wide weights: slower at 1.25, faster from 1.5 on).
QR_FIRST_ASPECT = 1.5

T = TypeVar("T")

#: The float type of the decompositions that read an input covariance (see
#: :func:`decomposition_dtype`); float64 unless a run chooses float32.
_DECOMPOSITION_DTYPE: ContextVar[torch.dtype] = ContextVar(
    "decomposition_dtype", default=torch.float64
)


def decomposition_dtype() -> torch.dtype:
    """The float type CorDA, LoRA-Null, EVA and InfLoRA decompose in: float64 by default (they
    resolve a covariance's smallest eigenvalues or invert it, where float32 round-off is of the
    size of the quantities themselves), float32 inside :func:`decomposing_in` (what CorDA's and
    LoRA-Null's reference code use: much faster on GPUs with a low float64 rate)."""
    return _DECOMPOSITION_DTYPE.get()


@contextmanager
def decomposing_in(dtype: torch.dtype) -> Iterator[None]:
    """Run the covariance decompositions inside the block in ``dtype`` (float32 or float64)."""
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"decompositions run in float32 or float64, not {dtype}")
    token = _DECOMPOSITION_DTYPE.set(dtype)
    try:
        yield
    finally:
        _DECOMPOSITION_DTYPE.reset(token)


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


def eigenvectors_between(cov: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Eigenvectors ``start .. stop-1`` of the symmetric ``cov`` in ascending eigenvalue order,
    as the columns of an ``n x (stop - start)`` matrix.

    On the CPU only those are computed (LAPACK's MRRR driver through SciPy's
    ``eigh(subset_by_index=...)``): the same vectors as a full ``torch.linalg.eigh`` up to sign
    and round-off, about 4x faster for 8 of a 2048-wide float64 matrix. Elsewhere, torch's full
    ``eigh``.
    """
    if cov.device.type != "cpu":
        return torch.linalg.eigh(cov)[1][:, start:stop]
    from scipy.linalg import eigh  # on first use: registering inits must not load SciPy

    _, vectors = eigh(cov.numpy(), subset_by_index=[start, stop - 1], driver="evr")
    return torch.from_numpy(vectors).to(cov.dtype)


def decompose_input(
    stats: Mapping[str, torch.Tensor],
    weight: torch.Tensor,
    decompose: Callable[..., T],
    *args: Hashable,
) -> T:
    """``decompose(C, *args)`` of the layer's input covariance ``stats["input_cov"]``
    (``C = X^T X``, ``in x in``), given as a symmetric matrix of :func:`decomposition_dtype`
    on ``weight``'s device.

    Computed once per input: calibration hands the layers that read the same input (q/k/v,
    gate/up) the very same covariance tensor, and they come one after another, so the last
    result of each ``decompose`` is kept for as long as its covariance tensor lives (at a 7B
    shape that saves 3 of 7 decompositions per decoder layer). The caller must not modify the
    result in place.
    """
    cov = stats["input_cov"]
    in_features = weight.shape[1]
    if cov.shape != (in_features, in_features):
        raise ValueError(
            f"input_cov has shape {tuple(cov.shape)} but this layer takes {in_features} inputs: "
            f"it must be {in_features}x{in_features}"
        )
    dtype = decomposition_dtype()
    key = (id(cov), cov._version, weight.device, dtype, args)
    last = _LAST_DECOMPOSITION.get(decompose)
    if last is not None and last[0] == key:
        return last[1]
    symmetric = cov.detach().to(device=weight.device, dtype=dtype)
    value = decompose((symmetric + symmetric.T) / 2, *args)
    _LAST_DECOMPOSITION[decompose] = (key, value)
    weakref.finalize(cov, _forget_decomposition, decompose, key)  # id(cov) is then free again
    return value


#: Per decompose function, ``(key, value)`` of its last covariance (see :func:`decompose_input`).
_LAST_DECOMPOSITION: dict[Callable[..., Any], tuple[tuple, Any]] = {}


def _forget_decomposition(decompose: Callable[..., Any], key: tuple) -> None:
    last = _LAST_DECOMPOSITION.get(decompose)
    if last is not None and last[0] == key:
        del _LAST_DECOMPOSITION[decompose]
