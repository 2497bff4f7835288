"""LoRA-Dash as an Avalanche plugin (Si et al., ICLR 2025, "Unleashing the Power of
Task-Specific Directions in Parameter Efficient Fine-tuning").

After ``t`` optimizer steps of a task, each adapted layer's top-``s`` task-specific directions
(the singular pairs ``u_i, v_i`` of its frozen weight whose change rate under the LoRA update so
far is largest) get one trainable scalar each: the layer computes
``y = W x + s_lora B A x + sum_i d_i u_i v_i^T x`` with ``d`` starting at 0 and ``u, v`` frozen.
When the task ends the term becomes part of the layer's frozen weight
(:func:`~cl_lora.lora.add_fold`), which the task's merge writes into the base weight, so the
next task's re-init sees an ordinary layer.
"""

from __future__ import annotations

from typing import Any

import torch
from avalanche.core import SupervisedPlugin
from torch import nn

from cl_lora.inits.lora_dash import change_rates
from cl_lora.lora import ADAPTER, add_fold, frozen_weight, lora_layers


class DashDirections(nn.Module):
    """The extra term ``sum_i d_i u_i v_i^T x`` of one layer."""

    def __init__(self, u: torch.Tensor, v: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("u", u)  # out x s
        self.register_buffer("v", v)  # s x in
        self.d = nn.Parameter(torch.zeros(u.shape[1], device=u.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.to(self.v.dtype) @ self.v.T) * self.d) @ self.u.T


class DashPlugin(SupervisedPlugin):
    """Adds the LoRA-Dash term to every adapted layer after ``t`` optimizer steps of a task."""

    def __init__(self, s: int = 8, t: int = 100) -> None:
        super().__init__()
        self.s, self.t = s, t
        self.steps = 0
        self.terms: dict[str, DashDirections] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> DashPlugin:
        return cls(s=args["s"], t=args["t"])

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self.steps = 0

    def after_update(self, strategy: Any, **kwargs: Any) -> None:
        self.steps += 1
        if self.steps == self.t:
            self._add_directions(strategy)

    def _add_directions(self, strategy: Any) -> None:
        for name, layer in lora_layers(strategy.model.encoder).items():
            weight = frozen_weight(layer)
            lora_A, lora_B = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
            delta = (layer.scaling[ADAPTER] * lora_B.detach().float(), lora_A.detach().float())
            U, S, Vh = torch.linalg.svd(weight, full_matrices=False)
            chosen = change_rates(U, S, Vh, delta).topk(min(self.s, len(S))).indices
            term = DashDirections(U[:, chosen].contiguous(), Vh[chosen].contiguous())
            self.terms[name] = term
            self._handles.append(
                layer.register_forward_hook(
                    lambda module, args, out, term=term: (
                        out if module.disable_adapters else out + term(args[0]).to(out.dtype)
                    )
                )
            )
        parameters = [term.d for term in self.terms.values()]
        strategy.optimizer.add_param_group({"params": parameters, "lr": strategy.lr})
        scheduler = strategy.scheduler
        scheduler.base_lrs.append(strategy.lr)  # the new group follows the same schedule
        scheduler.lr_lambdas.append(scheduler.lr_lambdas[0])

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        """Make each term part of its layer's frozen weight (recorded in the strategy's
        history, so a checkpoint can replay it) and remove the hooks."""
        layers = lora_layers(strategy.model.encoder)
        history = getattr(strategy, "history", None)
        for name, term in self.terms.items():
            left = (term.u * term.d).detach()
            add_fold(layers[name], left, term.v)
            if history is not None:
                history.record_fold(name, left, term.v)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.terms.clear()


TRAINING_PLUGINS = {"dash": DashPlugin}
