"""The LoRA life cycle of one task, on PEFT's layers: attach a fresh adapter initialized by a
method, then merge it into the backbone when the task is done (or drop it, after a warm-up).

Every change these functions make to a base weight is a function of the weight before it and of
low-rank factors (the init's residual ``W - s B_0 A_0``; PEFT's merge ``W + s B A``), so a
:class:`~cl_lora.deltas.LoRAHistory` passed to them can record the factors and rebuild the
weights bit for bit from the pretrained ones (what a checkpoint stores instead of the model).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn

from cl_lora.backbones import ContinualClassifier
from cl_lora.inits import InitMethod

if TYPE_CHECKING:
    from cl_lora.deltas import LoRAHistory

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


def lora_config(settings: LoRASettings, target_modules: Sequence[str]) -> LoraConfig:
    """PEFT's configuration of every task's adapter."""
    return LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        use_rslora=settings.rslora,
        lora_dropout=settings.dropout,
        target_modules=list(target_modules),
    )


def wrap_lora(model: ContinualClassifier, config: LoraConfig) -> None:
    """Wrap ``model.encoder`` in a PEFT model with a fresh adapter (PEFT's default init)."""
    with warnings.catch_warnings():  # PEFT calls a transformers API deprecated in v5: noise
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated")
        model.encoder = get_peft_model(model.encoder, config)


@torch.no_grad()
def set_factors(layer: LoraLayer, A: torch.Tensor, B: torch.Tensor) -> None:
    """Give ``layer`` the adapter ``A, B`` and make its base weight ``W - s B A`` (computed
    from the factors as the layer holds them, so a replay from ``W`` gives the same bits).
    With a zero factor (plain LoRA's ``B = 0``) the base weight stays ``W`` untouched."""
    lora_A, lora_B = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
    lora_A.copy_(A)
    lora_B.copy_(B)
    if lora_A.any() and lora_B.any():
        base = layer.get_base_layer().weight
        base.copy_(base - layer.scaling[ADAPTER] * lora_B @ lora_A)


@dataclass(frozen=True)
class InitialAdapter:
    """One layer's initial LoRA factors and which of them train (the init's residual is not
    kept: :func:`set_factors` recomputes it from the factors)."""

    A: torch.Tensor
    B: torch.Tensor
    trainable: frozenset[str]


def lora_scale(settings: LoRASettings) -> float:
    """``s``: PEFT's scaling of the adapter, ``alpha / r`` (rsLoRA: ``alpha / sqrt(r)``)."""
    return settings.alpha / (math.sqrt(settings.rank) if settings.rslora else settings.rank)


def initial_adapters(
    encoder: nn.Module,
    settings: LoRASettings,
    layer_names: Sequence[str],
    init: InitMethod,
    init_args: Mapping[str, Any],
    stats: Mapping[str, Mapping[str, torch.Tensor]],
    generator: torch.Generator,
) -> dict[str, InitialAdapter]:
    """``init``'s factors for the layers ``layer_names`` of the (unwrapped) ``encoder``, in
    the encoder's module order; ``stats`` maps a layer name to the statistics the method
    declared."""
    chosen = set(layer_names)
    adapters = {}
    for name, module in encoder.named_modules():
        if name not in chosen:
            continue
        factors = init(
            module.weight,
            rank=settings.rank,
            scale=lora_scale(settings),
            stats=stats.get(name, {}),
            generator=generator,
            **init_args,
        )
        adapters[name] = InitialAdapter(factors.A, factors.B, factors.trainable)
    return adapters


def attach_adapters(
    model: ContinualClassifier,
    settings: LoRASettings,
    target_modules: Sequence[str],
    adapters: Mapping[str, InitialAdapter],
    history: LoRAHistory | None = None,
) -> int:
    """Wrap ``model.encoder`` in a fresh LoRA whose layers start from ``adapters`` (see
    :func:`initial_adapters`); each base weight becomes ``W - s B_0 A_0``. ``history``
    (optional) records the factors. Returns the number of trainable encoder parameters."""
    wrap_lora(model, lora_config(settings, target_modules))
    if history is not None:
        history.begin()
    for name, layer in lora_layers(model.encoder).items():
        if layer.scaling[ADAPTER] != lora_scale(settings):
            raise RuntimeError(f"PEFT scales {name} by {layer.scaling[ADAPTER]}, not s")
        adapter = adapters[name]
        set_factors(layer, adapter.A, adapter.B)
        layer.lora_A[ADAPTER].weight.requires_grad_("A" in adapter.trainable)
        layer.lora_B[ADAPTER].weight.requires_grad_("B" in adapter.trainable)
        if history is not None:
            history.record_init(name, layer)
    return sum(p.numel() for p in model.encoder.parameters() if p.requires_grad)


def attach_lora(
    model: ContinualClassifier,
    settings: LoRASettings,
    target_modules: Sequence[str],
    init: InitMethod,
    init_args: Mapping[str, Any],
    stats: Mapping[str, Mapping[str, torch.Tensor]],
    generator: torch.Generator,
    history: LoRAHistory | None = None,
) -> int:
    """Wrap ``model.encoder`` in a fresh LoRA initialized by ``init`` on every target layer
    (:func:`initial_adapters`, then :func:`attach_adapters`); returns the number of trainable
    encoder parameters."""
    adapters = initial_adapters(
        model.encoder, settings, target_modules, init, init_args, stats, generator
    )
    return attach_adapters(model, settings, target_modules, adapters, history)


def merge_lora(model: ContinualClassifier, history: LoRAHistory | None = None) -> None:
    """Fold the current adapter into the backbone's weights and drop the PEFT wrapper
    (``history``, optional, records the adapter's final factors first)."""
    if isinstance(model.encoder, PeftModel):
        if history is not None:
            history.record_merge(model.encoder)
        model.encoder = model.encoder.merge_and_unload()


def drop_lora(model: ContinualClassifier) -> None:
    """Remove the current adapter without merging it (the base weights stay as they are)."""
    if isinstance(model.encoder, PeftModel):
        model.encoder = model.encoder.unload()
