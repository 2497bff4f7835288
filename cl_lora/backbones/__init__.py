"""Backbones: a pretrained model, its preprocessing, default LoRA targets, and task heads."""

from cl_lora.backbones.base import Backbone, linear_layer_names
from cl_lora.backbones.classifier import ContinualClassifier
from cl_lora.backbones.text import MINILM, load_text_backbone

__all__ = ["MINILM", "Backbone", "ContinualClassifier", "linear_layer_names", "load_text_backbone"]
