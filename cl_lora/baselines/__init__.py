"""Baselines that put the LoRA init methods in context (``--baseline NAME``).

========== ===============================================================================
seq-ft     sequential full fine-tuning, no LoRA: the forgetting ceiling
frozen     frozen backbone, only the task heads train: no backbone forgetting
joint      one LoRA trained on all tasks at once: the upper bound (last row of ``R`` only)
seq-lora   one LoRA trained across tasks, never re-initialized: the naive LoRA baseline
o-lora     new LoRA per task, its ``A`` kept orthogonal to earlier ``A`` (Wang et al. 2023)
inflora    new LoRA per task, ``A`` designed outside earlier inputs (Liang & Li 2024)
========== ===============================================================================
"""

from cl_lora.baselines import (  # noqa: F401  (built-ins register on import)
    frozen,
    inflora,
    joint,
    o_lora,
    seq_ft,
    seq_lora,
)
from cl_lora.baselines.registry import BASELINES, SEQUENTIAL_MATRIX, Baseline, register

__all__ = ["BASELINES", "SEQUENTIAL_MATRIX", "Baseline", "register"]
