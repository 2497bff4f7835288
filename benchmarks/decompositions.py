"""Decomposition time per method on one LLaMA-7B-shaped layer: the forms issue 24 replaced,
against the forms that replaced them, on the same inputs.

- change rates (LoRA-Init, LoRA-TSD, LoRA-Dash): ``|u_i^T dW v_i| / sigma_i`` of a rank-8
  update ``dW`` on a ``--out x --in`` weight (default 4096 x 11008, the MLP shape), from the
  dense ``dW`` (before) or from its factors (after); the weight's full SVD, which both need,
  is timed beside them;
- InfLoRA's design on a ``--cov x --cov`` input covariance (default 4096, the attention input)
  with a memory of 64 directions: the SVD of ``C - M M^T C`` (before) against the symmetric
  eigensolve of ``(C - M M^T C)(C - M M^T C)^T`` (after), both float64;
- the covariance inits (lora-null, corda-kpm, eva) on a ``--cov x --cov`` weight (the attention
  projections' shape) with its input covariance, in float64 (the default) and in float32
  (``--decompose-dtype float32``).

Each side is timed ``--repeats`` times (fresh inputs from one seed, the sides alternating call
by call); the table shows the median and the ratio. CPU timings: on a GPU the ratios differ
(float64 runs at 1/32-1/64 of the float32 rate on most GPUs, and GPU SVD/eigh are separate
solvers).

    python -m benchmarks.decompositions [--out 4096] [--in 11008] [--cov 4096] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from benchmarks._common import alternating_calls, benchmark_parser, entry_point, run_benchmark
from cl_lora import inits
from cl_lora.baselines.inflora import left_singular
from cl_lora.inits.factors import decomposing_in
from cl_lora.inits.lora_dash import change_rates

COVARIANCE_INITS = ("lora-null", "corda-kpm", "eva")


@dataclass(frozen=True)
class Settings:
    out: int = 4096
    inputs: int = 11008
    cov: int = 4096
    memory: int = 64
    rank: int = 8
    repeats: int = 3


def _timed(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _timed_init(
    name: str, weight: torch.Tensor, cov: torch.Tensor, dtype: torch.dtype, rank: int
) -> float:
    """Seconds of one init on ``weight`` with decompositions in ``dtype`` (a fresh copy of
    ``cov`` each call, so no decomposition of an earlier call is reused)."""
    stats = {"input_cov": cov.clone()}
    with decomposing_in(dtype):
        return _timed(lambda: inits.get(name)(weight, rank=rank, scale=2.0, stats=stats))


def measure(settings: Settings) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(settings.out, settings.inputs, generator=generator)
    left = torch.randn(settings.out, settings.rank, generator=generator)
    right = torch.randn(settings.rank, settings.inputs, generator=generator)
    U, S, Vh = torch.linalg.svd(weight, full_matrices=False)
    dense = left @ right

    def dense_rates() -> None:  # the code before: the dense update, contracted with U and V
        projected = torch.einsum("mi,mn,in->i", U, dense, Vh)
        projected.abs() / S.clamp(min=torch.finfo(S.dtype).tiny)

    x = torch.randn(4 * settings.cov, settings.cov, generator=generator, dtype=torch.float64)
    cov = x.T @ x
    basis = torch.linalg.qr(
        torch.randn(settings.cov, settings.memory, generator=generator, dtype=torch.float64)
    ).Q

    sides = {
        "weight SVD (both)": lambda: _timed(lambda: torch.linalg.svd(weight, full_matrices=False)),
        "rates, dense dW (before)": lambda: _timed(dense_rates),
        "rates, factors (after)": lambda: _timed(lambda: change_rates(U, S, Vh, (left, right))),
        "InfLoRA, SVD (before)": lambda: _timed(
            lambda: torch.linalg.svd(cov - basis @ (basis.T @ cov))
        ),
        "InfLoRA, eigh (after)": lambda: _timed(lambda: left_singular(cov, basis)),
    }
    square = torch.randn(settings.cov, settings.cov, generator=generator)
    for name in COVARIANCE_INITS:
        for dtype in (torch.float64, torch.float32):
            sides[f"{name}, {dtype}".replace("torch.", "")] = partial(
                _timed_init, name, square, cov.float(), dtype, settings.rank
            )
    seconds = alternating_calls(sides, settings.repeats)
    return {
        "settings": vars(settings) | {"threads": torch.get_num_threads()},
        "seconds": seconds,
        "median_s": {name: statistics.median(values) for name, values in seconds.items()},
    }


def table(result: dict[str, Any]) -> str:
    s, median = result["settings"], result["median_s"]
    rates = median["rates, dense dW (before)"] / median["rates, factors (after)"]
    design = median["InfLoRA, SVD (before)"] / median["InfLoRA, eigh (after)"]
    lines = [
        f"weight {s['out']}x{s['inputs']}, rank-{s['rank']} update; InfLoRA input {s['cov']}, "
        f"memory {s['memory']}; {s['threads']} threads, median of {s['repeats']}",
        "| computation | seconds |",
        "|---|---:|",
        *(f"| {name} | {value:.3f} |" for name, value in median.items()),
        "",
        f"change rates {rates:.0f}x faster from factors; InfLoRA design {design:.2f}x faster",
        *(
            f"{name}: float32 decompositions "
            f"{median[f'{name}, float64'] / median[f'{name}, float32']:.2f}x faster than float64"
            for name in COVARIANCE_INITS
        ),
    ]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = benchmark_parser("decompositions", __doc__)
    defaults = Settings()
    parser.add_argument("--out", type=int, default=defaults.out)
    parser.add_argument("--in", dest="inputs", type=int, default=defaults.inputs)
    for name in ("cov", "memory", "rank", "repeats"):
        parser.add_argument(f"--{name}", type=int, default=getattr(defaults, name))
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    with torch.no_grad():
        return run_benchmark(argv, _parser(), Settings, measure, table)


if __name__ == "__main__":
    entry_point(main)
