"""Time of the SVD-family inits on LLaMA-7B-shaped layers, against PEFT's init of the same method.

For each weight shape (``out x in``; LLaMA-7B's are 4096x4096 for ``q/k/v/o_proj``, 11008x4096
for ``gate/up_proj``, 4096x11008 for ``down_proj``) it draws one random fp32 weight (seeded) and
times, per method, at rank 8 and alpha 16 (scale 2):

- ours: the registered init on that weight, ``cl_lora.inits.get(name)(weight, rank=8,
  scale=2, **args)``: the decomposition, the factors and the residual; and
- PEFT's: ``get_peft_model`` on a module holding one ``nn.Linear`` with that weight and
  ``LoraConfig(init_lora_weights=...)``: its wrapping, the same decomposition, the factors and
  the residual written into the layer. Building the module (a copy of the weight) is untimed.

Methods: ``pissa`` (exact SVD; PEFT ``"pissa"``), ``pissa-niter`` (``pissa`` with ``niter=N``,
the randomized SVD; PEFT ``"pissa_niter_N"``), ``olora`` (QR; PEFT ``"olora"``), ``mica`` (PEFT
``"mica"``; not in the default set). PEFT 0.21 has no MiLoRA and no intermediate window:
``milora`` and ``intermediate`` stand against PEFT's ``"pissa"``, the same exact SVD with another
window. Where both sides compute the same thing deterministically the row also gives the largest
difference of the two residuals (relative to the largest weight entry): it shows both did the
same work. The randomized SVD draws its test matrix from torch's global generator, after PEFT has
drawn its layers' default init from it, so the two sides' draws differ there and no difference
is given.

Timing: ``time.perf_counter`` (wall) and ``time.process_time`` (CPU time of this process); per
shape and method one warm-up call per side, then ``--repeats`` timed calls, ours and PEFT's
alternating so drift in machine load hits both; the medians are reported, ``ours/PEFT`` is the
ratio of the wall-time medians and ``CPU ratio`` that of the CPU-time medians, which on a core
shared with other jobs leaves out the time slices they take. A warm-up call of
:data:`benchmarks._common.LONG_CALL_S` or more is kept as the first timed call (a 4096x4096 SVD
takes about 20 s on one core). Run it with one thread on one core for a stable ratio:

    OMP_NUM_THREADS=1 taskset -c 0 python -m benchmarks.svd_init [--shapes 4096x4096 ...]
        [--methods pissa pissa-niter milora olora] [--niter 4] [--repeats 3] [--json OUT]

The default is the attention shape, 4096x4096, and every method but ``intermediate`` and
``mica``: 5 minutes of CPU time (8 minutes on a core shared with other jobs). LLaMA-7B's three
shapes with ``intermediate`` too (``--shapes 4096x4096 11008x4096 4096x11008 --methods pissa
pissa-niter milora intermediate olora``) took 39 minutes on a shared core (34 minutes of CPU).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import peft
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from benchmarks._common import (
    LONG_CALL_S,
    alternating_calls,
    benchmark_parser,
    entry_point,
    run_benchmark,
)
from cl_lora import inits
from cl_lora.cli import require_at_least_one
from cl_lora.errors import BadInputError

RANK, ALPHA = 8, 16
SCALE = ALPHA / RANK
#: LLaMA-7B's adapted linears by weight shape (out x in) and how often each occurs in a block.
LLAMA_7B = {
    "4096x4096": ("q/k/v/o_proj", 4),
    "11008x4096": ("gate/up_proj", 2),
    "4096x11008": ("down_proj", 1),
}
LLAMA_7B_BLOCKS = 32
DEFAULT_SHAPES = ("4096x4096",)


@dataclass(frozen=True)
class Method:
    """One row: our init (registry name, arguments) against PEFT's ``init_lora_weights``.

    ``peft_same`` is False where PEFT lacks the method and its nearest one (the same
    decomposition, another window) stands in; ``deterministic`` is False for the randomized SVD.
    """

    init: str
    args: dict[str, Any] = field(default_factory=dict)
    peft: str = ""
    peft_same: bool = True
    deterministic: bool = True

    @property
    def label(self) -> str:
        return " ".join([self.init, *(f"{key}={value}" for key, value in self.args.items())])


def methods(niter: int) -> dict[str, Method]:
    """Every method this benchmark knows, by its ``--methods`` name."""
    return {
        "pissa": Method("pissa", peft="pissa"),
        "pissa-niter": Method(
            "pissa", {"niter": niter}, peft=f"pissa_niter_{niter}", deterministic=False
        ),
        "milora": Method("milora", peft="pissa", peft_same=False),
        "intermediate": Method("intermediate", peft="pissa", peft_same=False),
        "olora": Method("olora", peft="olora"),
        "mica": Method("mica", peft="mica"),
    }


#: ``intermediate`` runs the same SVD as ``milora``: left out of the default to keep it short.
DEFAULT_METHODS = ("pissa", "pissa-niter", "milora", "olora")


def parse_shape(text: str) -> tuple[int, int]:
    """``"OUTxIN"`` as ``(out, in)``; anything else is a one-line error."""
    out_features, sep, in_features = text.lower().partition("x")
    if not (sep and out_features.isdigit() and in_features.isdigit()):
        raise BadInputError(f"--shapes '{text}' is not OUTxIN (e.g. 4096x4096 or 11008x4096)")
    shape = int(out_features), int(in_features)
    if min(shape) < RANK:
        raise BadInputError(f"--shapes {text} is smaller than rank {RANK} on one side")
    return shape


@dataclass(frozen=True)
class Settings:
    """What one run measures."""

    shapes: tuple[str, ...] = DEFAULT_SHAPES
    methods: tuple[str, ...] = DEFAULT_METHODS
    niter: int = 4
    repeats: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        require_at_least_one(self, ("niter", "repeats"))
        for shape in self.shapes:
            parse_shape(shape)
        known = methods(self.niter)
        unknown = [name for name in self.methods if name not in known]
        if unknown:
            raise BadInputError(
                f"unknown method {', '.join(unknown)}: choose from {', '.join(known)}"
            )


# -- one call per side -----------------------------------------------------------------------------
def random_weight(shape: tuple[int, int], seed: int) -> torch.Tensor:
    """A seeded fp32 weight with ``nn.Linear``'s scale (entries of variance ``1 / in``)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator) / shape[1] ** 0.5


