"""The LoRA life cycle of one task, on PEFT's layers: attach a fresh adapter initialized by a
method, then merge it into the backbone when the task is done (or drop it, after a warm-up).

The init leaves the base weight ``W`` untouched: the init's ``-s B_0 A_0`` (and any term a method
folds in) is held as frozen factors (:class:`PendingDelta`) until the task's one merge writes
``W + s (B A - B_0 A_0) + folds`` (float32, cast once). Every change to a base weight is thus a
function of the weight before it and of low-rank factors, so a
:class:`~cl_lora.deltas.LoRAHistory` passed to these functions can record the factors and
rebuild the weights bit for bit from the pretrained ones (what a checkpoint stores instead of
the model). A sharded weight (FSDP2) is gathered whole for the init and the merge, and the
merge writes each process's shard (:mod:`cl_lora.sharding`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.tuners.lora.layer import LoraVariant
from torch import nn

from cl_lora.backbones import ContinualClassifier
from cl_lora.inits import InitMethod
from cl_lora.sharding import full_weight, write_weight

ADAPTER = "default"


class AdapterHistory(Protocol):
    """What the adapter life cycle here tells a history of adapters (the run's is
    :class:`~cl_lora.deltas.LoRAHistory`, which replays them from a checkpoint)."""

    def begin(self) -> None: ...

    def record_init(self, name: str, layer: LoraLayer) -> None: ...

    def record_merge(self, encoder: nn.Module) -> None: ...


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


class PendingDelta(nn.Module):
    """What one adapted layer computes besides ``W x`` and its live adapter, held as frozen
    low-rank factors until the task's merge: the init's ``-s B_0 A_0`` and the terms a method
    folds in (LoRA-Dash's ``(u d) v``).

    Subtracting ``s B_0 A_0`` from a bf16 ``W`` at init would round the residual to bf16, so
    the model right after a residual init (PiSSA, MiLoRA, OLoRA, LoRA-Null, ...) would no longer
    compute the function it computed before. Held here, the layer adds
    ``s (B A - B_0 A_0) x`` in float32 (exactly 0 at init: both products are the same
    operations on the same numbers) and the merge writes ``W + s (B A - B_0 A_0) + folds``,
    summed in float32 and cast once. Buffers, so they follow ``model.to(device)``; the
    strategy's history records the same factors, which is what a checkpoint replays.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("A0", None, persistent=False)
        self.register_buffer("B0", None, persistent=False)
        self.folds = 0

    def add_fold(self, left: torch.Tensor, right: torch.Tensor) -> None:
        """Hold ``left @ right`` (float32) until the merge."""
        self.register_buffer(f"left{self.folds}", left.float().clone(), persistent=False)
        self.register_buffer(f"right{self.folds}", right.float().clone(), persistent=False)
        self.folds += 1

    def fold_factors(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The folded terms' ``(left, right)``, in the order they were added."""
        return [(getattr(self, f"left{i}"), getattr(self, f"right{i}")) for i in range(self.folds)]

    def dense(self, scaling: float) -> torch.Tensor | None:
        """``-scaling B_0 A_0 + sum left @ right`` in float32, ``None`` when nothing is held."""
        terms = [left @ right for left, right in self.fold_factors()]
        if self.A0 is not None:
            terms.insert(0, -scaling * (self.B0.float() @ self.A0.float()))
        return sum(terms[1:], terms[0]) if terms else None


class PendingDeltaVariant(LoraVariant):
    """PEFT's hook for a layer whose adapter has a :class:`PendingDelta`: the adapter's and
    the pending terms' outputs summed in the adapter's dtype (float32) and added to ``W x``
    once, so at init the pending term cancels the adapter exactly."""

    @staticmethod
    def init(module: LoraLayer, adapter_name: str, **kwargs: Any) -> None:
        """Nothing to set up: the layer's :class:`PendingDelta` holds the state."""

    @staticmethod
    def forward(
        module: LoraLayer, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        pending: PendingDelta = module.lora_pending
        lora_A, lora_B = module.lora_A[active_adapter], module.lora_B[active_adapter]
        delta = lora_B(lora_A(module.lora_dropout[active_adapter](x)))
        if pending.A0 is not None:
            delta = delta - nn.functional.linear(nn.functional.linear(x, pending.A0), pending.B0)
        delta = delta * module.scaling[active_adapter]
        for left, right in pending.fold_factors():
            delta = delta + nn.functional.linear(nn.functional.linear(x, right), left)
        return result + delta


def _pending(layer: LoraLayer) -> PendingDelta:
    """``layer``'s :class:`PendingDelta`, created empty (and PEFT pointed at it) on first use."""
    if not hasattr(layer, "lora_pending"):
        layer.lora_pending = PendingDelta()
        layer.lora_variant[ADAPTER] = PendingDeltaVariant()
    return layer.lora_pending


@torch.no_grad()
def set_factors(layer: LoraLayer, A: torch.Tensor, B: torch.Tensor) -> None:
    """Give ``layer`` the adapter ``A, B`` and hold ``-s B A`` as its pending term (see
    :class:`PendingDelta`): the base weight ``W`` stays untouched and the layer still computes
    ``W x``. With a zero factor (plain LoRA's ``B = 0``) there is nothing to hold."""
    lora_A, lora_B = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
    lora_A.copy_(A)
    lora_B.copy_(B)
    if lora_A.any() and lora_B.any():
        pending = _pending(layer)
        pending.A0, pending.B0 = lora_A.detach().clone(), lora_B.detach().clone()


def add_fold(layer: LoraLayer, left: torch.Tensor, right: torch.Tensor) -> None:
    """Make ``left @ right`` part of ``layer``'s frozen weight for good: the layer computes it
    from now on and the task's merge folds it into the base weight. The factors may come from
    anywhere (a replay reads them from the CPU): they are held on the layer's device."""
    device = layer.lora_A[ADAPTER].weight.device
    _pending(layer).add_fold(left.detach().to(device), right.detach().to(device))


def _pending_dense(layer: LoraLayer) -> torch.Tensor | None:
    pending = getattr(layer, "lora_pending", None)
    return None if pending is None else pending.dense(layer.scaling[ADAPTER])


def adapter_delta(layer: LoraLayer) -> torch.Tensor:
    """What the layer adds to its base weight, dense, in float32 and differentiable in the
    adapter: ``s (B A - B_0 A_0) + folds`` (what the merge adds; exactly 0 right after init,
    as ``s B_0 A_0 - s B_0 A_0`` is)."""
    lora_A, lora_B = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
    delta = layer.scaling[ADAPTER] * (lora_B.float() @ lora_A.float())
    pending = _pending_dense(layer)
    return delta if pending is None else delta + pending


def frozen_weight(layer: LoraLayer) -> torch.Tensor:
    """The layer's frozen part ``W - s B_0 A_0 + folds`` in float32 (the init's residual,
    which is no longer written into the weight)."""
    weight = full_weight(layer.get_base_layer().weight.detach()).float()
    pending = _pending_dense(layer)
    return weight if pending is None else weight + pending


@torch.no_grad()
def merge_adapter(layer: LoraLayer) -> None:
    """Write ``W + s (B A - B_0 A_0) + folds`` into the base weight: summed in float32, cast
    once to the weight's dtype (into this process's shard when the weight is sharded)."""
    weight = layer.get_base_layer().weight
    merged = full_weight(weight).float() + adapter_delta(layer)
    write_weight(weight, merged.to(weight.dtype))


@dataclass(frozen=True)
class InitialAdapter:
    """One layer's initial LoRA factors and which of them train (the init's residual is not
    kept: :func:`set_factors` holds ``-s B_0 A_0`` instead)."""

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
            full_weight(module.weight),  # whole, when sharded
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
    history: AdapterHistory | None = None,
) -> int:
    """Wrap ``model.encoder`` in a fresh LoRA whose layers start from ``adapters`` (see
    :func:`initial_adapters`); each layer holds ``-s B_0 A_0`` pending (:func:`set_factors`),
    so the model still computes what it did. ``history``
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
    history: AdapterHistory | None = None,
) -> int:
    """Wrap ``model.encoder`` in a fresh LoRA initialized by ``init`` on every target layer
    (:func:`initial_adapters`, then :func:`attach_adapters`); returns the number of trainable
    encoder parameters."""
    adapters = initial_adapters(
        model.encoder, settings, target_modules, init, init_args, stats, generator
    )
    return attach_adapters(model, settings, target_modules, adapters, history)


def merge_lora(model: ContinualClassifier, history: AdapterHistory | None = None) -> None:
    """Fold the current adapter and its pending terms into the backbone's weights
    (:func:`merge_adapter`) and drop the PEFT wrapper (``history``, optional, records the
    adapter's final factors first)."""
    if isinstance(model.encoder, PeftModel):
        if history is not None:
            history.record_merge(model.encoder)
        for layer in lora_layers(model.encoder).values():
            merge_adapter(layer)
        model.encoder = model.encoder.unload()


def drop_lora(model: ContinualClassifier) -> None:
    """Remove the current adapter without merging it (the base weights stay as they are)."""
    if isinstance(model.encoder, PeftModel):
        model.encoder = model.encoder.unload()
