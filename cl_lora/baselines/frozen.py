"""``frozen``: the pretrained backbone never changes; only the task heads train.

The no-forgetting floor of the backbone: with one head per task, a finished task's head and the
backbone stay bit-identical, so its score cannot move (forgetting exactly 0). With a shared head
(domain-incremental streams) the head itself still trains on every task and can forget.
"""

from __future__ import annotations

import torch

from cl_lora.baselines.registry import register


@register(
    "frozen",
    "frozen backbone, no LoRA: only the task heads train",
    uses_init=False,
    refuses={
        "text-to-text": "a language model has no task heads to train, so nothing would learn "
        "(use seq-lora or seq-ft as the reference instead)"
    },
    no_adapter="its backbone never changes (only the task heads train)",
)
class FrozenBackbone:
    """Linear probing per task: no adapter, every encoder parameter frozen."""

    def prepare_encoder(self, model: torch.nn.Module, generator: torch.Generator) -> int:
        model.encoder.requires_grad_(False)
        return 0
