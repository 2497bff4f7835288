"""Baselines that put the LoRA init methods in context (``--baseline NAME``), and continual-
learning plugins that compose with any init (``--plugin NAME``).

========== ===============================================================================
seq-ft     sequential full fine-tuning, no LoRA: the forgetting ceiling
frozen     frozen backbone, only the task heads train: no backbone forgetting
joint      one LoRA trained on all tasks at once: the upper bound (last row of ``R`` only)
seq-lora   one LoRA trained across tasks, never re-initialized: the naive LoRA baseline
o-lora     new LoRA per task, its ``A`` kept orthogonal to earlier ``A`` (Wang et al. 2023)
inflora    new LoRA per task, ``A`` designed outside earlier inputs (Liang & Li 2024)
========== ===============================================================================

Plugins (with the suite's fresh LoRA per task, any ``--init``): ``ewc``, ``lwf``, ``replay``.
"""

from baselines import ewc, frozen, inflora, joint, lwf, o_lora, replay, seq_ft, seq_lora
from baselines.registry import (
    Baseline,
    Plugin,
    available,
    available_plugins,
    get,
    get_plugin,
    register,
    register_plugin,
    split_plugin_args,
)

__all__ = [
    "Baseline",
    "Plugin",
    "available",
    "available_plugins",
    "ewc",
    "frozen",
    "get",
    "get_plugin",
    "inflora",
    "joint",
    "lwf",
    "o_lora",
    "register",
    "register_plugin",
    "replay",
    "seq_ft",
    "seq_lora",
    "split_plugin_args",
]
