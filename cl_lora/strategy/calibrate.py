"""Which data each statistic is collected on, per task (``--calib``), and the dispatch to the
registered collectors of :mod:`cl_lora.calibration` that the init method ``needs``.

Input covariances read the chosen sources: ``probe`` (inputs standing for pretrained knowledge,
outside the stream), ``task`` (the current task's training inputs) and ``memory`` (an even
sample of earlier tasks' training inputs: the new LoRA then also avoids what the model learned
in this stream). Gradients and warm-ups always use the current task, whose labels they need.

Input covariances or mean gradients of all adapted layers may not fit in memory at once (a 7B
model's need tens of GB): :meth:`Calibrator.layer_groups` then splits the layers into passes
within ``max_memory`` (default: half the device's free memory, PyTorch's cached blocks
counted as free), and the strategy collects and initializes one group at a time (the
statistics do not depend on the grouping).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cl_lora.backbones.base import Inputs
from cl_lora.calibration import collect_statistics
from cl_lora.calibration.covariance import covariance_passes, free_memory
from cl_lora.calibration.gradients import gradient_passes
from cl_lora.calibration.registry import BatchLoss
from cl_lora.inits import InitMethod
from cl_lora.lora import LoRASettings
from cl_lora.problems import Problem
from cl_lora.streams import Stream, knowledge_probe


class CalibrationOutOfMemory(torch.OutOfMemoryError):
    """The device ran out of memory while collecting an init's statistics; ``fixes`` are the
    settings that make calibration need less (its batch size is not the training one)."""

    def __init__(self, message: str, fixes: list[str]) -> None:
        super().__init__(message)
        self.fixes = fixes


class _Layers:
    """A :class:`Calibrator` seen by the collectors as adapting only ``target_modules``."""

    def __init__(self, calibrator: Calibrator, target_modules: list[str]) -> None:
        self._calibrator = calibrator
        self.target_modules = target_modules

    def __getattr__(self, name: str) -> Any:
        return getattr(self._calibrator, name)


@dataclass
class Calibrator:
    """Collects, before each task, the statistics the init method declared (it is the
    :class:`~cl_lora.calibration.CalibrationData` the collectors read)."""

    init: InitMethod
    init_args: dict[str, Any]
    sources: tuple[str, ...]
    size: int
    stream: Stream
    problem: Problem
    lora: LoRASettings
    target_modules: Sequence[str]
    batch_size: int  # forward-only passes (covariances, gradients)
    train_batch_size: int  # warm-up micro-batches, as in training
    lr: float
    device: torch.device
    max_memory: int | None = None  # bytes of input covariances at once; None: half the free
    grad_accumulation: int = 1  # micro-batches per warm-up step, as in training
    max_grad_norm: float | None = None  # warm-up steps' clipping, as in training

    def __post_init__(self) -> None:
        self.reports: list[dict[str, Any]] = []
        self._probe = None
        self._first_layer: str | None = None  # of the first group: its report opens a task's

    def _probe_rows(self) -> list[dict[str, Any]]:
        if self._probe is None:
            self._probe = knowledge_probe(self.stream.knowledge).train
        return self._rows(self._probe, self.size)

    @staticmethod
    def _rows(dataset: Any, count: int, labelled: bool = False) -> list[dict[str, Any]]:
        rows = [dict(row) for row in dataset.select(range(min(count, len(dataset))))]
        return rows if labelled else [{k: v for k, v in r.items() if k != "label"} for r in rows]

    def resolved_args(self) -> dict[str, Any]:
        return self.init.resolve_args(self.init_args)

    def loss(self, task_id: int) -> BatchLoss:
        def batch_loss(model: nn.Module, inputs: Inputs, targets: torch.Tensor) -> torch.Tensor:
            return self.problem.batch_loss(model, inputs, targets, task_id)

        return batch_loss

    def loss_terms(self, targets: torch.Tensor) -> int:
        return self.problem.loss_terms(targets)

    def input_batches(self, task_id: int) -> tuple[Iterator[Inputs], dict[str, int]]:
        """The calibration rows (:meth:`input_rows`) in batches, longest first."""
        rows, used = self.input_rows(task_id)
        return self._batches(self._longest_first(rows), self.batch_size), used

    def _longest_first(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``rows`` by token count, longest first (ties and inputs without an attention mask
        keep their order), so that each batch pads its rows to a similar length: on the
        offline-instruct probe 7,000 token positions instead of 9,300 for the same sums."""
        if "attention_mask" not in self.problem.collate(rows[:1], None, training=True)[0]:
            return rows  # e.g. images: nothing to sort, and no need to stack them all
        inputs, _ = self.problem.collate(rows, None, training=True)
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        return [rows[i] for i in sorted(range(len(rows)), key=lambda i: -lengths[i])]

    def input_rows(self, task_id: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
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

    def labelled_batches(
        self, task_id: int, count: int, size: int
    ) -> list[tuple[Inputs, torch.Tensor]]:
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

    def layer_groups(self, encoder: nn.Module) -> list[list[str]]:
        """The adapted layers (module order) in the groups whose statistics are collected
        together: one group, unless input covariances or gradients exceed the memory budget."""
        targets = set(self.target_modules)
        names = [name for name, _ in encoder.named_modules() if name in targets]
        self._first_layer = names[0]
        passes = {"input_cov": covariance_passes, "grad": gradient_passes}
        split = next((passes[need] for need in self.init.needs if need in passes), None)
        if split is None:
            return [names]
        budget = self.max_memory if self.max_memory is not None else free_memory(self.device) // 2
        self._budget = budget
        return split(encoder, names, budget)

    def _memory_fixes(self) -> list[str]:
        """Settings that shrink calibration: the batch size its statistics run at (input
        covariances: the evaluation one; gradients and warm-ups: the training one), and a
        smaller memory budget for its passes when it has them."""
        covariances = "input_cov" in self.init.needs
        option, batch = (
            ("--eval-batch-size", self.batch_size)
            if covariances
            else ("--batch-size", self.train_batch_size)
        )
        fixes = [f"{option} {max(1, batch // 2)}"]
        budget = getattr(self, "_budget", None)
        if budget is not None and (covariances or "grad" in self.init.needs):
            fixes.append(f"--calib-max-memory {max(1, budget // 2**21)}MB")
        return fixes

    def collect(
        self,
        model: nn.Module,
        task_id: int,
        generator: torch.Generator,
        layers: Sequence[str] | None = None,
    ) -> dict[str, dict[str, torch.Tensor]]:
        """Per adapted layer (or per layer of ``layers``, one group of :meth:`layer_groups`),
        the statistics ``init.needs`` for task ``task_id``. The report of a later group is
        merged into its task's: the passes counted, their seconds summed, the memory held at
        most."""
        data = self if layers is None else _Layers(self, list(layers))
        start = time.perf_counter()
        try:
            stats, report = collect_statistics(data, self.init.needs, model, task_id, generator)
        except torch.OutOfMemoryError as error:
            raise CalibrationOutOfMemory(str(error), self._memory_fixes()) from None
        if self.device.type == "cuda":  # the time of the work, not of queueing it
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        if not self.init.needs:
            return stats
        if layers is None or layers[0] == self._first_layer:
            self.reports.append({"task": task_id, "passes": 1, "seconds": seconds, **report})
        else:
            merged = next(r for r in reversed(self.reports) if r["task"] == task_id)
            merged["passes"] += 1
            merged["seconds"] += seconds
            for key, value in report.items():
                if key.endswith("_bytes"):
                    merged[key] = max(merged[key], value)
        return stats
