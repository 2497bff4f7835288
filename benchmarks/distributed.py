"""Training throughput of one run on 1 process against the same run on N processes
(``torch.distributed.run``), data parallel and with the backbone's weights sharded (FSDP2), on
the same machine, and the share of the multi-process run's time spent in the suite's own
exchanges (gradient sums, gathered predictions, broadcasts, waiting for the slowest process;
FSDP2's weight gathers happen inside the forward and backward and count as training time).

Each side runs ``python -m cl_lora.run`` with the same arguments; one process gets all the
machine's threads (``--threads``), N processes split them. Tokens per second count the training
rows' tokens (prompt and answer, as the problem collates them) times epochs over the summed
``train_s`` of result.json (which includes each task's init). On a CPU the processes share the
cores the single process already used, so the ratio shows the overhead of the split more than a
speed-up; on GPUs each process brings its own device.

    python -m benchmarks.distributed [--processes 2] [--max-train-per-task 64] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._common import alternating_calls, entry_point, run_benchmark, settings_parser
from cl_lora.errors import BadInputError
from cl_lora.sharding import FSDP2_VARIABLES


@dataclass(frozen=True)
class Settings:
    processes: int = 2
    threads: int = 2  # of the one-process side; each of N processes gets threads // N
    stream: str = "offline-instruct"
    tasks: str = "movie-sentiment,sms-spam"
    init: str = "lora"
    backbone: str = ""  # empty: the stream's model
    max_train_per_task: int = 64
    max_test_per_task: int = 8
    batch_size: int = 8
    repeats: int = 1


def _arguments(settings: Settings, out: Path) -> list[str]:
    argv = [
        "--stream", settings.stream, "--tasks", settings.tasks, "--init", settings.init,
        "--max-train-per-task", str(settings.max_train_per_task),
        "--max-test-per-task", str(settings.max_test_per_task),
        "--batch-size", str(settings.batch_size), "--epochs", "1", "--quiet",
        "--output-dir", str(out),
    ]  # fmt: skip
    return argv + (["--backbone", settings.backbone] if settings.backbone else [])


#: the sides measured: label -> (processes, or 0 for --processes; environment variables)
SIDES = {
    "1": (1, {}),
    "N": (0, {}),
    "N fsdp2": (0, FSDP2_VARIABLES),
}


def _run(
    settings: Settings, processes: int, out: Path, variables: dict[str, str]
) -> dict[str, Any]:
    """One run on ``processes`` processes (with environment ``variables``); its result.json."""
    threads = max(1, settings.threads // processes)
    launch = (
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
        if processes > 1
        else [sys.executable]
    )
    done = subprocess.run(
        [*launch, "-m", "cl_lora.run", *_arguments(settings, out)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(threads), **variables},
    )
    if done.returncode != 0:
        raise BadInputError(f"the {processes}-process run failed: {done.stderr.strip()[-500:]}")
    (path,) = out.glob("*/result.json")
    return json.loads(path.read_text())


def training_tokens(settings: Settings) -> int:
    """Tokens of one epoch over the stream's training rows, as the problem collates them."""
    from cl_lora import streams
    from cl_lora.config import RunConfig
    from cl_lora.experiment import load_backbone, prepare_backbone, problem_for, resolve_config

    config = resolve_config(
        RunConfig(
            stream=settings.stream,
            tasks=tuple(settings.tasks.split(",")),
            max_train_per_task=settings.max_train_per_task,
            max_test_per_task=settings.max_test_per_task,
            backbone=settings.backbone or None,
        )
    )
    options = streams.StreamOptions(
        max_train_per_task=config.max_train_per_task,
        max_test_per_task=config.max_test_per_task,
        tasks=config.tasks,
    )
    stream = streams.build(config.stream, options)
    family, name = prepare_backbone(config, stream)
    import torch

    problem = problem_for(stream, load_backbone(family, name, config, torch.device("cpu")), config)
    tokens = 0
    for task in stream.tasks:
        rows = [dict(row) for row in task.train]
        labels = [row.get("label", 0) for row in rows]
        inputs, _ = problem.collate(rows, labels, training=True)
        tokens += int(inputs["attention_mask"].sum())
    return tokens


def measure(settings: Settings) -> dict[str, Any]:
    if settings.processes < 2:
        raise BadInputError("--processes must be at least 2 (the other side is one process)")
    tokens = training_tokens(settings)
    sides = {
        label.replace("N", str(settings.processes)): (n or settings.processes, variables)
        for label, (n, variables) in SIDES.items()
    }
    results: dict[str, list[dict[str, Any]]] = {label: [] for label in sides}
    with tempfile.TemporaryDirectory() as folder:

        def side(label: str):
            processes, variables = sides[label]

            def call() -> float:
                out = Path(folder) / f"{label.replace(' ', '-')}-{len(results[label])}"
                result = _run(settings, processes, out, variables)
                results[label].append(result)
                return sum(result["timings"]["train_s"])

            return call

        seconds = alternating_calls({label: side(label) for label in sides}, settings.repeats)
    rows = {}
    for label, runs in results.items():
        last = runs[-1]
        train = min(seconds[label])
        evaluated = sum(last["timings"]["eval_s"])
        exchanged = last["processes"]["communication_s"]
        rows[label] = {
            "train_s": train,
            "tokens_per_s": tokens / train,
            "eval_s": evaluated,
            "communication_s": exchanged,
            "communication_share": exchanged / (sum(last["timings"]["train_s"]) + evaluated),
            "matrix": last["matrix"],
        }
    return {"settings": vars(settings), "tokens_per_epoch": tokens, "sides": rows}


def table(result: dict[str, Any]) -> str:
    settings, sides = result["settings"], result["sides"]
    one = sides["1"]["tokens_per_s"]
    lines = [
        f"{settings['stream']} ({settings['tasks']}), {settings['init']}, "
        f"{result['tokens_per_epoch']} training tokens, batch {settings['batch_size']}, "
        f"{settings['threads']} threads in all",
        "| processes | train s | tokens/s | vs 1 process | eval s | exchanges s | "
        "exchanges share |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for processes, row in sides.items():
        lines.append(
            f"| {processes} | {row['train_s']:.1f} | {row['tokens_per_s']:.0f} | "
            f"{row['tokens_per_s'] / one:.2f}x | {row['eval_s']:.1f} | "
            f"{row['communication_s']:.1f} | {row['communication_share']:.1%} |"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    return settings_parser("distributed", __doc__, Settings)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_benchmark(argv, _parser(), Settings, measure, table)


if __name__ == "__main__":
    entry_point(main)
