"""The LoRA life cycle of one task, on PEFT's layers: attach a fresh adapter initialized by a
method, then merge it into the backbone when the task is done (or drop it, after a warm-up)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn

from cl_lora.backbones import ContinualClassifier
from cl_lora.inits import InitMethod

ADAPTER = "default"


@dataclass(frozen=True)
class LoRASettings:
    """Shape of every task's adapter; ``alpha / rank`` (or ``/ sqrt(rank)``) is the scale."""

    rank: int = 8
    alpha: float = 16.0
    rslora: bool = False
    dropout: float = 0.0


def lora_layers(encoder: nn.Module) -> dict[str, LoraLayer]:
    """The LoRA-wrapped linear layers of a PEFT model, by their name in the base model."""
    return {
        name.removeprefix("base_model.model."): module
        for name, module in encoder.named_modules()
        if isinstance(module, LoraLayer)
    }


def attach_lora(
    model: ContinualClassifier,
    settings: LoRASettings,
    target_modules: Sequence[str],
    init: InitMethod,
    init_args: Mapping[str, Any],
    stats: Mapping[str, Mapping[str, torch.Tensor]],
    generator: torch.Generator,
) -> int:
    """Wrap ``model.encoder`` in a fresh LoRA and initialize every adapted layer with ``init``.

    The layer's frozen base weight becomes the method's residual. ``stats`` maps a layer name to
    the statistics the method declared. Returns the number of trainable encoder parameters.
    """
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        use_rslora=settings.rslora,
        lora_dropout=settings.dropout,
        target_modules=list(target_modules),
    )
    with warnings.catch_warnings():  # PEFT calls a transformers API deprecated in v5: noise
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated")
        model.encoder = get_peft_model(model.encoder, config)
    for name, layer in lora_layers(model.encoder).items():
        base = layer.get_base_layer()
        lora_A, lora_B = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
        factors = init(
            base.weight,
            rank=settings.rank,
            scale=layer.scaling[ADAPTER],
            stats=stats.get(name, {}),
            generator=generator,
            **init_args,
        )
        with torch.no_grad():
            base.weight.copy_(factors.residual)
            lora_A.copy_(factors.A)
            lora_B.copy_(factors.B)
        lora_A.requires_grad_("A" in factors.trainable)
        lora_B.requires_grad_("B" in factors.trainable)
    return sum(p.numel() for p in model.encoder.parameters() if p.requires_grad)


def merge_lora(model: ContinualClassifier) -> None:
    """Fold the current adapter into the backbone's weights and drop the PEFT wrapper."""
    if isinstance(model.encoder, PeftModel):
        model.encoder = model.encoder.merge_and_unload()


def drop_lora(model: ContinualClassifier) -> None:
    """Remove the current adapter without merging it (the base weights stay as they are)."""
    if isinstance(model.encoder, PeftModel):
        model.encoder = model.encoder.unload()
