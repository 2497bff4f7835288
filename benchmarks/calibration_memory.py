"""Calibration memory and time per decoder layer of a LLaMA-7B-shaped model, and per-layer init.

A covariance init (lora-null, corda, eva, inflora) needs ``C = X^T X`` of every adapted layer's
input. This measures it where a 7B model would, layer by layer, on a randomly initialized
``LlamaForCausalLM`` with LLaMA-7B's layer shapes (hidden 4096, intermediate 11008, 32 heads;
``--layers`` decoder layers, default 2; a small vocabulary, which calibration does not touch):

- memory: the float32 matrices held, one per distinct input (q/k/v share one, gate/up share
  one: ``3 x 4096^2 + 11008^2`` floats per layer) against one per adapted module, and what a
  ``--calib-max-memory`` of one layer's worth (as the planner counts it, one matrix per module)
  does: the passes and the most held at once;
- time: the forward passes with the covariance hooks over ``--sequences x --tokens`` tokens
  (one pass, then the same data in one pass per layer, as the budget makes it), and
  the init of one decoder layer's seven projections (``--init``, default lora-null: float64
  eigendecompositions of each covariance, one per distinct input);
- extrapolation to ``--extrapolate`` layers (default 32, LLaMA-7B): memory and time scale with
  the layer count (every layer has the same shapes).

Timing: ``time.perf_counter``, one call each (a single pass takes minutes on a CPU core);
``torch.get_num_threads()`` is printed. Peak process memory (``ru_maxrss``) is reported for the
whole run.

    python -m benchmarks.calibration_memory [--layers 2] [--sequences 16] [--tokens 128]
        [--init lora-null] [--skip-init] [--json OUT]
"""

from __future__ import annotations

import argparse
import resource
import time
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks._common import benchmark_parser, entry_point, run_benchmark
from cl_lora import inits
from cl_lora.calibration.covariance import CovarianceCollector, covariance_passes
from cl_lora.lora import LoRASettings, initial_adapters

LLAMA_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32}
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Settings:
    layers: int = 2
    hidden: int = LLAMA_7B["hidden_size"]
    intermediate: int = LLAMA_7B["intermediate_size"]
    heads: int = LLAMA_7B["num_attention_heads"]
    sequences: int = 16
    tokens: int = 128
    init: str = "lora-null"
    skip_init: bool = False
    extrapolate: int = 32


