"""Training throughput of the cl-lora strategy loop against a bare PyTorch+PEFT loop, in one run.

Both sides train the same LoRA -- same backbone weights, same head init, same ``lora`` init with
the same rank, alpha and target layers, same AdamW parameter groups and warm-up/decay schedule --
on the same examples of one task, in the same batch order, batched by the same collate function
inside a ``DataLoader``. What differs is only the loop around forward/backward/step: Avalanche's
template with cl-lora's hooks on one side, the dozen lines a researcher writes with PyTorch and
PEFT on the other. Target: the strategy within 5% of the bare loop (ratio >= 0.95).

Two models (``--model``): ``minilm`` (all-MiniLM-L6-v2 with a task head on ``offline-text``;
the bare loss is cross-entropy on the head's logits) and ``smollm2`` (SmolLM2-135M on
``offline-instruct``, text-to-text; the bare loss is transformers' own ``labels=`` loss, the
prompt masked). Both report examples/s and tokens/s (real tokens, padding excluded), and the
cost of evaluating the trained task once (for the language model: batched greedy generation).

Timed, per pass: for the bare loop, building its DataLoader, optimizer and schedule and running
every batch; for the strategy, ``strategy.train(experience)`` minus the per-task init it records
itself (``init_seconds``: merge, new head, LoRA attach), which is reported separately, next to the
bare loop's ``attach_lora`` time. Not timed: loading the backbone and the data, copying the
model, constructing the strategy. One untimed warm-up pass of a few batches runs on each side
first; then the sides alternate (strategy, bare, strategy, bare, ...) for ``--repeats`` rounds,
so drift in machine load hits both, and the medians of examples/s are compared.

    python -m benchmarks.throughput [--model minilm|smollm2] [--examples 256]
        [--batch-size 16] [--repeats 3] [--device auto] [--precision fp32] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gc
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin
from torch.utils.data import DataLoader

from benchmarks._common import benchmark_parser, entry_point, run_benchmark
from cl_lora import inits, streams
from cl_lora.backbones import FAMILIES, Backbone, LoadOptions
from cl_lora.cli import require_at_least_one
from cl_lora.config import RunConfig, resolve_device
from cl_lora.errors import BadInputError
from cl_lora.experiment import resolve_config
from cl_lora.lora import LoRASettings, attach_lora
from cl_lora.method import resolve
from cl_lora.problems import Problem, build_problem
from cl_lora.strategy import LoRAStrategy
from cl_lora.strategy.experiences import TaskExamples, to_benchmark
from cl_lora.strategy.optim import TrainingRecipe, task_optimizer

INIT = "lora"
RECIPE = RunConfig()  # lr, head lr, schedule, rank, alpha: the default run's recipe
TARGET_RATIO = 0.95


@dataclass(frozen=True)
class Model:
    """One benchmarked model: its stream, its backbone (family and name), and the loss of the
    bare loop -- what a researcher writes for that kind of model."""

    stream: str
    family: str
    backbone: str
    bare_loss: Callable[[torch.nn.Module, dict, torch.Tensor, int], torch.Tensor]


MODELS = {
    "minilm": Model(
        "offline-text",
        "text-encoder",
        "all-minilm-l6-v2",
        lambda model, inputs, labels, task: F.cross_entropy(model(inputs, task).float(), labels),
    ),
    "smollm2": Model(
        "offline-instruct",
        "causal-lm",
        "smollm2-135m",
        lambda model, inputs, labels, task: model.encoder(**inputs, labels=labels).loss,
    ),
}


def default_max_length(model: Model) -> int:
    """The token budget a default run on ``model``'s stream resolves to."""
    return resolve_config(RunConfig(stream=model.stream)).max_length


@dataclass(frozen=True)
class Settings:
    """What one benchmark run measures; the training recipe is the default run's."""

    model: str = "minilm"
    examples: int = 512
    batch_size: int = 16
    repeats: int = 5
    warmup_batches: int = 2
    task_index: int = 0
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        require_at_least_one(self, ("examples", "batch_size", "repeats"))
        if self.warmup_batches < 0 or self.task_index < 0:
            raise BadInputError("--warmup-batches and --task-index must not be negative")
        if self.precision not in ("fp32", "bf16"):
            raise BadInputError(f"unknown --precision '{self.precision}': use fp32 or bf16")
        if self.model not in MODELS:
            raise BadInputError(f"unknown --model '{self.model}': use {' or '.join(MODELS)}")


@dataclass
class Pass:
    """One timed training pass of one side over the task's examples."""

    seconds: float  # training time (strategy: train() minus its per-task init)
    loop_seconds: float  # the batch loop alone (first batch fetched .. last step done)
    init_seconds: float  # per-task init: head + LoRA attach (+ merge, for the strategy)
    examples: int
    final_loss: float
    batches: list[tuple[tuple[int, ...], torch.Tensor]] = field(repr=False, default_factory=list)
    tokens: int = 0  # real (unpadded) tokens of every batch
    eval_seconds: float = float("nan")  # one evaluation of the task's test split (strategy)

    @property
    def examples_per_s(self) -> float:
        return self.examples / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


