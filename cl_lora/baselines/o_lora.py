"""``o-lora``: orthogonal subspace learning (Wang et al., 2023, "Orthogonal Subspace Learning
for Language Model Continual Learning", Findings of EMNLP 2023, arXiv:2310.14152).

A new LoRA per task; earlier tasks' adapters are frozen, and the new adapter's ``A`` is pushed
orthogonal to every earlier task's ``A`` by a penalty, and task ``t`` trains on
``L = L_task + lambda_1 sum_{i<t} L_orth(A_i, A_t) + lambda_2 sum ||new LoRA params||_2``
(the training objective of Sec. 3; ``lambda_2`` is the L2 term on the new adapter in the
official code, 0 by default; ``lambda_1 = 0.5`` is the official scripts' value).

``penalty`` picks ``L_orth`` with ``O_{i,t} = A_i A_t^T``:

- ``abs`` (default): ``sum_{j,k} |O_{i,t}[j,k]|``, what the official code computes
  (cmnfriend/O-LoRA, ``src/uie_trainer_lora.py``: ``torch.abs(torch.mm(param, param_.T)).sum()``
  over every earlier ``lora_A``). With ``lambda_1 = 0.5`` this is the setting O-LoRA's numbers
  were produced with.
- ``squared``: ``sum_{j,k} O_{i,t}[j,k]^2``, the paper's formula (Sec. 3, the orthogonality
  loss). Its gradient is ``2 O`` instead of ``sign(O)``: for the small entries of nearly
  orthogonal factors it is 10-30x weaker at the same ``lambda_1``.

As in the official code, ``A`` is the adapter's down-projection (PEFT's ``lora_A``, ``r x n``,
whose rows are the input directions it reads), so ``O`` is ``A_i A_t^T`` here. Frozen earlier
adapters add ``s B_i A_i`` to the layer; folding them into the base weight (the suite's merge)
computes exactly the same function, so this strategy merges as usual and only keeps each
layer's earlier ``A_i`` for the penalty.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from cl_lora.arguments import Argument
from cl_lora.baselines.registry import register

if TYPE_CHECKING:  # types only: registering a baseline must not load Avalanche or PEFT
    from cl_lora.backbones import ContinualClassifier

PENALTIES = ("abs", "squared")


def orthogonality_penalty(
    earlier: Mapping[str, torch.Tensor], current: Mapping[str, torch.Tensor], kind: str = "abs"
) -> torch.Tensor:
    """``sum_layers sum |A_earlier A_t^T|`` (``abs``) or ``sum_layers ||A_earlier A_t^T||_F^2``
    (``squared``): zero iff every current ``A_t`` row is orthogonal to every earlier row of the
    same layer.

    ``earlier[name]`` stacks the rows of all earlier tasks' ``A`` of a layer
    (``(t r) x n``), so the sum over earlier tasks of O-LoRA's ``L_orth`` is one product.
    """
    entry = torch.abs if kind == "abs" else torch.square
    terms = [entry(earlier[name] @ a.T).sum() for name, a in current.items() if name in earlier]
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()


@register(
    "o-lora",
    "O-LoRA: new LoRA per task, A kept orthogonal to earlier tasks' A (Wang et al. 2023)",
    arguments={
        "lambda_orth": Argument(float, 0.5, "weight of the orthogonality loss (lambda_1)"),
        "lambda_l2": Argument(float, 0.0, "weight of the L2 norm of the new adapter (lambda_2)"),
        "penalty": Argument(
            str,
            "abs",
            "abs: the official code's sum |A_i A_t^T|; squared: the paper's formula",
            choices=PENALTIES,
        ),
    },
)
class OrthogonalLoRA:
    """The suite's merge + fresh LoRA per task, plus O-LoRA's penalty on the new ``A``."""

    checkpointed = ("earlier_A",)

    def __init__(
        self, *, lambda_orth: float, lambda_l2: float, penalty: str, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.lambda_orth, self.lambda_l2, self.penalty = lambda_orth, lambda_l2, penalty
        self.earlier_A: dict[str, torch.Tensor] = {}
        self._earlier_on_device: dict[str, torch.Tensor] | None = None

    def prepare_encoder(self, model: ContinualClassifier, generator: torch.Generator) -> int:
        from peft import PeftModel

        if isinstance(model.encoder, PeftModel):  # keep the finished task's A before merging
            for name, a in self._current_A(model).items():
                a = a.detach().to("cpu", copy=True)  # kept on the CPU between tasks
                previous = self.earlier_A.get(name)  # a resumed run loads it on the device
                self.earlier_A[name] = a if previous is None else torch.cat([previous.cpu(), a])
        self._earlier_on_device = None  # copied to the device once the task trains
        return super().prepare_encoder(model, generator)

    def _earlier_A(self) -> dict[str, torch.Tensor]:
        """The earlier tasks' ``A`` rows on the device, copied once per task from the CPU."""
        if self._earlier_on_device is None:
            self._earlier_on_device = {
                name: a.to(self.device, non_blocking=True) for name, a in self.earlier_A.items()
            }
        return self._earlier_on_device

    @staticmethod
    def _current_A(model: ContinualClassifier) -> dict[str, torch.Tensor]:
        from cl_lora.lora import ADAPTER, lora_layers

        return {
            name: layer.lora_A[ADAPTER].weight for name, layer in lora_layers(model.encoder).items()
        }

    def criterion(self) -> torch.Tensor:
        loss = super().criterion()
        if not self.is_training:
            return loss
        if self.earlier_A and self.lambda_orth:
            penalty = orthogonality_penalty(
                self._earlier_A(), self._current_A(self.model), self.penalty
            )
            loss = loss + self.lambda_orth * penalty.to(loss.device)
        if self.lambda_l2:
            new = [p for p in self.model.encoder.parameters() if p.requires_grad]
            loss = loss + self.lambda_l2 * torch.stack([p.norm() for p in new]).sum()
        return loss
