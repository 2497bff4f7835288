"""Memory of each component of a LLaMA-7B run per method: what the run itself holds, measured on
real-size decoder layers and extrapolated to 32.

A random ``LlamaForCausalLM`` with LLaMA-7B's layer shapes (hidden 4096, intermediate 11008, 32
heads; ``--layers`` decoder layers, default 2; SmolLM2's tokenizer and vocabulary) in bf16, as a
CUDA run loads it, runs on the CPU through the suite's own strategy (``Method.build_strategy``,
``run_stream``) a 2-task text-to-text stream of a few examples per task. What is counted is the
bytes of the tensors the run's objects hold, found by walking them (a tensor that shares storage
with the model's own weights is not counted again):

- ``adapter``: the live adapter and what the init holds next to it (this change: ``-s B0 A0`` as
  frozen factors instead of in the weight);
- ``calibration``: the statistics an init's calibration returns for all layers at once (its
  largest call);
- ``between tasks``: what the strategy carries from task to task outside the model -- the LoRA
  history, the plugins' state (EWC, LwF's teacher), a baseline's memory of earlier tasks
  (O-LoRA's ``A``) -- after the second task;
- ``per step``: what a plugin's loss term saves for the backward pass (EWC's penalty) beyond
  the weights and the state counted above, the most over the training steps;
- ``checkpoint``: the file after the second task;
- ``activations`` (apart from the methods): what autograd saves for the backward pass of one
  training forward of one ``--tokens``-token example through the LoRA-adapted model (rank 8 on
  every projection, the model's own attention implementation), measured with 1 and with 2
  decoder layers: the difference is one layer's share, the rest is the embedding,
  final norm, LM head and loss. Activations grow linearly with the micro-batch.

Each is per decoder layer (the count over ``--layers`` layers divided by it; the run's
checkpoint and history also hold nothing outside the layers for these methods) and times
``--extrapolate`` (32). Run it from a checkout of the code to measure; docs/scale.md's table puts
the numbers of this code next to those of the code before issue 24, run the same way.

    python -m benchmarks.memory [--layers 2] [--methods lora olora ...] [--json OUT]
        [--tokens 562 --micro-batch 8]
        [--hidden 4096 --intermediate 11008 --heads 32]  (other shapes: the tests' tiny one)
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from inspect import isroutine
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import benchmark_parser, entry_point, run_benchmark
from benchmarks.calibration_memory import LLAMA_7B

#: ``name: (init, baseline, plugin)`` -- what each measured method runs.
METHODS: dict[str, tuple[str, str | None, str | None]] = {
    "lora": ("lora", None, None),
    "olora": ("olora", None, None),  # a residual init: W - s B0 A0
    "lora-null": ("lora-null", None, None),  # input covariances
    "lora-ga": ("lora-ga", None, None),  # mean gradients
    "lora-init": ("lora-init", None, None),  # a warm-up's update
    "ewc": ("lora", None, "ewc"),
    "lwf": ("lora", None, "lwf"),
    "o-lora": ("lora", "o-lora", None),
}
#: Methods whose init decomposes full-size weights (minutes per layer on a CPU): only their
#: calibration is measured, not a run.
CALIBRATION_ONLY = ("lora-null", "lora-ga", "lora-init")


@dataclass(frozen=True)
class Settings:
    layers: int = 2
    hidden: int = LLAMA_7B["hidden_size"]
    intermediate: int = LLAMA_7B["intermediate_size"]
    heads: int = LLAMA_7B["num_attention_heads"]
    extrapolate: int = 32
    tokens: int = 562  # o-lora-llama's 512 prompt + 50 answer tokens
    micro_batch: int = 8  # o-lora-llama: 8 examples per micro-batch (8 accumulated)
    methods: tuple[str, ...] = field(default_factory=lambda: tuple(METHODS))


def llama_shaped(settings: Settings) -> Any:
    """The backbone: ``settings.layers`` decoder layers of the given shapes (LLaMA-7B's by
    default) in bf16, with SmolLM2's tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from cl_lora.backbones.causal_lm import language_model_backbone, smollm2_dir

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir())
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        num_hidden_layers=settings.layers,
        hidden_size=settings.hidden,
        intermediate_size=settings.intermediate,
        num_attention_heads=settings.heads,
        num_key_value_heads=settings.heads,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    return language_model_backbone(model, tokenizer, {"name": "llama-7b-shaped"})