class Stopwatch:
    """Wall seconds (``time.perf_counter``) and CPU seconds of this process (``time.process_time``,
    all its threads) of the ``with`` block. On a core shared with other jobs the CPU time leaves
    out the time slices they take."""

    def __enter__(self) -> Stopwatch:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def run_ours(weight: torch.Tensor, method: Method, seed: int) -> tuple[Stopwatch, torch.Tensor]:
    """The time of our init on ``weight``, and the residual it returns."""
    init = inits.get(method.init)
    torch.manual_seed(seed)  # the randomized SVD draws from the global generator, as PEFT's
    with Stopwatch() as took:
        factors = init(weight, rank=RANK, scale=SCALE, **method.args)
    return took, factors.residual


def run_peft(weight: torch.Tensor, method: Method, seed: int) -> tuple[Stopwatch, torch.Tensor]:
    """The time of ``get_peft_model`` initializing one linear holding ``weight``; the residual."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    linear.weight = nn.Parameter(weight.clone())  # untimed; PEFT overwrites it with the residual
    model = nn.Sequential(linear)
    config = LoraConfig(
        r=RANK, lora_alpha=ALPHA, target_modules=["0"], init_lora_weights=method.peft
    )
    torch.manual_seed(seed)
    with Stopwatch() as took:
        wrapped = get_peft_model(model, config)
    layer = wrapped.base_model.model[0]
    if layer.scaling["default"] != SCALE:
        raise RuntimeError(f"PEFT's scale is {layer.scaling['default']}, not {SCALE}")
    return took, layer.get_base_layer().weight.detach()


# -- the run ---------------------------------------------------------------------------------------
def measure_row(
    shape: str, name: str, method: Method, settings: Settings, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Ours and PEFT's calls on one weight, alternating; medians, ratio, residual difference."""
    weight = random_weight(parse_shape(shape), settings.seed)
    runs = {"ours": run_ours, "peft": run_peft}
    residuals: dict[str, torch.Tensor] = {}  # each side's last residual
    cpu: dict[str, list[float]] = {side: [] for side in runs}  # every call's, warm-up included

    def timed(side: str) -> Callable[[], float]:
        def call() -> float:
            took, residuals[side] = runs[side](weight, method, settings.seed)
            cpu[side].append(took.cpu)
            return took.wall

        return call

    seconds = alternating_calls({side: timed(side) for side in runs}, settings.repeats)
    cpu = {side: values[-settings.repeats :] for side, values in cpu.items()}  # the timed calls
    ours, theirs = (statistics.median(seconds[side]) for side in runs)
    ours_cpu, theirs_cpu = (statistics.median(cpu[side]) for side in runs)
    difference = None
    if method.peft_same and method.deterministic:
        gap = (residuals["ours"] - residuals["peft"]).abs().max()
        difference = float(gap / weight.abs().max())
    row = {
        "shape": shape,
        "layers": LLAMA_7B.get(shape, ("", 0))[0],
        "method": name,
        "label": method.label,
        "init": method.init,
        "args": method.args,
        "peft_init_lora_weights": method.peft,
        "peft_same_method": method.peft_same,
        "ours_s": ours,
        "peft_s": theirs,
        "ratio": ours / theirs,
        "ours_rounds": seconds["ours"],
        "peft_rounds": seconds["peft"],
        "ours_cpu_s": ours_cpu,
        "peft_cpu_s": theirs_cpu,
        "cpu_ratio": ours_cpu / theirs_cpu,
        "ours_cpu_rounds": cpu["ours"],
        "peft_cpu_rounds": cpu["peft"],
        "max_residual_difference": difference,
    }
    log(
        f"{shape} {method.label}: ours {ours:.3f} s, PEFT {theirs:.3f} s, ratio "
        f"{ours / theirs:.2f} (CPU time: {ours_cpu / theirs_cpu:.2f})"
    )
    return row


