"""Each init method's per-task cost as a share of the task's training, in real runs.

For each stream (default ``offline-text`` and ``offline-instruct``, the offline defaults of an
encoder and of a language model) and each init method, it runs the suite's own run
(``cl_lora.experiment.run_experiment``, the code ``python -m cl_lora.run`` runs) on one task of
the stream with the default recipe and reads the run's own timings:

- calibration: collecting the statistics the method declares, on its default sources
  (``result.json``: ``init.calibration.per_task[].seconds``);
- factors: everything else before the first step -- merging the last adapter, the method's
  decompositions or warm-up steps, wrapping the model in PEFT (``timings.init_s`` minus
  calibration);
- training: the task's optimizer steps (``timings.train_s`` minus ``init_s``).

The share is (calibration + factors) / training; the column "dominates" names the larger of
the two parts. The init cost does not depend on the task's size, the training time grows with
it, so the report also gives the training examples per epoch at which the init would be 2% of
training (at the measured time per example). Evaluation is not part of it (the benchmark caps
the test split, which leaves init and training as they are).

Timing: one run per method and stream (``--repeats`` for more, median reported), in this
process, one after another; loading the model is outside every timed part.

    python -m benchmarks.init_share [--streams offline-text offline-instruct] [--methods M ...]
        [--task-index 0] [--repeats 1] [--json OUT]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._common import benchmark_parser, entry_point, init_method_names, run_benchmark
from cl_lora import streams
from cl_lora.cli import require_at_least_one
from cl_lora.config import RunConfig
from cl_lora.errors import BadInputError
from cl_lora.experiment import run_experiment

STREAMS = ("offline-text", "offline-instruct")
TARGET_SHARE = 0.02  # init at most 2% of a task's training


@dataclass(frozen=True)
class Settings:
    """What one benchmark run measures; everything else is the default run's recipe."""

    streams: tuple[str, ...] = STREAMS
    methods: tuple[str, ...] = ()  # empty: every registered init method
    task_index: int = 0
    repeats: int = 1
    max_train_per_task: int | None = None  # the stream's full task by default
    epochs: int | None = None  # the default recipe's by default
    max_test_per_task: int = 8  # evaluation is not measured: keep it short
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        require_at_least_one(self, ("repeats", "max_test_per_task", "max_train_per_task"))
        require_at_least_one(self, ("epochs",))
        if self.task_index < 0:
            raise BadInputError("--task-index must not be negative")
        init_method_names(self.methods)  # one-line error for an unknown name

    @property
    def method_names(self) -> list[str]:
        return init_method_names(self.methods)


def task_of(stream: str, index: int) -> str:
    """The name of task ``index`` of ``stream`` (one-line error when out of range)."""
    tasks = streams.build(stream, streams.StreamOptions(max_train_per_task=1)).tasks
    if index >= len(tasks):
        raise BadInputError(
            f"--task-index {index} is out of range: {stream} has {len(tasks)} tasks "
            f"(0..{len(tasks) - 1})"
        )
    return tasks[index].name


def one_run(settings: Settings, stream: str, task: str, method: str, out: Path) -> dict[str, Any]:
    """Calibration, factors and training seconds of one real run of ``method`` on ``task``."""
    config = RunConfig(
        stream=stream,
        init=method,
        tasks=(task,),
        max_train_per_task=settings.max_train_per_task,
        max_test_per_task=settings.max_test_per_task,
        seed=settings.seed,
        device=settings.device,
        **({"epochs": settings.epochs} if settings.epochs is not None else {}),
    )
    result = run_experiment(config, out, verbose=False).result
    timings = result["timings"]
    init_s, train_s = timings["init_s"][0], timings["train_s"][0]
    reports = result["init"].get("calibration", {}).get("per_task", [])
    calibration_s = reports[0]["seconds"] if reports else 0.0
    size = result["tasks"][0]["train_size"]
    return {
        "calibration_s": calibration_s,
        "factors_s": init_s - calibration_s,
        "init_s": init_s,
        "train_s": train_s - init_s,
        "train_examples": size,
        "epochs": result["config"]["epochs"],
        "calibration_examples": sum(map(_examples, reports)),
        "backbone": result["backbone"]["name"],
        "adapted_layers": len(result["lora"]["targets"]),
    }


