"""``seq-ft``: sequential full fine-tuning, no LoRA -- the forgetting ceiling.

Every encoder parameter (embeddings included) trains on every task, one task after another,
with nothing that protects earlier tasks. Full fine-tuning wants a much smaller learning rate
than a LoRA adapter (BERT's fine-tuning recipe, Devlin et al. 2019, uses 2e-5..5e-5), so the
encoder's rate is this baseline's own argument ``encoder_lr``
(``--baseline-arg encoder_lr=...``); ``--lr``
is the adapter rate and does not apply. Heads train at ``--head-lr`` as everywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from cl_lora.arguments import Argument
from cl_lora.baselines.registry import register

if TYPE_CHECKING:  # types only: registering a baseline must not load Avalanche or PEFT
    from cl_lora.backbones import ContinualClassifier


@register(
    "seq-ft",
    "sequential full fine-tuning, no LoRA: the forgetting ceiling",
    uses_init=False,
    arguments={"encoder_lr": Argument(float, 5e-5, "learning rate of the encoder's weights")},
)
class SequentialFineTuning:
    """All encoder weights train on each task in turn (AdamW, the suite's schedule)."""

    def __init__(self, *, encoder_lr: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lr = encoder_lr  # the encoder group of the per-task optimizer

    def prepare_encoder(self, model: ContinualClassifier, generator: torch.Generator) -> int:
        model.encoder.requires_grad_(True)
        return sum(p.numel() for p in model.encoder.parameters())
