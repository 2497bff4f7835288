"""What a run changed in its backbone, as low-rank steps that rebuild it from the pretrained one.

A cl-lora run changes an adapted layer's base weight only through :mod:`cl_lora.lora`: the init
holds ``-s B_0 A_0`` as a pending term, a method may add further low-rank terms
(LoRA-Dash: ``(u d) v``, :func:`~cl_lora.lora.add_fold`), and the end of the task merges
``W <- W + s (B A - B_0 A_0) + folds``. :class:`LoRAHistory` records the factors of each step,
one episode per attached adapter, and :func:`replay` applies them again in the same order
through the same calls, so the rebuilt weights equal the original ones bit for bit (same
device, same kernels).
A checkpoint of a rank-8 run then holds a few factors per layer and task instead of the model.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora import LoraLayer

from cl_lora.lora import (
    ADAPTER,
    LoRASettings,
    add_fold,
    lora_config,
    lora_layers,
    merge_lora,
    set_factors,
    wrap_lora,
)


def _on_cpu(value: Any) -> Any:
    """``value`` (tensors in dicts, lists and tuples) with every tensor copied to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _on_cpu(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_on_cpu(item) for item in value)
    return value


def _factors(layer: LoraLayer) -> dict[str, torch.Tensor]:
    return _on_cpu({"A": layer.lora_A[ADAPTER].weight, "B": layer.lora_B[ADAPTER].weight})


class LoRAHistory:
    """Per attached adapter (an *episode*): each layer's initial factors and which of them
    train, the low-rank terms folded into its base weight, and its factors when merged.

    The episode whose adapter is still attached has no final factors: :meth:`state` reads them
    from the live model. Everything is kept on the CPU: it grows by an adapter per task and is
    read only to write a checkpoint or to replay one (which copies it back to the layers'
    device).
    """

    def __init__(self) -> None:
        self.episodes: list[dict[str, Any]] = []

    def begin(self) -> None:
        """A fresh adapter was attached."""
        self.episodes.append({"init": {}, "trainable": {}, "folds": {}, "final": None})

    def record_init(self, name: str, layer: LoraLayer) -> None:
        """``layer`` holds its initial factors (and ``-s B_0 A_0`` pending); a zero factor
        holds nothing, so nothing needs replaying (``None``)."""
        episode = self.episodes[-1]
        initial = _factors(layer)
        episode["init"][name] = initial if all(f.any() for f in initial.values()) else None
        parts = {"A": layer.lora_A[ADAPTER].weight, "B": layer.lora_B[ADAPTER].weight}
        episode["trainable"][name] = [part for part, p in parts.items() if p.requires_grad]

    def record_fold(self, name: str, left: torch.Tensor, right: torch.Tensor) -> None:
        """``left @ right`` was folded into layer ``name`` (:func:`~cl_lora.lora.add_fold`)."""
        folds = self.episodes[-1]["folds"].setdefault(name, [])
        folds.append(_on_cpu((left, right)))

    def record_merge(self, encoder: torch.nn.Module) -> None:
        """The live adapter is about to be merged: keep its final factors."""
        self.episodes[-1]["final"] = {
            name: _factors(layer) for name, layer in lora_layers(encoder).items()
        }

    def state(self, encoder: torch.nn.Module) -> list[dict[str, Any]]:
        """Every episode as plain data and tensors; the live one with the model's factors."""
        episodes = [dict(episode) for episode in self.episodes]
        if episodes and episodes[-1]["final"] is None:
            live = {name: _factors(layer) for name, layer in lora_layers(encoder).items()}
            episodes[-1] = {**episodes[-1], "final": live, "live": True}
        return episodes

    def restore(self, episodes: list[dict[str, Any]]) -> None:
        """Take back the episodes :meth:`state` returned (after :func:`replay`)."""
        self.episodes = []
        for episode in _on_cpu(episodes):
            kept = {key: value for key, value in episode.items() if key != "live"}
            if episode.get("live"):
                kept["final"] = None
            self.episodes.append(kept)


def replay(
    model: torch.nn.Module,
    episodes: list[dict[str, Any]],
    settings: LoRASettings,
    target_modules: list[str],
) -> None:
    """Apply ``episodes`` (from :meth:`LoRAHistory.state`) to ``model``, whose encoder holds
    the pretrained weights: attach, set the factors, fold, merge -- in the original order.
    The live episode stays attached, with its trained factors and trainable flags."""
    config = lora_config(settings, target_modules)
    for episode in episodes:
        wrap_lora(model, config)
        for name, layer in lora_layers(model.encoder).items():
            initial = episode["init"][name]
            if initial is not None:
                set_factors(layer, initial["A"], initial["B"])
            for left, right in episode["folds"].get(name, []):
                add_fold(layer, left, right)
            final = episode["final"][name]
            with torch.no_grad():
                layer.lora_A[ADAPTER].weight.copy_(final["A"])
                layer.lora_B[ADAPTER].weight.copy_(final["B"])
            trainable = episode["trainable"][name]
            layer.lora_A[ADAPTER].weight.requires_grad_("A" in trainable)
            layer.lora_B[ADAPTER].weight.requires_grad_("B" in trainable)
        if not episode.get("live"):
            merge_lora(model)
