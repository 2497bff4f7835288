"""``seq-lora``: one LoRA adapter that keeps training across all tasks, never re-initialized.

The naive LoRA baseline that per-task re-initialization has to beat: the adapter attached (and
initialized with ``--init``, plain ``lora`` by default) before the first task is never merged
and never reset; every later task continues training the same ``A`` and ``B`` (with a fresh
optimizer per task, as in every cl-lora run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from cl_lora.baselines.registry import register

if TYPE_CHECKING:  # types only: registering a baseline must not load Avalanche or PEFT
    from cl_lora.backbones import ContinualClassifier


@register("seq-lora", "one LoRA trained on every task in turn, never merged or re-initialized")
class SequentialLoRA:
    """Attaches a LoRA before the first task only; later tasks keep training it."""

    def prepare_encoder(self, model: ContinualClassifier, generator: torch.Generator) -> int:
        from peft import PeftModel

        if isinstance(model.encoder, PeftModel):  # the adapter of the first task: keep it
            return sum(p.numel() for p in model.encoder.parameters() if p.requires_grad)
        return super().prepare_encoder(model, generator)
