"""The loss gradient with respect to each adapted weight, averaged over a few task batches
(what LoRA-GA initializes from).

A mean gradient is a dense float32 matrix per layer (~26 GB for the adapted weights of a 7B
model), so the strategy collects it one group of layers at a time under the calibration memory
budget (:func:`gradient_passes`; each group one pass of forward and backward, the group's
gradients turned into LoRA factors and dropped before the next), at the training batch size
(a backward holds its activations: the evaluation batch size would hold more)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from cl_lora.backbones.base import Inputs
from cl_lora.calibration.registry import (
    BatchLoss,
    CalibrationData,
    Collected,
    register_statistic,
)


def collect_gradients(
    model: nn.Module,
    loss: BatchLoss,
    layer_names: Sequence[str],
    batches: Iterable[tuple[Inputs, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """Mean of ``dL/dW`` over ``batches`` for each named layer of ``model.encoder``, summed in
    float32 (a bf16 weight's gradients are bf16).

    Only the named weights take gradients during the pass; every parameter's ``requires_grad``
    and ``grad`` is restored afterwards, so the model leaves exactly as it came.
    """
    weights = {name: model.encoder.get_submodule(name).weight for name in layer_names}
    flags = {p: p.requires_grad for p in model.parameters()}
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    sums = {name: torch.zeros_like(w, dtype=torch.float32) for name, w in weights.items()}
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


def gradient_passes(encoder: nn.Module, names: Sequence[str], budget: int) -> list[list[str]]:
    """``names`` (in module order) split into consecutive groups whose gradients fit in
    ``budget`` bytes: per layer a float32 sum and the weight's own gradient of one batch. A
    layer larger than the budget is a group of its own."""
    modules = dict(encoder.named_modules())
    groups: list[list[str]] = []
    held = 0
    for name in names:
        weight = modules[name].weight
        size = weight.numel() * (4 + weight.element_size())
        if not groups or held + size > budget:
            groups.append([])
            held = 0
        groups[-1].append(name)
        held += size
    return groups


@register_statistic("grad", "mean loss gradient w.r.t. each adapted weight, on the current task")
def gradient_statistic(
    data: CalibrationData, model: nn.Module, task_id: int, generator: torch.Generator
) -> Collected:
    batches = data.labelled_batches(task_id, data.size, data.train_batch_size)
    grads = collect_gradients(model, data.loss(task_id), data.target_modules, batches)
    return grads, {"grad_examples": sum(len(labels) for _, labels in batches)}
