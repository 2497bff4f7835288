"""Backbones: a pretrained model, its preprocessing, default LoRA targets, and task heads."""

from cl_lora.backbones.base import Backbone, linear_layer_names
from cl_lora.backbones.classifier import ContinualClassifier
from cl_lora.backbones.text import MINILM, load_text_backbone
from cl_lora.backbones.vit import MNIST_VIT, VIT_DEFAULT, load_vit_backbone

__all__ = [
    "MINILM",
    "MNIST_VIT",
    "VIT_DEFAULT",
    "Backbone",
    "ContinualClassifier",
    "linear_layer_names",
    "load_text_backbone",
    "load_vit_backbone",
]