def llama_block(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per method measured on all three LLaMA-7B shapes: one decoder block's init time."""
    blocks = {}
    for name in dict.fromkeys(row["method"] for row in rows):
        by_shape = {row["shape"]: row for row in rows if row["method"] == name}
        if set(LLAMA_7B) <= set(by_shape):
            block = {
                side: sum(by_shape[shape][side] * count for shape, (_, count) in LLAMA_7B.items())
                for side in ("ours_s", "peft_s", "ours_cpu_s", "peft_cpu_s")
            }
            blocks[name] = block | {
                "ratio": block["ours_s"] / block["peft_s"],
                "cpu_ratio": block["ours_cpu_s"] / block["peft_cpu_s"],
            }
    return blocks


def measure(settings: Settings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every shape x method row, and one LLaMA-7B block where all three shapes were measured."""
    known = methods(settings.niter)
    rows = [
        measure_row(shape, name, known[name], settings, log)
        for shape in settings.shapes
        for name in settings.methods
    ]
    return {
        "rank": RANK,
        "alpha": ALPHA,
        "repeats": settings.repeats,
        "long_call_s": LONG_CALL_S,
        "seed": settings.seed,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "peft_version": peft.__version__,
        "rows": rows,
        "llama_7b_block": llama_block(rows),
    }


# -- report ----------------------------------------------------------------------------------------
def report(result: dict[str, Any]) -> str:
    """The table of a :func:`measure` result."""
    lines = [
        f"cpu, {result['torch_threads']} threads, torch {result['torch_version']}, peft "
        f"{result['peft_version']}; fp32, rank {result['rank']}, alpha {result['alpha']}; median "
        f"of {result['repeats']} timed calls per side after 1 warm-up call (kept as timed when "
        f">= {result['long_call_s']:g} s), alternating",
        "",
    ]
    header = (
        f"{'shape':<12}{'layers':<14}{'method':<16}{'ours s':>9}{'PEFT s':>9}{'ours/PEFT':>11}"
        f"{'CPU ratio':>11}  {'PEFT init_lora_weights':<24}{'residual diff':>14}"
    )
    lines += [header, "-" * len(header)]
    for row in result["rows"]:
        peft_name = repr(row["peft_init_lora_weights"])
        if not row["peft_same_method"]:
            peft_name += " (stand-in)"
        diff = row["max_residual_difference"]
        lines.append(
            f"{row['shape']:<12}{row['layers']:<14}{row['label']:<16}{row['ours_s']:>9.3f}"
            f"{row['peft_s']:>9.3f}{row['ratio']:>11.2f}{row['cpu_ratio']:>11.2f}  {peft_name:<24}"
            f"{'-' if diff is None else f'{diff:.1e}':>14}"
        )
    lines += [
        "",
        "ours/PEFT = median wall time of ours / of PEFT; CPU ratio = the same for the CPU time of "
        "this process (other jobs' time slices left out)",
        "residual diff = max |ours - PEFT| / max |W| of the two residuals (same method, "
        "deterministic); stand-in: PEFT has no such method, its exact PiSSA runs the same SVD",
    ]
    for name, block in result["llama_7b_block"].items():
        lines.append(
            f"one LLaMA-7B block ({name}: 4 x 4096x4096 + 2 x 11008x4096 + 1 x 4096x11008): "
            f"ours {block['ours_s']:.1f} s, PEFT {block['peft_s']:.1f} s, ratio "
            f"{block['ratio']:.2f} (CPU time {block['cpu_ratio']:.2f}); x {LLAMA_7B_BLOCKS} "
            "blocks: ours "
            f"{LLAMA_7B_BLOCKS * block['ours_s'] / 60:.1f} min, PEFT "
            f"{LLAMA_7B_BLOCKS * block['peft_s'] / 60:.1f} min"
        )
    return "\n".join(lines)


# -- CLI -------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    defaults = Settings()
    p = benchmark_parser("svd_init", __doc__)
    p.add_argument(
        "--shapes",
        nargs="+",
        default=list(defaults.shapes),
        help="weight shapes OUTxIN (default: 4096x4096; LLaMA-7B: also 11008x4096 4096x11008)",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=list(defaults.methods),
        help=f"of {', '.join(methods(defaults.niter))} (default: {' '.join(DEFAULT_METHODS)})",
    )
    p.add_argument(
        "--niter", type=int, default=defaults.niter, help="iterations of pissa-niter's SVD"
    )
    p.add_argument("--repeats", type=int, default=defaults.repeats, help="timed calls per side")
    p.add_argument("--seed", type=int, default=defaults.seed, help="seed of the weights")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, measure, print the table, optionally write JSON; return the numbers."""
    return run_benchmark(argv, build_parser(), Settings, measure, report)


if __name__ == "__main__":
    entry_point(main)