def toy_stream() -> Any:
    """Two text-to-text tasks of 4 training and 2 test rows: whether a cue word occurs."""
    import pandas as pd

    from cl_lora.streams import Stream, Task
    from cl_lora.streams.base import to_dataset

    tasks = []
    for cue in ("good", "spam"):
        rows = [
            {
                "prompt": f"Does the text mention {cue}? Choose one of: no, yes\nText: "
                + (f"{cue} item {i}" if i % 2 else f"plain item {i}")
                + "\nAnswer:",
                "target": ("no", "yes")[i % 2],
                "label": i % 2,
            }
            for i in range(6)
        ]
        frame = pd.DataFrame(rows)
        train, test = to_dataset(frame[:4], ("no", "yes")), to_dataset(frame[4:], ("no", "yes"))
        tasks.append(Task(f"has-{cue}", train, test, ("no", "yes"), "exact_match"))
    return Stream("memory-toy", tuple(tasks), "task", "text", False, problem="text-to-text")


def strategy_for(method: str, settings: Settings, plugins: list[Any]) -> Any:
    """The suite's strategy for ``method`` on the LLaMA-7B-shaped model (CPU, bf16 autocast,
    rank 8, batch 2, 4 calibration examples, 2 warm-up steps)."""
    from cl_lora.config import RunConfig
    from cl_lora.method import resolve
    from cl_lora.problems import build_problem

    init, baseline, _ = METHODS[method]
    stream = toy_stream()
    config = RunConfig(
        init=init,
        init_args={"warmup_steps": 2} if init == "lora-init" else {},
        baseline=baseline,
        batch_size=2,
        eval_batch_size=2,
        epochs=1,
        calib_size=4,
        precision="bf16",
    )
    problem = build_problem(stream, llama_shaped(settings), max_length=96)
    return resolve(config).build_strategy(problem, stream, "cpu", plugins=plugins)


def tensors_in(value: Any, seen: set[int] | None = None) -> Iterator[torch.Tensor]:
    """Every tensor reachable from ``value`` through containers, modules and plain objects'
    attributes (each object once)."""
    seen = set() if seen is None else seen
    if id(value) in seen or isinstance(value, str | bytes | int | float | bool | type(None)):
        return
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        yield value
        return
    if isinstance(value, torch.nn.Module):
        yield from value.parameters()
        yield from value.buffers()
        for item in vars(value).values():
            if not isinstance(item, dict | torch.nn.Module):  # the module tables: walked above
                yield from tensors_in(item, seen)
        return
    if isinstance(value, dict):
        items = [*value.keys(), *value.values()]
    elif isinstance(value, list | tuple | set | frozenset):
        items = list(value)
    elif hasattr(value, "__dict__") and not isinstance(value, type) and not isroutine(value):
        items = list(vars(value).values())  # objects (a callable one too: Avalanche's LwF)
    else:
        return
    for item in items:
        yield from tensors_in(item, seen)


def storage_bytes(tensors: Iterator[torch.Tensor], exclude: set[int]) -> int:
    """Bytes of the distinct storages of ``tensors``, without those in ``exclude``."""
    counted: dict[int, int] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key and key not in exclude:
            counted[key] = storage.nbytes()
    return sum(counted.values())


def model_storages(model: torch.nn.Module) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}


@contextlib.contextmanager
def saved_for_backward(record: list[dict[int, int]]) -> Iterator[None]:
    """Append to ``record`` the storages (address: bytes) autograd saves for the backward pass
    inside the block."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield
    record.append(storages)


def _calibration_bytes(strategy: Any) -> int:
    """The statistics of all layers at once for the first task, as the calibration returns
    them (no init: the decompositions take minutes per full-size layer on a CPU)."""
    model = strategy.model
    generator = torch.Generator().manual_seed(0)
    stats = strategy.calibrator.collect(model, 0, generator)
    return storage_bytes(tensors_in(stats), model_storages(model))


def measure_method(method: str, settings: Settings) -> dict[str, Any]:
    """One method's components (bytes over ``settings.layers`` decoder layers)."""
    from cl_lora.lora import lora_layers
    from cl_lora.plugins import PLUGINS
    from cl_lora.strategy import run_stream

    if method in CALIBRATION_ONLY:
        return {"calibration": _calibration_bytes(strategy_for(method, settings, []))}
    plugin_name = METHODS[method][2]
    plugins = [PLUGINS.get(plugin_name).build({})] if plugin_name else []
    strategy = strategy_for(method, settings, plugins)
    per_step: list[dict[int, int]] = []
    for plugin in plugins:
        before_backward = plugin.before_backward

        def traced(strategy: Any, before_backward: Any = before_backward, **kwargs: Any) -> None:
            with saved_for_backward(per_step):
                before_backward(strategy, **kwargs)

        plugin.before_backward = traced
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "checkpoint.safetensors"
        outcome = run_stream(strategy, checkpoint=checkpoint)
    model = strategy.model
    weights = model_storages(model)
    adapter = [t for layer in lora_layers(model.encoder).values() for t in tensors_in(layer, set())]
    carried = [strategy.history, *strategy.plugins[1:]]
    carried += [getattr(strategy, name) for name in strategy.checkpointed]
    base = {
        t.untyped_storage().data_ptr()
        for layer in lora_layers(model.encoder).values()
        for t in [layer.get_base_layer().weight]
    }
    held = weights | {t.untyped_storage().data_ptr() for t in tensors_in(carried)}
    return {
        "adapter": storage_bytes(iter(adapter), base),
        "between_tasks": storage_bytes(tensors_in(carried), weights),
        "per_step": max(  # new memory only: not the weights or the state kept anyway
            (sum(n for key, n in step.items() if key not in held) for step in per_step),
            default=0,
        ),
        "checkpoint": outcome.checkpoint_bytes[-1],
    }


