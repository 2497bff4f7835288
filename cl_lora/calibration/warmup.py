"""A short warm-up of plain LoRA on the task, whose update ``s B A`` shows which directions of
each weight the task wants to change (what LoRA-Init / LoRA-TSD select from). The update is
kept as its factors ``(s B, A)``: as a dense float32 matrix per layer it would be ~26 GB for a
7B model, and the change rates need only its projections."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from cl_lora.backbones.base import Inputs
from cl_lora.calibration.registry import BatchLoss, CalibrationData, Collected, register_statistic

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
    recipe: WarmupRecipe | None = None,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's update ``s B A`` as the factors ``(s B, A)`` (float32) after ``steps``
    AdamW steps of plain LoRA (with the task's ``head``, if the model has one) on ``loss``.

    Each step reads ``recipe.grad_accumulation`` micro-batches of ``batches``, weighted by
    their share of the step's loss terms, and clips to ``recipe.max_grad_norm``, as the run's
    training steps do (:class:`~cl_lora.strategy.LoRAStrategy`).

    The warm-up leaves no trace: its adapter is dropped without merging (plain LoRA's residual
    is the weight itself) and the task head is restored to its state before the warm-up.
    """
    from cl_lora import inits
    from cl_lora.lora import ADAPTER, attach_lora, drop_lora, lora_layers  # PEFT: on first use

    head_state = {key: value.clone() for key, value in head.state_dict().items()}
    was_training = model.training
    attach_lora(model, settings, layer_names, inits.get("lora"), {}, {}, generator)
    try:
        recipe = recipe or WarmupRecipe()
        parameters = [p for p in model.encoder.parameters() if p.requires_grad]
        parameters += list(head.parameters())
        optimizer = torch.optim.AdamW(parameters, lr=lr)
        model.train()
        micro_batches = itertools.cycle(list(batches))
        for _ in range(steps):
            group = list(itertools.islice(micro_batches, recipe.grad_accumulation))
            terms = [recipe.loss_terms(targets) for _, targets in group]
            optimizer.zero_grad()
            for (inputs, targets), share in zip(group, terms, strict=True):
                (loss(model, inputs, targets) * (share / max(1, sum(terms)))).backward()
            if recipe.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(parameters, recipe.max_grad_norm)
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


@dataclass(frozen=True)
class WarmupRecipe:
    """How a warm-up step is made of micro-batches, as the run's training steps are."""

    grad_accumulation: int = 1
    max_grad_norm: float | None = None
    loss_terms: Callable[[torch.Tensor], int] = len


@register_statistic(
    "warmup_delta",
    "s B A of each layer (as its factors) after warmup_steps of plain LoRA on the current task",
)
def warmup_statistic(
    data: CalibrationData, model: nn.Module, task_id: int, generator: torch.Generator
) -> Collected:
    steps = data.resolved_args()["warmup_steps"]
    micro_batches = steps * data.grad_accumulation
    batches = data.labelled_batches(
        task_id, micro_batches * data.train_batch_size, data.train_batch_size
    )
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
        WarmupRecipe(data.grad_accumulation, data.max_grad_norm, data.loss_terms),
    )
    return deltas, {"warmup_steps": steps}