def llama_shaped(settings: Settings) -> torch.nn.Module:
    """A random ``LlamaForCausalLM`` with the given shapes and a 256-token vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=256,
        hidden_size=settings.hidden,
        intermediate_size=settings.intermediate,
        num_attention_heads=settings.heads,
        num_key_value_heads=settings.heads,
        num_hidden_layers=settings.layers,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def _collect(model: torch.nn.Module, names: list[str], batches: list[torch.Tensor]):
    """One pass of ``batches`` with covariance hooks on ``names``; (collector, seconds)."""
    collector = CovarianceCollector(model, names)
    start = time.perf_counter()
    with collector, torch.no_grad():
        for input_ids in batches:
            collector.start_batch(torch.ones_like(input_ids))
            model.model(input_ids=input_ids)
    return collector, time.perf_counter() - start


def measure(settings: Settings) -> dict[str, Any]:
    model = llama_shaped(settings)
    names = [
        f"model.layers.{i}.self_attn.{p}" for i in range(settings.layers) for p in PROJECTIONS[:4]
    ]
    names += [f"model.layers.{i}.mlp.{p}" for i in range(settings.layers) for p in PROJECTIONS[4:]]
    modules = dict(model.named_modules())
    names.sort(key=list(modules).index)
    generator = torch.Generator().manual_seed(0)
    batches = [
        torch.randint(0, 256, (1, settings.tokens), generator=generator)
        for _ in range(settings.sequences)
    ]

    collector, one_pass_s = _collect(model, names, batches)
    one_pass_bytes, per_module_bytes = collector.nbytes(), collector.nbytes_per_module()
    covariances = collector.covariances()
    del collector

    layer_bytes = one_pass_bytes // settings.layers
    # the budget counts one matrix per module (the planner's upper bound): one layer's worth
    passes = covariance_passes(model, names, per_module_bytes // settings.layers)
    pass_seconds, pass_bytes = [], []
    for group in passes:
        part, seconds = _collect(model, group, batches)
        pass_seconds.append(seconds)
        pass_bytes.append(part.nbytes())
        del part

    init_s = None
    if not settings.skip_init:
        first_layer = [n for n in names if n.startswith("model.layers.0.")]
        stats = {n: {"input_cov": covariances[n]} for n in first_layer}
        start = time.perf_counter()
        initial_adapters(model, LoRASettings(), first_layer, inits.get(settings.init), {},
                         stats, torch.Generator().manual_seed(0))  # fmt: skip
        init_s = time.perf_counter() - start
    return {
        "settings": vars(settings) | {"threads": torch.get_num_threads()},
        "calibration_tokens": settings.sequences * settings.tokens,
        "bytes_per_layer": layer_bytes,
        "bytes_per_layer_one_per_module": per_module_bytes // settings.layers,
        "one_pass": {"seconds": one_pass_s, "bytes": one_pass_bytes},
        "budget_one_layer": {"passes": len(passes), "seconds": pass_seconds, "bytes": pass_bytes},
        "init_one_layer_s": init_s,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def table(result: dict[str, Any]) -> str:
    s = result["settings"]
    gb = 2**30
    per_layer_s = result["one_pass"]["seconds"] / s["layers"]
    scale = s["extrapolate"]
    lines = [
        f"LLaMA-7B-shaped ({s['hidden']}/{s['intermediate']}), {s['layers']} decoder layers, "
        f"{result['calibration_tokens']} calibration tokens, {s['threads']} threads",
        "| | per layer | x " + str(scale) + " layers |",
        "|---|---:|---:|",
        f"| covariances held, one per distinct input | {result['bytes_per_layer'] / gb:.2f} GB | "
        f"{result['bytes_per_layer'] * scale / gb:.1f} GB |",
        f"| one per adapted module (for comparison) | "
        f"{result['bytes_per_layer_one_per_module'] / gb:.2f} GB | "
        f"{result['bytes_per_layer_one_per_module'] * scale / gb:.1f} GB |",
        f"| collection time, one pass | {per_layer_s:.1f} s | {per_layer_s * scale:.0f} s |",
    ]
    if result["init_one_layer_s"] is not None:
        init_s = result["init_one_layer_s"]
        lines.append(
            f"| init ({s['init']}), 7 projections | {init_s:.1f} s | {init_s * scale:.0f} s |"
        )
    budget = result["budget_one_layer"]
    lines += [
        "",
        f"--calib-max-memory of one layer's worth: {budget['passes']} passes, at most "
        f"{max(budget['bytes']) / gb:.2f} GB held (one pass: {result['one_pass']['bytes'] / gb:.2f}"
        f" GB), {sum(budget['seconds']):.1f} s in all (one pass: "
        f"{result['one_pass']['seconds']:.1f} s)",
        f"peak process memory: {result['peak_rss_bytes'] / gb:.1f} GB",
    ]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = benchmark_parser("calibration_memory", __doc__)
    defaults = Settings()
    for name in ("layers", "hidden", "intermediate", "heads", "sequences", "tokens", "extrapolate"):
        parser.add_argument(f"--{name}", type=int, default=getattr(defaults, name))
    parser.add_argument("--init", default=defaults.init, help="the init timed on one layer")
    parser.add_argument("--skip-init", action="store_true", help="time the calibration only")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    with torch.no_grad():  # a context, not a global switch: tests run benchmarks in one process
        return run_benchmark(argv, _parser(), Settings, measure, table)


if __name__ == "__main__":
    entry_point(main)