def activation_bytes(settings: Settings, layers: int) -> int:
    """Bytes saved for the backward pass by one training forward (causal-LM loss over every
    token) of one ``settings.tokens``-token example through ``layers`` LLaMA-shaped decoder
    layers with a rank-8 LoRA on every projection; the weights themselves are not counted."""
    from dataclasses import replace

    from peft import LoraConfig, get_peft_model

    backbone = llama_shaped(replace(settings, layers=layers))
    model = get_peft_model(
        backbone.encoder, LoraConfig(r=8, lora_alpha=16, target_modules=backbone.target_modules)
    ).train()
    tokens = torch.randint(len(backbone.tokenizer), (1, settings.tokens))
    record: list[dict[int, int]] = []
    with torch.enable_grad(), saved_for_backward(record):
        model(input_ids=tokens, labels=tokens)
    weights = model_storages(model)
    return sum(n for key, n in record[0].items() if key not in weights)


def measure(settings: Settings) -> dict[str, Any]:
    from cl_lora.errors import BadInputError

    unknown = [m for m in settings.methods if m not in METHODS]
    if unknown:
        raise BadInputError(
            f"unknown method {', '.join(unknown)}: choose from {', '.join(METHODS)}"
        )
    torch.set_grad_enabled(True)
    methods = {m: measure_method(m, settings) for m in settings.methods}
    one, two = (activation_bytes(settings, n) for n in (1, 2))
    activations = {"per_layer": two - one, "rest": 2 * one - two}
    return {
        "settings": vars(settings) | {"threads": torch.get_num_threads()},
        "methods": methods,
        "activations_per_example": activations,
    }


COLUMNS = ("adapter", "calibration", "between_tasks", "per_step", "checkpoint")


def table(result: dict[str, Any]) -> str:
    s = result["settings"]
    gb = 2**30
    scale = s["extrapolate"] / s["layers"]
    lines = [
        f"{s['layers']} decoder layers of {s['hidden']}/{s['intermediate']} in bf16 on the CPU, "
        f"extrapolated to {s['extrapolate']} layers (GiB; - = not measured for this method)",
        "| method | " + " | ".join(c.replace("_", " ") for c in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for method, numbers in result["methods"].items():
        cells = [f"{numbers[c] * scale / gb:.2f}" if c in numbers else "-" for c in COLUMNS]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", activation_report(result)])


def activation_report(result: dict[str, Any]) -> str:
    """Activations at the micro-batch, without and with activation checkpointing (then each
    layer keeps only its input, ``tokens x hidden`` in bf16, and one layer at a time is
    recomputed in the backward pass)."""
    s, numbers = result["settings"], result["activations_per_example"]
    gb, batch = 2**30, s["micro_batch"]
    per_layer, rest = numbers["per_layer"] * batch, numbers["rest"] * batch
    boundary = 2 * s["tokens"] * s["hidden"] * batch
    full = s["extrapolate"] * per_layer + rest
    checkpointed = s["extrapolate"] * boundary + per_layer + rest
    return (
        f"activations, micro-batch {batch} x {s['tokens']} tokens: {per_layer / gb:.2f} GiB per "
        f"layer + {rest / gb:.2f} GiB embedding/head/loss = {full / gb:.1f} GiB for "
        f"{s['extrapolate']} layers; with --gradient-checkpointing {checkpointed / gb:.1f} GiB"
    )


def _parser() -> argparse.ArgumentParser:
    parser = benchmark_parser("memory", __doc__)
    defaults = Settings()
    names = ("layers", "hidden", "intermediate", "heads", "extrapolate", "tokens", "micro_batch")
    for name in names:
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, dest=name, type=int, default=getattr(defaults, name))
    parser.add_argument("--methods", nargs="+", default=list(defaults.methods))
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_benchmark(argv, _parser(), Settings, measure, table)


if __name__ == "__main__":
    entry_point(main)
