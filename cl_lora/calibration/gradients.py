"""The loss gradient with respect to each adapted weight, averaged over a few task batches
(what LoRA-GA initializes from)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from cl_lora.backbones.base import Inputs
from cl_lora.calibration.registry import CalibrationData, Collected, register_statistic

#: ``loss(model, inputs, targets)``: the training loss of one batch (the run's problem decides).
BatchLoss = Callable[[nn.Module, Inputs, torch.Tensor], torch.Tensor]


def collect_gradients(
    model: nn.Module,
    loss: BatchLoss,
    layer_names: Sequence[str],
    batches: Iterable[tuple[Inputs, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """Mean of ``dL/dW`` over ``batches`` for each named layer of ``model.encoder``.

    Only the named weights take gradients during the pass; every parameter's ``requires_grad``
    and ``grad`` is restored afterwards, so the model leaves exactly as it came.
    """
    weights = {name: model.encoder.get_submodule(name).weight for name in layer_names}
    flags = {p: p.requires_grad for p in model.parameters()}
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    sums = {name: torch.zeros_like(w) for name, w in weights.items()}
    count = 0
    try:
        for weight in weights.values():
            weight.requires_grad_(True)
        for inputs, targets in batches:
            grads = torch.autograd.grad(loss(model, inputs, targets), list(weights.values()))
            for name, grad in zip(weights, grads, strict=True):
                sums[name] += grad
            count += 1
    finally:
        for parameter, flag in flags.items():
            parameter.requires_grad_(flag)
    return {name: total / max(count, 1) for name, total in sums.items()}


@register_statistic("grad", "mean loss gradient w.r.t. each adapted weight, on the current task")
def gradient_statistic(
    data: CalibrationData, model: nn.Module, task_id: int, generator: torch.Generator
) -> Collected:
    batches = data.labelled_batches(task_id, data.size, data.batch_size)
    grads = collect_gradients(model, data.loss(task_id), data.target_modules, batches)
    return grads, {"grad_examples": sum(len(labels) for _, labels in batches)}