def _examples(report: dict[str, Any]) -> int:
    """Examples a calibration report counts (per source, or one number)."""
    counts = [value for key, value in report.items() if key.endswith("_examples")]
    return sum(sum(c.values()) if isinstance(c, dict) else c for c in counts)


def summarize_rounds(stream: str, method: str, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each timed part over the rounds, the share and what dominates."""
    row: dict[str, Any] = {"stream": stream, "method": method, **rounds[0]}
    for key in ("calibration_s", "factors_s", "init_s", "train_s"):
        row[key] = statistics.median(r[key] for r in rounds)
    row["rounds"] = [{k: r[k] for k in ("calibration_s", "factors_s", "train_s")} for r in rounds]
    row["share"] = row["init_s"] / row["train_s"]
    row["dominates"] = "calibration" if row["calibration_s"] > row["factors_s"] else "factors"
    # training time grows with the examples per epoch, the init does not
    row["examples_for_target"] = row["train_examples"] * row["share"] / TARGET_SHARE
    return row


def measure(settings: Settings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every method on task ``task_index`` of every stream, ``repeats`` runs each."""
    rows = []
    tasks = {stream: task_of(stream, settings.task_index) for stream in settings.streams}
    with tempfile.TemporaryDirectory(prefix="init-share-") as tmp:
        for stream, task in tasks.items():
            for method in settings.method_names:
                rounds = []
                for repeat in range(settings.repeats):
                    out = Path(tmp) / f"{stream}-{method}-{repeat}"
                    rounds.append(one_run(settings, stream, task, method, out))
                row = summarize_rounds(stream, method, rounds) | {"task": task}
                rows.append(row)
                log(
                    f"{stream} {method}: init {row['init_s']:.1f} s (calibration "
                    f"{row['calibration_s']:.1f}) / training {row['train_s']:.1f} s = "
                    f"{100 * row['share']:.1f}%"
                )
    return {"settings": settings.__dict__, "target_share": TARGET_SHARE, "rows": rows}


def report(result: dict[str, Any]) -> str:
    """The table of a :func:`measure` result, one block per stream."""
    lines = []
    for stream in dict.fromkeys(row["stream"] for row in result["rows"]):
        rows = [row for row in result["rows"] if row["stream"] == stream]
        first = rows[0]
        lines += [
            f"{stream}, task {first['task']}: {first['backbone']}, {first['adapted_layers']} "
            f"adapted layers; training {first['train_examples']} examples x {first['epochs']} "
            "epochs",
            f"{'method':<14}{'calib s':>9}{'factors s':>11}{'init s':>8}{'train s':>9}"
            f"{'init %':>9}  {'dominates':<12}{'examples for 2%':>16}",
        ]
        for row in rows:
            lines.append(
                f"{row['method']:<14}{row['calibration_s']:>9.1f}{row['factors_s']:>11.1f}"
                f"{row['init_s']:>8.1f}{row['train_s']:>9.1f}{100 * row['share']:>8.1f}%  "
                f"{row['dominates']:<12}{row['examples_for_target']:>16,.0f}"
            )
        lines.append("")
    lines.append(
        "init % = (calibration + factors) / training of the task; examples for 2% = training "
        "examples per epoch at which the same init would be 2% of training"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    defaults = Settings()
    p = benchmark_parser("init_share", __doc__)
    p.add_argument(
        "--streams",
        nargs="+",
        default=list(defaults.streams),
        help="streams to measure (default: offline-text offline-instruct)",
    )
    p.add_argument("--methods", nargs="+", default=[], help="init methods (default: all)")
    p.add_argument(
        "--task-index", type=int, default=defaults.task_index, help="the task (default: first)"
    )
    p.add_argument("--repeats", type=int, default=defaults.repeats, help="runs per method")
    p.add_argument("--max-train-per-task", type=int, default=None, help="cap (default: none)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the run's)")
    p.add_argument(
        "--max-test-per-task",
        type=int,
        default=defaults.max_test_per_task,
        help="test cap (evaluation is not measured)",
    )
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--device", default=defaults.device, help="auto, cpu, cuda or cuda:N")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, measure, print the table, optionally write JSON; return the numbers."""
    return run_benchmark(argv, build_parser(), Settings, measure, report)


if __name__ == "__main__":
    entry_point(main)
