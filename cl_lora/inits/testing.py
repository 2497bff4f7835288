"""A conformance check for init methods, for plugin authors and for the built-ins alike.

    from cl_lora.inits.testing import check_init_method
    check_init_method(MyInit())            # raises AssertionError naming what is broken

It runs the init contract (docs/ARCHITECTURE.md) on a random layer with synthetic statistics of
the kinds the method declares: shapes, declared trainable factors, the residual identity
``residual + s B A == W``, the layer computing the same function right after init, finite
values, and determinism under a seeded generator.
"""

from __future__ import annotations

from typing import Any

import torch

from cl_lora.inits.base import InitMethod
from cl_lora.inits.registry import INITS


def synthetic_stats(
    needs: tuple[str, ...], out_features: int, in_features: int, seed: int
) -> dict[str, torch.Tensor]:
    """Plausible statistics: a low-rank-plus-noise input covariance, a gradient, an update."""
    generator = torch.Generator().manual_seed(seed + 1)
    stats = {}
    if "input_cov" in needs:
        basis = torch.randn(in_features // 2, in_features, generator=generator)
        X = torch.randn(256, in_features // 2, generator=generator) @ basis
        X += 1e-3 * torch.randn(256, in_features, generator=generator)
        stats["input_cov"] = X.T @ X
    if "grad" in needs:
        stats["grad"] = 1e-2 * torch.randn(out_features, in_features, generator=generator)
    if "warmup_delta" in needs:  # as the warm-up gives it: the factors (s B, A) of rank 2
        left = 1e-1 * torch.randn(out_features, 2, generator=generator)
        stats["warmup_delta"] = (left, 1e-1 * torch.randn(2, in_features, generator=generator))
    return stats


def check_init_method(
    method: InitMethod | str,
    *,
    out_features: int = 48,
    in_features: int = 32,
    rank: int = 4,
    scale: float = 2.0,
    seed: int = 0,
    args: dict[str, Any] | None = None,
    tolerance: float = 1e-4,
) -> None:
    """Assert that ``method`` keeps the init contract; see the module docstring."""
    method = INITS.get(method) if isinstance(method, str) else method
    args = args or {}
    weight = torch.randn(out_features, in_features, generator=torch.Generator().manual_seed(seed))
    stats = synthetic_stats(method.needs, out_features, in_features, seed)

    def call():
        generator = torch.Generator().manual_seed(seed)
        return method(weight, rank=rank, scale=scale, stats=stats, generator=generator, **args)

    factors = call()
    name = method.name or type(method).__name__
    assert factors.A.shape == (rank, in_features), f"{name}: A is {tuple(factors.A.shape)}"
    assert factors.B.shape == (out_features, rank), f"{name}: B is {tuple(factors.B.shape)}"
    assert factors.residual.shape == weight.shape, f"{name}: residual has the wrong shape"
    assert factors.trainable and factors.trainable <= {"A", "B"}, (
        f"{name}: trainable must be a non-empty subset of {{'A', 'B'}}, got {factors.trainable}"
    )
    for part in ("A", "B", "residual"):
        assert torch.isfinite(getattr(factors, part)).all(), f"{name}: {part} is not finite"
    rebuilt = factors.residual + scale * factors.B @ factors.A
    error = ((rebuilt - weight).norm() / weight.norm()).item()
    assert error < tolerance, f"{name}: residual + s B A differs from W by {error:.2e} (relative)"
    x = torch.randn(16, in_features, generator=torch.Generator().manual_seed(seed + 2))
    before = x @ weight.T
    after = x @ factors.residual.T + scale * (x @ factors.A.T) @ factors.B.T
    drift = ((after - before).norm() / before.norm()).item()
    assert drift < tolerance, f"{name}: the layer's output changes by {drift:.2e} at init"
    again = call()
    for part in ("A", "B", "residual"):
        assert torch.equal(getattr(factors, part), getattr(again, part)), (
            f"{name}: {part} differs between two calls with the same seed"
        )
