"""cl-lora: a continual-learning benchmark suite for LoRA initialization methods."""

from cl_lora import _torchvision_compat  # noqa: F401  (must run before torchvision is imported)

__version__ = "0.1.0"
