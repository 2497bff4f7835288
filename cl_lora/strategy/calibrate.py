"""Which data each statistic is collected on, per task (``--calib``), and the call into
:mod:`cl_lora.calibration`.

Input covariances read the chosen sources: ``probe`` (inputs standing for pretrained knowledge,
outside the stream), ``task`` (the current task's training inputs) and ``memory`` (an even
sample of earlier tasks' training inputs: the new LoRA then also avoids what the model learned
in this stream). Gradients and warm-ups always use the current task, whose labels they need.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cl_lora.backbones.base import Inputs
from cl_lora.calibration import collect_gradients, collect_input_covariances, warmup_deltas
from cl_lora.errors import BadInputError
from cl_lora.inits import InitMethod
from cl_lora.lora import LoRASettings
from cl_lora.problems import Problem
from cl_lora.streams import Stream, knowledge_probe

SOURCES = ("probe", "task", "memory")


def parse_sources(text: str) -> tuple[str, ...]:
    """``"probe,memory"`` -> ``("probe", "memory")``, rejecting unknown names."""
    sources = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [source for source in sources if source not in SOURCES]
    if unknown or not sources:
        raise BadInputError(
            f"unknown --calib source {', '.join(unknown) or repr(text)}: use a comma-separated "
            f"choice of {', '.join(SOURCES)}"
        )
    return sources


@dataclass
class Calibrator:
    """Collects, before each task, the statistics the init method declared."""

    init: InitMethod
    init_args: dict[str, Any]
    sources: tuple[str, ...]
    size: int
    stream: Stream
    problem: Problem
    lora: LoRASettings
    target_modules: Sequence[str]
    batch_size: int  # forward-only passes (covariances, gradients)
    train_batch_size: int  # warm-up steps, as in training
    lr: float
    device: torch.device

    def __post_init__(self) -> None:
        self.reports: list[dict[str, Any]] = []
        self._probe = None

    def _probe_rows(self) -> list[dict[str, Any]]:
        if self._probe is None:
            self._probe = knowledge_probe(self.stream.knowledge).train
        return self._rows(self._probe, self.size)

    @staticmethod
    def _rows(dataset: Any, count: int, labelled: bool = False) -> list[dict[str, Any]]:
        rows = [dict(row) for row in dataset.select(range(min(count, len(dataset))))]
        return rows if labelled else [{k: v for k, v in r.items() if k != "label"} for r in rows]

    def _input_rows(self, task_id: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
        rows: dict[str, list[dict[str, Any]]] = {}
        for source in self.sources:
            if source == "probe":
                rows[source] = self._probe_rows()
            elif source == "task":
                rows[source] = self._rows(self.stream.tasks[task_id].train, self.size)
            elif task_id > 0:  # memory: an even share of each earlier task
                share = max(1, self.size // task_id)
                rows[source] = [
                    row
                    for j in range(task_id)
                    for row in self._rows(self.stream.tasks[j].train, share)
                ]
        if not any(rows.values()):  # memory alone before the second task: nothing to read yet
            rows = {"probe": self._probe_rows()}
        return [row for part in rows.values() for row in part], {k: len(v) for k, v in rows.items()}

    def _batches(self, rows: list[dict[str, Any]], size: int) -> Iterator[Inputs]:
        """Inputs in the problem's training form (a language model reads prompt and answer)."""
        for start in range(0, len(rows), size):
            inputs, _ = self.problem.collate(rows[start : start + size], None, training=True)
            yield {key: value.to(self.device) for key, value in inputs.items()}

    def _labelled(self, task_id: int, count: int, size: int) -> list[tuple[Inputs, torch.Tensor]]:
        rows = self._rows(self.stream.tasks[task_id].train, count, labelled=True)
        batches = []
        for start in range(0, len(rows), size):
            part = rows[start : start + size]
            labels = [row.pop("label") for row in part]
            inputs, targets = self.problem.collate(part, labels, training=True)
            batches.append(
                ({k: v.to(self.device) for k, v in inputs.items()}, targets.to(self.device))
            )
        return batches

    def collect(
        self, model: nn.Module, task_id: int, generator: torch.Generator
    ) -> dict[str, dict[str, torch.Tensor]]:
        """Per adapted layer, the statistics ``init.needs`` for task ``task_id``."""
        stats: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
        needs = self.init.needs
        report: dict[str, Any] = {"task": task_id}

        def loss(model: nn.Module, inputs: Inputs, targets: torch.Tensor) -> torch.Tensor:
            return self.problem.batch_loss(model, inputs, targets, task_id)

        was_training = model.training
        model.eval()
        if "input_cov" in needs:
            rows, used = self._input_rows(task_id)
            normalize = self.init.resolve_args(self.init_args).get("normalize", False)
            collector = collect_input_covariances(
                model, self.target_modules, self._batches(rows, self.batch_size), normalize
            )
            for name, cov in collector.covariances().items():
                stats[name]["input_cov"] = cov
            report |= {
                "input_cov_examples": used,
                "input_cov_normalized": normalize,
                "input_cov_bytes": collector.nbytes(),
                "input_cov_bytes_one_per_module": collector.nbytes_per_module(),
            }
        if "grad" in needs:
            batches = self._labelled(task_id, self.size, self.batch_size)
            for name, grad in collect_gradients(model, loss, self.target_modules, batches).items():
                stats[name]["grad"] = grad
            report["grad_examples"] = sum(len(labels) for _, labels in batches)
        if "warmup_delta" in needs:
            steps = self.init.resolve_args(self.init_args)["warmup_steps"]
            batches = self._labelled(task_id, steps * self.train_batch_size, self.train_batch_size)
            deltas = warmup_deltas(
                model,
                model.head_of(task_id),
                loss,
                self.lora,
                self.target_modules,
                batches,
                steps,
                self.lr,
                generator,
            )
            for name, delta in deltas.items():
                stats[name]["warmup_delta"] = delta
            report["warmup_steps"] = steps
        model.train(was_training)
        if needs:
            self.reports.append(report)
        return stats
