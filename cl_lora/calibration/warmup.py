"""A short warm-up of plain LoRA on the task, whose update ``s B A`` shows which directions of
each weight the task wants to change (what LoRA-Init / LoRA-TSD select from). The update is
kept as its factors ``(s B, A)``: as a dense float32 matrix per layer it would be ~26 GB for a
7B model, and the change rates need only its projections."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from cl_lora.backbones.base import Inputs
from cl_lora.calibration.gradients import BatchLoss
from cl_lora.calibration.registry import CalibrationData, Collected, register_statistic

if TYPE_CHECKING:
    from cl_lora.lora import LoRASettings


def warmup_deltas(
    model: nn.Module,
    head: nn.Module,
    loss: BatchLoss,
    settings: LoRASettings,
    layer_names: Sequence[str],
    batches: Iterable[tuple[Inputs, torch.Tensor]],
    steps: int,
    lr: float,
    generator: torch.Generator,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's update ``s B A`` as the factors ``(s B, A)`` (float32) after ``steps``
    AdamW steps of plain LoRA (with the task's ``head``, if the model has one) on ``loss``.

    The warm-up leaves no trace: its adapter is dropped without merging (plain LoRA's residual
    is the weight itself) and the task head is restored to its state before the warm-up.
    """
    from cl_lora import inits
    from cl_lora.lora import ADAPTER, attach_lora, drop_lora, lora_layers  # PEFT: on first use

    head_state = {key: value.clone() for key, value in head.state_dict().items()}
    was_training = model.training
    attach_lora(model, settings, layer_names, inits.get("lora"), {}, {}, generator)
    try:
        adapter = [p for p in model.encoder.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW([*adapter, *head.parameters()], lr=lr)
        model.train()
        for inputs, targets in itertools.islice(itertools.cycle(list(batches)), steps):
            optimizer.zero_grad()
            loss(model, inputs, targets).backward()
            optimizer.step()
        return {
            name: (
                layer.scaling[ADAPTER] * layer.lora_B[ADAPTER].weight.detach().float(),
                layer.lora_A[ADAPTER].weight.detach().float().clone(),
            )
            for name, layer in lora_layers(model.encoder).items()
        }
    finally:
        drop_lora(model)
        head.load_state_dict(head_state)
        model.train(was_training)


@register_statistic(
    "warmup_delta",
    "s B A of each layer (as its factors) after warmup_steps of plain LoRA on the current task",
)
def warmup_statistic(
    data: CalibrationData, model: nn.Module, task_id: int, generator: torch.Generator
) -> Collected:
    steps = data.resolved_args()["warmup_steps"]
    batches = data.labelled_batches(task_id, steps * data.train_batch_size, data.train_batch_size)
    deltas = warmup_deltas(
        model,
        model.head_of(task_id),
        data.loss(task_id),
        data.lora,
        data.target_modules,
        batches,
        steps,
        data.lr,
        generator,
    )
    return deltas, {"warmup_steps": steps}
