"""The registry of calibration statistics: what an init method can declare in ``needs``.

Each statistic is a registered collector, ``collect(data, model, task_id, generator)``, that
measures one thing on every adapted layer and returns it by layer name, with a report for
``result.json``. ``data`` (a :class:`CalibrationData`) supplies the batches and settings; the
strategy's :class:`~cl_lora.strategy.calibrate.Calibrator` is one, a benchmark may bring its
own. Adding a statistic is one registered function.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from cl_lora.registry import Registry

#: ``loss(model, inputs, targets)``: the training loss of one batch (the run's problem decides).
BatchLoss = Callable[[nn.Module, "Inputs", torch.Tensor], torch.Tensor]

if TYPE_CHECKING:  # types only: listing the statistics must not load PEFT
    from cl_lora.backbones.base import Inputs
    from cl_lora.lora import LoRASettings


class CalibrationData(Protocol):
    """What a collector reads: batches of a task and the run's settings."""

    lora: LoRASettings
    target_modules: Sequence[str]
    size: int  # examples per calibration source
    batch_size: int  # forward-only passes (covariances, gradients)
    train_batch_size: int  # warm-up micro-batches, as in training
    lr: float  # warm-up steps
    grad_accumulation: int  # micro-batches per warm-up step, as in training
    max_grad_norm: float | None  # warm-up steps' clipping, as in training

    def resolved_args(self) -> dict[str, Any]:
        """The init method's arguments, defaults filled in."""

    def input_batches(self, task_id: int) -> tuple[Iterable[Inputs], dict[str, int]]:
        """Unlabelled inputs from the calibration sources, and how many each source gave."""

    def labelled_batches(
        self, task_id: int, count: int, size: int
    ) -> list[tuple[Inputs, torch.Tensor]]:
        """``count`` labelled training examples of the task in batches of ``size``."""

    def loss(self, task_id: int) -> BatchLoss:
        """The training loss of one batch of task ``task_id``."""

    def loss_terms(self, targets: torch.Tensor) -> int:
        """How many terms a batch's loss averages (what weighs an accumulated micro-batch)."""


#: ``(per-layer tensors, report)`` of one statistic.
Collected = tuple[dict[str, torch.Tensor], dict[str, Any]]
Collect = Callable[[CalibrationData, nn.Module, int, torch.Generator], Collected]


@dataclass(frozen=True)
class Statistic:
    """A registered calibration statistic (see the module docstring)."""

    name: str
    description: str
    collect: Collect


STATISTICS: Registry[Statistic] = Registry("calibration statistic")


def register_statistic(name: str, description: str) -> Callable[[Collect], Collect]:
    """Decorator: ``collect(data, model, task_id, generator)`` becomes statistic ``name``."""

    def decorate(collect: Collect) -> Collect:
        STATISTICS.add(name, Statistic(name, description, collect))
        return collect

    return decorate


def collect_statistics(
    data: CalibrationData,
    needs: Sequence[str],
    model: nn.Module,
    task_id: int,
    generator: torch.Generator,
) -> Collected:
    """Every statistic in ``needs``, by layer name (``{layer: {statistic: tensor}}``, as an
    init's ``stats``), and their reports merged; the model is measured in eval mode and left in
    the mode it came in."""
    stats: dict[str, dict[str, torch.Tensor]] = {}
    report: dict[str, Any] = {}
    was_training = model.training
    model.eval()
    try:
        for need in needs:
            tensors, measured = STATISTICS.get(need).collect(data, model, task_id, generator)
            for name, tensor in tensors.items():
                stats.setdefault(name, {})[need] = tensor
            report |= measured
    finally:
        model.train(was_training)
    return stats, report
