"""The continual-learning loop: train each task, evaluate the tasks whose scores a metric reads,
fill the matrix ``R``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from cl_lora import distributed
from cl_lora.errors import RunFailure
from cl_lora.probes import Probe
from cl_lora.strategy.calibrate import CalibrationOutOfMemory
from cl_lora.strategy.checkpoint import load_checkpoint, save_checkpoint
from cl_lora.strategy.experiences import to_benchmark
from cl_lora.strategy.outcome import StreamOutcome
from cl_lora.strategy.retention import RetentionProbe
from cl_lora.strategy.template import LoRAStrategy

log = logging.getLogger("cl_lora")


@contextmanager
def _failures_named(
    strategy: LoRAStrategy, task: int, phase: str, checkpoint: Path | None
) -> Iterator[None]:
    """A run failure or an out-of-memory error while ``phase`` task ``task`` becomes one
    line naming the task, what would fit (for memory), and the checkpoint of the tasks before."""
    kept = f"; the tasks before it are checkpointed in {checkpoint}" if checkpoint else ""
    try:
        yield
    except RunFailure as failure:  # its own kind kept (a diverged loss stays LossNotFinite)
        raise type(failure)(f"{failure}{kept}") from None
    except CalibrationOutOfMemory as error:
        raise RunFailure(
            _out_of_memory(strategy, task, "calibrating for", error.fixes) + kept
        ) from None
    except torch.OutOfMemoryError:
        raise RunFailure(_out_of_memory(strategy, task, phase) + kept) from None


def _out_of_memory(
    strategy: LoRAStrategy, task: int, phase: str, first: list[str] | None = None
) -> str:
    """What ran out, where, and the settings that need less memory (``first``: the phase's
    own, e.g. calibration's batch size and budget, instead of the training batch size)."""
    name = strategy.stream.tasks[task].name
    batch = strategy.train_mb_size if phase == "training" else strategy.eval_mb_size
    option = "--batch-size" if phase == "training" else "--eval-batch-size"
    tokens = getattr(strategy.problem, "max_length", None)
    fixes = [*(first or [f"{option} {max(1, batch // 2)}"])]
    fixes += ["--gradient-checkpointing", "--precision bf16"]
    if tokens:
        fixes.append(f"--max-length {max(1, tokens // 2)}")
    return (
        f"out of {strategy.device.type.upper()} memory while {phase} task {task + 1}/"
        f"{len(strategy.stream.tasks)} ({name})"
        + ("" if first else f" at batch size {batch}")
        + (f", {tokens} tokens" if tokens else "")
        + f": rerun with {', '.join(fixes)}"
    )


def _checkpointed(
    path: Path,
    strategy: LoRAStrategy,
    outcome: StreamOutcome,
    task: int,
    probe: RetentionProbe | Probe | None,
) -> Path | None:
    """Write the checkpoint after ``task`` (one process writes it); ``None`` (no more
    checkpoints) when some state cannot be stored: the run goes on, it just cannot be resumed."""
    if not distributed.current().main:
        return path
    try:
        outcome.checkpoint_bytes.append(save_checkpoint(path, strategy, outcome, task, probe))
    except TypeError as error:
        log.warning("no checkpoints for this run (it cannot be resumed): %s", error)
        return None
    return path


def _evaluate(strategy: LoRAStrategy, test_stream, upto: int) -> dict[int, dict]:
    """Scores of the tasks ``0 .. upto`` that have a head (per-task heads exist only once
    trained). After task ``i`` the loop asks for ``upto = i + 1``: the tasks trained so far,
    whose scores can have changed, and the next one, the cell FWT reads; later tasks' scores
    are read by no metric, so they are not computed."""
    ready = [
        exp
        for exp in test_stream
        if exp.current_experience <= upto and strategy.model.has_head(exp.current_experience)
    ]
    strategy.eval(ready)
    return strategy.scorer.scores


def run_stream(
    strategy: LoRAStrategy,
    checkpoint: Path | None = None,
    on_task_end: Callable[[int, StreamOutcome], None] | None = None,
    resume: bool = False,
    probe: RetentionProbe | Probe | None = None,
    save_task: Callable[[int], object] | None = None,
) -> StreamOutcome:
    """Train the stream's tasks in order and evaluate, after each one, the tasks trained so far
    and the next one (see :func:`_evaluate`).

    With ``checkpoint``, the state after every task is saved there; with ``resume`` too and a
    checkpoint present, training continues after its last finished task. ``b`` (scores before
    any training) is defined only with a shared head: per-task heads do not exist before their
    task, so there is nothing to score. ``probe`` (optional) is scored before the first task
    and after each task (``outcome.retention``). ``save_task(i)`` (optional) writes what a run
    keeps of task ``i``'s model (its adapters) before the checkpoint, so that a checkpointed task
    has always been saved.
    """
    stream = strategy.stream
    benchmark = to_benchmark(stream)
    first = 0
    if resume and checkpoint is not None and checkpoint.exists():
        outcome, finished = load_checkpoint(checkpoint, strategy, benchmark.train_stream, probe)
        outcome.resumed_after = finished
        first = finished + 1
        log.info("resuming after task %d of %d from %s", first, len(stream.tasks), checkpoint)
    else:
        outcome = StreamOutcome.empty(len(stream.tasks))
        if probe is not None:  # on the run's device, as every later score
            outcome.retention.append(probe.start(strategy.model.to(strategy.device)))
        if stream.shared_head:
            strategy.model.add_head(0, stream.tasks[0].num_labels)
            for j, score in _evaluate(strategy, benchmark.test_stream, len(stream.tasks)).items():
                outcome.before[j] = score["score"]

    for i, experience in enumerate(benchmark.train_stream):
        if i < first:
            continue
        kept = checkpoint if checkpoint is not None and i > 0 else None
        start = time.perf_counter()
        with _failures_named(strategy, i, "training", kept):
            strategy.train(experience)
        outcome.timings["train_s"].append(time.perf_counter() - start)
        outcome.timings["init_s"].append(strategy.init_seconds[i])
        outcome.trainable_params.append(strategy.trainable_params[i])

        start = time.perf_counter()
        with _failures_named(strategy, i, "evaluating after", kept):
            for j, score in _evaluate(strategy, benchmark.test_stream, i + 1).items():
                outcome.matrix[i, j] = score["score"]
                outcome.scores[i][j] = score
            if probe is not None:
                outcome.retention.append(probe.score(strategy.model))
        outcome.timings["eval_s"].append(time.perf_counter() - start)
        if save_task is not None and distributed.current().main:
            save_task(i)
        if checkpoint is not None:
            checkpoint = _checkpointed(checkpoint, strategy, outcome, i, probe)
        if on_task_end is not None:
            on_task_end(i, outcome)
    return outcome
