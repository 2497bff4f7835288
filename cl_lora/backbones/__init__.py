"""Backbones: registered families of pretrained models (see :mod:`.registry`), each giving a
:class:`Backbone`: the network LoRA adapts, its preprocessing and default LoRA targets."""

from typing import Any

from cl_lora.backbones import (  # noqa: F401  (register families)
    causal_lm,
    mnist_vit,
    seq2seq_lm,
    text,
    vit,
)
from cl_lora.backbones.base import Backbone, linear_layer_names
from cl_lora.backbones.language_model import LanguageModel
from cl_lora.backbones.registry import FAMILIES, Family, LoadOptions, family_for
from cl_lora.backbones.text import MINILM, load_text_backbone
from cl_lora.backbones.vit import MNIST_VIT, VIT_DEFAULT, load_vit_backbone

__all__ = [
    "FAMILIES",
    "MINILM",
    "MNIST_VIT",
    "VIT_DEFAULT",
    "Backbone",
    "ContinualClassifier",
    "Family",
    "LanguageModel",
    "LoadOptions",
    "family_for",
    "linear_layer_names",
    "load_text_backbone",
    "load_vit_backbone",
]


def __getattr__(name: str) -> Any:
    """``ContinualClassifier`` builds on Avalanche's ``MultiTaskModule``, so it is imported on
    first use: listing the backbone families does not load Avalanche."""
    if name == "ContinualClassifier":
        from cl_lora.backbones.classifier import ContinualClassifier

        return ContinualClassifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
