"""What every backbone provides to the strategy, whatever its modality."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

Inputs = dict[str, torch.Tensor]


@dataclass
class Backbone:
    """A pretrained network plus what it takes to feed it.

    ``encoder`` is the network LoRA adapts (a feature extractor, or a whole language model);
    ``target_modules`` are the linear layers LoRA adapts by default; ``family`` names the
    registered backbone family that built it (:mod:`cl_lora.backbones.registry`).

    Classification backbones give ``collate`` (raw examples, rows of a task's dataset, into
    the encoder's inputs) and ``features`` (the encoder's output into one ``feature_dim``
    vector per example, which the task heads read). Language models give their ``tokenizer``
    instead: the text-to-text problem batches prompts and targets itself.

    ``source`` says where the weights came from, for the result file. ``knowledge_head`` is
    the pretrained classifier, frozen, when the backbone keeps one for the data named by
    ``knowledge`` (the retention probe scores that data with it instead of fitting a head).
    """

    encoder: nn.Module
    target_modules: list[str]
    family: str = ""
    collate: Callable[[Sequence[dict[str, Any]]], Inputs] | None = None
    features: Callable[[nn.Module, Inputs], torch.Tensor] | None = None
    feature_dim: int | None = None
    tokenizer: Any = None
    source: dict[str, Any] = field(default_factory=dict)
    knowledge_head: nn.Module | None = None
    knowledge: str | None = None


def linear_layer_names(model: nn.Module, exclude: Sequence[str] = ()) -> list[str]:
    """Full names of the ``nn.Linear`` layers of ``model`` whose name contains no ``exclude``."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not any(part in name for part in exclude)
    ]


def weights_fingerprint(model: nn.Module) -> str:
    """A SHA-256 of every parameter and buffer (name, dtype, shape, bytes) of ``model``, first
    16 hex digits: equal exactly when the weights are bit-identical. A backbone built on each
    machine (e.g. the MNIST ViT pretrained at first use) can differ between CPUs; this is how
    results tell."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().contiguous().cpu()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]


def pretrained_model(
    auto_class: Any, location: str, weights: bool = True, **kwargs: Any
) -> nn.Module:
    """``auto_class.from_pretrained(location, **kwargs)`` (a transformers auto class); with
    ``weights`` False the same architecture built from the checkpoint's config on the meta
    device, reading no weights (they are filled in later by another process's)."""
    if weights:
        return auto_class.from_pretrained(location, **kwargs)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(location)
    with torch.device("meta"):
        return auto_class.from_config(config, **kwargs)