@dataclass
class Bench:
    """Everything both sides share, loaded once (untimed)."""

    settings: Settings
    device: torch.device
    stream: streams.Stream
    backbone: Backbone  # on ``device``; each pass trains a copy of its network
    lora: LoRASettings

    @property
    def model(self) -> Model:
        return MODELS[self.settings.model]

    @property
    def max_length(self) -> int:
        return default_max_length(self.model)

    def problem(self, stream: streams.Stream | None = None) -> Problem:
        """A problem over a fresh copy of the backbone's network (each pass trains its own)."""
        backbone = dataclasses.replace(self.backbone, encoder=copy.deepcopy(self.backbone.encoder))
        return build_problem(stream or self.stream, backbone, self.max_length)

    @property
    def task(self) -> streams.Task:
        return self.stream.tasks[self.settings.task_index]

    @property
    def generator_seed(self) -> int:
        """The seed of the strategy's data order and LoRA init for this task."""
        return self.settings.seed * 1000 + self.settings.task_index


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer stops after the work it times."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _tokens(inputs: dict[str, torch.Tensor]) -> int:
    """Real tokens of a batch (its attention mask's ones)."""
    return int(inputs["attention_mask"].sum())


def _fingerprint(inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> tuple:
    """What identifies a batch cheaply: its padded shape and its labels (kept on device)."""
    return tuple(inputs["input_ids"].shape), labels.detach()


def _with_train_subset(stream: streams.Stream, task_index: int, size: int) -> streams.Stream:
    """``stream`` with the given task's train split cut to its first ``size`` rows."""
    tasks = list(stream.tasks)
    task = tasks[task_index]
    tasks[task_index] = dataclasses.replace(task, train=task.train.select(range(size)))
    return dataclasses.replace(stream, tasks=tuple(tasks))


def prepare(settings: Settings) -> Bench:
    """Load the stream and the backbone once; fails with a one-line error on bad input."""
    device = resolve_device(settings.device)
    model = MODELS[settings.model]
    stream = streams.build(
        model.stream,
        streams.StreamOptions(max_train_per_task=settings.examples, max_test_per_task=16),
    )
    if settings.task_index >= len(stream.tasks):
        raise BadInputError(
            f"--task-index {settings.task_index} is out of range: {model.stream} has "
            f"{len(stream.tasks)} tasks (0..{len(stream.tasks) - 1})"
        )
    torch.manual_seed(settings.seed)
    options = LoadOptions(max_length=default_max_length(model))
    backbone = FAMILIES.get(model.family).load(model.backbone, options)
    backbone.encoder.to(device)
    lora = LoRASettings(rank=RECIPE.rank, alpha=RECIPE.alpha, rslora=RECIPE.rslora)
    return Bench(settings, device, stream, backbone, lora)


# -- the bare PyTorch + PEFT loop ------------------------------------------------------------------
def bare_pass(bench: Bench, rows: Any) -> Pass:
    """Train a fresh copy of the model on ``rows`` the way a researcher would, without a framework.

    Same data order as the strategy (a ``DataLoader`` shuffling with the same seeded generator),
    same collate, same LoRA init, same optimizer groups and schedule.
    """
    settings, device, task_id = bench.settings, bench.device, bench.settings.task_index
    problem = bench.problem()
    model = problem.build_model().to(device)
    torch.manual_seed(settings.seed)  # the head's init, as on the strategy side
    gc.collect()
    _sync(device)
    start = time.perf_counter()
    model.add_head(task_id, bench.task.num_labels)
    attach_lora(
        model,
        bench.lora,
        bench.backbone.target_modules,
        inits.get(INIT),
        {},
        stats={},
        generator=torch.Generator().manual_seed(bench.generator_seed),
    )
    _sync(device)
    init_seconds = time.perf_counter() - start

    start = time.perf_counter()
    loader = DataLoader(
        TaskExamples(rows),
        batch_size=settings.batch_size,
        shuffle=True,
        collate_fn=lambda items: problem.collate(*zip(*items, strict=True), training=True),
        generator=torch.Generator().manual_seed(bench.generator_seed),
        pin_memory=device.type == "cuda",
    )
    head = model.head_of(task_id)
    optimizer = task_optimizer(model.encoder, head, RECIPE.lr, RECIPE.head_lr, RECIPE.weight_decay)
    scheduler = TrainingRecipe(
        RECIPE.lr, RECIPE.head_lr, warmup_ratio=RECIPE.warmup_ratio
    ).schedule(optimizer, len(loader))
    batches, tokens = [], 0
    model.train()
    loop_start = time.perf_counter()
    for inputs, labels in loader:
        inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
        labels = labels.to(device, non_blocking=True)
        batches.append(_fingerprint(inputs, labels))
        tokens += _tokens(inputs)
        optimizer.zero_grad()
        with _autocast(device, settings.precision):
            loss = bench.model.bare_loss(model, inputs, labels, task_id)
        loss.backward()
        optimizer.step()
        scheduler.step()
    _sync(device)
    end = time.perf_counter()
    return Pass(
        seconds=end - start,
        loop_seconds=end - loop_start,
        init_seconds=init_seconds,
        examples=len(rows),
        final_loss=loss.item(),
        batches=batches,
        tokens=tokens,
    )


# -- the cl-lora strategy --------------------------------------------------------------------------
class _Probe(SupervisedPlugin):
    """Times the strategy's batch loop and records which batches it saw (one list append each)."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[tuple] = []
        self.tokens = 0
        self.loop_seconds = 0.0
        self.last_loss = torch.tensor(float("nan"))
        self._start = 0.0

    def before_training_epoch(self, strategy: LoRAStrategy, **kwargs: Any) -> None:
        self._start = time.perf_counter()

    def after_training_iteration(self, strategy: LoRAStrategy, **kwargs: Any) -> None:
        self.batches.append(_fingerprint(strategy.mb_x, strategy.mb_y))
        self.tokens += _tokens(strategy.mb_x)
        self.last_loss = strategy.loss.detach()  # Avalanche resets strategy.loss after training

    def after_training_epoch(self, strategy: LoRAStrategy, **kwargs: Any) -> None:
        _sync(strategy.device)
        self.loop_seconds += time.perf_counter() - self._start


def strategy_pass(bench: Bench, stream: streams.Stream, evaluate: bool = False) -> Pass:
    """Train a fresh copy of the model with ``LoRAStrategy`` on ``stream``'s task, one epoch
    (then, with ``evaluate``, time one evaluation of the task's test split)."""
    settings, task_id = bench.settings, bench.settings.task_index
    probe = _Probe()
    with warnings.catch_warnings():  # "No loggers specified": on purpose, see below
        warnings.simplefilter("ignore", UserWarning)
        evaluator = EvaluationPlugin(loggers=[])  # no progress bar: a UI cost, not the loop's
    problem = bench.problem(stream)
    config = dataclasses.replace(
        RECIPE,
        seed=settings.seed,
        precision=settings.precision,
        batch_size=settings.batch_size,
        eval_batch_size=settings.batch_size,
        epochs=1,
    )
    strategy = resolve(config).build_strategy(
        problem, stream, bench.device, plugins=[probe], evaluator=evaluator
    )
    experience = to_benchmark(stream).train_stream[task_id]
    torch.manual_seed(settings.seed)  # the head's init, as on the bare side
    gc.collect()
    _sync(bench.device)
    start = time.perf_counter()
    strategy.train(experience)
    _sync(bench.device)
    elapsed = time.perf_counter() - start
    init_seconds = strategy.init_seconds[task_id]
    eval_seconds = float("nan")
    if evaluate:
        start = time.perf_counter()
        strategy.eval([to_benchmark(stream).test_stream[task_id]])
        _sync(bench.device)
        eval_seconds = time.perf_counter() - start
    return Pass(
        seconds=elapsed - init_seconds,
        loop_seconds=probe.loop_seconds,
        init_seconds=init_seconds,
        examples=len(stream.tasks[task_id].train),
        final_loss=probe.last_loss.item(),
        batches=probe.batches,
        tokens=probe.tokens,
        eval_seconds=eval_seconds,
    )


# -- the comparison --------------------------------------------------------------------------------
def _same_batches(a: Pass, b: Pass) -> bool:
    return len(a.batches) == len(b.batches) and all(
        shape_a == shape_b and torch.equal(labels_a, labels_b)
        for (shape_a, labels_a), (shape_b, labels_b) in zip(a.batches, b.batches, strict=True)
    )


def _side(passes: list[Pass]) -> dict[str, Any]:
    rates = [p.examples_per_s for p in passes]
    return {
        "examples_per_s": statistics.median(rates),
        "rounds_examples_per_s": rates,
        "tokens_per_s": statistics.median(p.tokens_per_s for p in passes),
        "seconds": [p.seconds for p in passes],
        "loop_examples_per_s": statistics.median(p.examples / p.loop_seconds for p in passes),
        "init_s": statistics.median(p.init_seconds for p in passes),
        "final_loss": passes[-1].final_loss,
    }


def measure(settings: Settings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Warm up both sides, then alternate timed passes; returns the numbers of :func:`main`."""
    bench = prepare(settings)
    rows = bench.task.train
    warm = min(len(rows), settings.warmup_batches * settings.batch_size)
    if warm:
        log(f"warm-up: {warm} examples per side (untimed)")
        strategy_pass(bench, _with_train_subset(bench.stream, settings.task_index, warm))
        bare_pass(bench, rows.select(range(warm)))

    passes: dict[str, list[Pass]] = {"strategy": [], "bare": []}
    for round_ in range(settings.repeats):
        last = round_ == settings.repeats - 1
        passes["strategy"].append(strategy_pass(bench, bench.stream, evaluate=last))
        passes["bare"].append(bare_pass(bench, rows))
        log(
            f"round {round_ + 1}/{settings.repeats}: "
            f"strategy {passes['strategy'][-1].examples_per_s:.1f} ex/s, "
            f"bare {passes['bare'][-1].examples_per_s:.1f} ex/s"
        )
    same = all(_same_batches(s, b) for s, b in zip(passes["strategy"], passes["bare"], strict=True))
    if not same:  # the comparison would be unfair: a bug here, not a slow loop
        raise RuntimeError("the strategy and the bare loop did not see the same batches")

    strategy, bare = _side(passes["strategy"]), _side(passes["bare"])
    return {
        "model": settings.model,
        "stream": bench.model.stream,
        "task_index": settings.task_index,
        "task": bench.task.name,
        "eval_examples": len(bench.task.test),
        "eval_s": passes["strategy"][-1].eval_seconds,
        "examples": len(rows),
        "batch_size": settings.batch_size,
        "batches": len(passes["bare"][0].batches),
        "repeats": settings.repeats,
        "warmup_examples": warm,
        "device": str(bench.device),
        "precision": settings.precision,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "same_batches": same,
        "strategy": strategy,
        "bare": bare,
        "ratio": strategy["examples_per_s"] / bare["examples_per_s"],
        "loop_ratio": strategy["loop_examples_per_s"] / bare["loop_examples_per_s"],
        "round_ratios": [  # paired: each strategy pass against the bare pass right after it
            s / b
            for s, b in zip(
                strategy["rounds_examples_per_s"], bare["rounds_examples_per_s"], strict=True
            )
        ],
        "target_ratio": TARGET_RATIO,
    }


def report(result: dict[str, Any]) -> str:
    """The human-readable table of a :func:`measure` result."""
    lines = [
        f"{result['stream']} task {result['task_index']} ({result['task']}): "
        f"{result['examples']} examples, batch {result['batch_size']} ({result['batches']} "
        f"steps), {result['device']} {result['precision']}, {result['torch_threads']} threads, "
        f"median of {result['repeats']}",
        f"{'side':<10}{'ex/s':>9}{'tokens/s':>10}{'loop ex/s':>11}{'init s':>9}   rounds ex/s",
    ]
    for name in ("strategy", "bare"):
        side = result[name]
        rounds = " ".join(f"{r:.1f}" for r in side["rounds_examples_per_s"])
        lines.append(
            f"{name:<10}{side['examples_per_s']:>9.1f}{side['tokens_per_s']:>10.1f}"
            f"{side['loop_examples_per_s']:>11.1f}{side['init_s']:>9.3f}   {rounds}"
        )
    lines.append(
        f"last-batch loss: strategy {result['strategy']['final_loss']:.6f}, "
        f"bare {result['bare']['final_loss']:.6f} (same batches: {result['same_batches']})"
    )
    verdict = "within" if result["ratio"] >= result["target_ratio"] else "OUTSIDE"
    lines.append(
        f"ratio strategy/bare = {result['ratio']:.2f}x (batch loop alone: "
        f"{result['loop_ratio']:.2f}x); target >= {result['target_ratio']:.2f}x: {verdict}"
    )
    lines.append("per round: " + " ".join(f"{r:.2f}x" for r in result["round_ratios"]))
    lines.append(
        f"evaluation of the task's {result['eval_examples']} test examples: "
        f"{result['eval_s']:.2f} s ({result['eval_examples'] / result['eval_s']:.1f} ex/s)"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    defaults = Settings()
    p = benchmark_parser("throughput", __doc__)
    p.add_argument("--model", default=defaults.model, choices=sorted(MODELS))
    p.add_argument("--examples", type=int, default=defaults.examples, help="train examples")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--repeats", type=int, default=defaults.repeats, help="timed rounds per side")
    p.add_argument(
        "--warmup-batches",
        type=int,
        default=defaults.warmup_batches,
        help="batches of the untimed warm-up pass on each side",
    )
    p.add_argument("--task-index", type=int, default=defaults.task_index)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--device", default=defaults.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", default=defaults.precision, choices=("fp32", "bf16"))
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, measure, print the table, optionally write JSON; return the numbers."""
    return run_benchmark(argv, build_parser(), Settings, measure, report)


if __name__ == "__main__":
    entry_point(main)
