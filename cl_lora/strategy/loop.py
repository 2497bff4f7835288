"""The continual-learning loop: train each task, evaluate every task, fill the matrix ``R``."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cl_lora.strategy.experiences import to_benchmark
from cl_lora.strategy.retention import RetentionProbe
from cl_lora.strategy.template import LoRAStrategy


@dataclass
class StreamOutcome:
    """Everything the loop measured; ``matrix[i, j]`` is task j's score after training task i.

    ``retention`` is the knowledge probe's score before the first task and after each task.
    """

    matrix: np.ndarray
    before: list[float | None]
    scores: list[list[dict[str, float] | None]]
    timings: dict[str, list[float]] = field(default_factory=dict)
    trainable_params: list[int] = field(default_factory=list)
    retention: list[float] = field(default_factory=list)


def save_checkpoint(path: Path, strategy: LoRAStrategy, outcome: StreamOutcome, task: int) -> None:
    """Model (with its adapter) and the rows of ``R`` so far, replaced atomically."""
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "finished_task": task,
            "model": strategy.model.state_dict(),
            "matrix": outcome.matrix[: task + 1].tolist(),
        },
        tmp,
    )
    os.replace(tmp, path)


def _evaluate(strategy: LoRAStrategy, test_stream) -> dict[int, dict]:
    """Scores of every task that has a head (per-task heads exist only once trained)."""
    ready = [exp for exp in test_stream if strategy.model.has_head(exp.current_experience)]
    strategy.eval(ready)
    return strategy.scorer.scores


def run_stream(
    strategy: LoRAStrategy,
    checkpoint: Path | None = None,
    on_task_end: Callable[[int, StreamOutcome], None] | None = None,
    probe: RetentionProbe | None = None,
) -> StreamOutcome:
    """Train the stream's tasks in order and evaluate all of them after each one.

    ``b`` (scores before any training) is defined only with a shared head: per-task heads do
    not exist before their task, so there is nothing to score. ``probe`` (optional) is scored
    before the first task and after each task (``outcome.retention``).
    """
    stream = strategy.stream
    count = len(stream.tasks)
    benchmark = to_benchmark(stream)
    outcome = StreamOutcome(
        matrix=np.full((count, count), np.nan),
        before=[None] * count,
        scores=[[None] * count for _ in range(count)],
        timings={"train_s": [], "eval_s": [], "init_s": []},
    )
    if probe is not None:
        outcome.retention.append(probe.start(strategy.model))
    if stream.shared_head:
        strategy.model.add_head(0, stream.tasks[0].num_labels)
        for j, score in _evaluate(strategy, benchmark.test_stream).items():
            outcome.before[j] = score["score"]

    for i, experience in enumerate(benchmark.train_stream):
        start = time.perf_counter()
        strategy.train(experience)
        outcome.timings["train_s"].append(time.perf_counter() - start)
        outcome.timings["init_s"].append(strategy.init_seconds[i])
        outcome.trainable_params.append(strategy.trainable_params[i])

        start = time.perf_counter()
        for j, score in _evaluate(strategy, benchmark.test_stream).items():
            outcome.matrix[i, j] = score["score"]
            outcome.scores[i][j] = score
        if probe is not None:
            outcome.retention.append(probe.score(strategy.model))
        outcome.timings["eval_s"].append(time.perf_counter() - start)
        if checkpoint is not None:
            save_checkpoint(checkpoint, strategy, outcome, i)
        if on_task_end is not None:
            on_task_end(i, outcome)
    return outcome
