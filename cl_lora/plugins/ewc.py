"""``--plugin ewc``: Avalanche's EWC (Kirkpatrick et al., PNAS 2017) over the *merged* weights.

What EWC means with a fresh LoRA per task: after task ``t`` its adapter is merged, and task
``t+1`` trains a new adapter whose parameters reuse the old ones' names but start from a new
init -- an ``A``/``B`` of task ``t+1`` has nothing to do with the ``A``/``B`` of task ``t``, so
Avalanche's stock EWC (which anchors every parameter *name* to its old value) would pull the
new adapter towards the old adapter's numbers, a meaningless target. The parameters the tasks
share are the adapted layers' *dense* weights. This plugin therefore runs EWC on each adapted
layer's effective weight ``W_eff = W_base + s B A`` (and on the heads):

- importance: the diagonal empirical Fisher ``E[(dL/dW_eff)^2]`` over the task's training
  batches, computed as the gradient w.r.t. the frozen base weight (it equals the gradient
  w.r.t. ``W_eff``, since ``W_eff`` is linear in it);
- anchor: the weight the task's merge writes (``W_eff`` when the task ends, cast once);
- penalty: ``lambda * sum_e sum F_e * (W_eff - W_anchor_e)^2`` over the finished tasks ``e``
  (``separate``, Avalanche's default) or over the last one with a decayed running importance
  (``online``), differentiable in the new ``A`` and ``B``.

At 7B (6.5B adapted weights) Avalanche's bookkeeping -- an anchor and an importance per task
and weight, and every merged weight rebuilt densely each step -- needs ~105 GB by task 2. The
plugin keeps the same penalty in a form whose size does not grow with the tasks: with
``D = W_eff - W_base = s (B A - B_0 A_0) + folds`` (the live adapter's low-rank change; the base
weight is the last anchor) and ``c_e = W_base - W_anchor_e``,
``sum_e F_e (D + c_e)^2 = F D^2 + 2 G D + H`` with ``F = sum_e F_e``, ``G = sum_e F_e c_e`` and the
scalar ``H = sum_e F_e c_e^2``, all three updated in place when a task ends from that task's
merged change. Per layer that is two tensors the weight's shape and dtype, whatever the
number of tasks; the penalty is computed one layer at a time and recomputed in the backward
pass (``torch.utils.checkpoint``), so no dense ``D`` outlives its layer. Avalanche keeps the
modes and the plugin hooks. Parameters that never train (the backbone's non-adapted weights,
finished per-task heads) cost nothing: their difference stays 0.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

from cl_lora.arguments import Argument
from cl_lora.errors import BadInputError
from cl_lora.plugins.registry import register_plugin

if TYPE_CHECKING:  # types only: registering a plugin must not load Avalanche or PEFT
    from cl_lora.backbones import ContinualClassifier


def _adapted_layers(model: ContinualClassifier) -> dict[str, Any]:
    from cl_lora.lora import lora_layers

    return lora_layers(model.encoder)


def changes(model: ContinualClassifier, anchors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Per penalized weight, a function giving its change since the last anchor: each adapted
    layer's ``s (B A - B_0 A_0) + folds`` (float32, differentiable in the adapter) and each
    head parameter minus its anchor (a head without one starts its own anchor)."""
    from cl_lora.lora import adapter_delta

    found = {name: partial(adapter_delta, layer) for name, layer in _adapted_layers(model).items()}
    for name, param in model.heads.named_parameters():
        anchor = anchors.get(f"heads.{name}")
        found[f"heads.{name}"] = partial(_head_change, param, anchor)
    return found


def _head_change(param: torch.Tensor, anchor: torch.Tensor | None) -> torch.Tensor:
    return param.float() if anchor is None else param.float() - anchor.float()


def _layer_penalty(
    change: Any, importance: torch.Tensor, pull: torch.Tensor, offset: torch.Tensor
) -> torch.Tensor:
    """``sum F D^2 + 2 sum G D + H`` of one weight (see the module)."""
    delta = change()
    return (importance * delta.square()).sum() + 2 * (pull * delta).sum() + offset


@register_plugin(
    "ewc",
    "EWC on the merged weights of the adapted layers (Kirkpatrick et al. 2017; Avalanche)",
    extends="avalanche.training.plugins:EWCPlugin",
    arguments={
        "ewc_lambda": Argument(float, 1e4, "weight of the EWC penalty"),
        "mode": Argument(str, "separate", "separate (one penalty per task) or online"),
        "decay_factor": Argument(float, 0.9, "online mode: decay of the old importance"),
    },
)
class MergedLoRAEWC:
    """EWC whose parameters are the merged dense weights of the adapted layers (see module),
    in ``separate`` mode (a penalty per finished task, Avalanche's default) or ``online`` mode
    (one running importance, decayed by ``decay_factor``)."""

    def __init__(self, ewc_lambda: float, mode: str, decay_factor: float) -> None:
        if mode not in ("separate", "online"):
            raise BadInputError(f"--plugin-arg mode={mode!r}: EWC's mode is separate or online")
        online_decay = decay_factor if mode == "online" else None
        super().__init__(ewc_lambda, mode=mode, decay_factor=online_decay)
        self.importance: dict[str, torch.Tensor] = {}  # F, per weight
        self.pull: dict[str, torch.Tensor] = {}  # G
        self.offset: dict[str, torch.Tensor] = {}  # H (a scalar)
        self.head_anchors: dict[str, torch.Tensor] = {}  # heads train directly: their anchors

    def penalty(self, model: ContinualClassifier) -> torch.Tensor | None:
        """``sum_e sum F_e (W_eff - W_anchor_e)^2`` over every penalized weight, one layer at a
        time (``None`` before the first task ends)."""
        from torch.utils.checkpoint import checkpoint

        terms = [
            checkpoint(
                _layer_penalty,
                change,
                self.importance[k],
                self.pull[k],
                self.offset[k],
                use_reentrant=False,
            )
            for k, change in changes(model, self.head_anchors).items()
            if k in self.importance
        ]
        return torch.stack(terms).sum() if terms else None

    def before_backward(self, strategy: Any, **kwargs: Any) -> None:
        penalty = self.penalty(strategy.model)
        if penalty is not None:
            strategy.loss += self.ewc_lambda * penalty

    @torch.no_grad()
    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        """Fold the finished task in: the anchors move by its merged change (``G``, ``H``),
        then its Fisher joins the importance (summed, or decayed in ``online`` mode)."""
        model = strategy.model
        for k, change in changes(model, self.head_anchors).items():
            moved = self._merged_change(model, k, change())
            if k in self.importance and self.mode == "separate":
                pull = self.pull[k].float()
                importance = self.importance[k].float()
                self.offset[k] += 2 * (pull * moved).sum() + (importance * moved.square()).sum()
                self.pull[k].copy_(pull + importance * moved)
        heads = {f"heads.{n}": p.detach().clone() for n, p in model.heads.named_parameters()}
        self.head_anchors.update(heads)
        if self.mode == "online":
            for importance in self.importance.values():
                importance.mul_(self.decay_factor)
        self.add_fisher(strategy)

    @staticmethod
    def _merged_change(model: ContinualClassifier, k: str, delta: torch.Tensor) -> torch.Tensor:
        """How far the anchor of ``k`` moves: a head's change; an adapted layer's merged
        weight minus its base weight, rounded as :func:`cl_lora.lora.merge_adapter` rounds."""
        if k.startswith("heads."):
            return delta
        weight = _adapted_layers(model)[k].get_base_layer().weight
        return (weight.float() + delta).to(weight.dtype).float() - weight.float()

    def checkpoint_state(self) -> dict[str, Any]:
        """``F``, ``G``, ``H`` and the heads' anchors, as named tensors."""
        return {
            "importance": self.importance,
            "pull": self.pull,
            "offset": self.offset,
            "head_anchors": self.head_anchors,
        }

    def restore_checkpoint_state(
        self, state: dict[str, Any], strategy: Any, experiences: Any
    ) -> None:
        for part, tensors in state.items():
            setattr(self, part, {k: t.to(strategy.device) for k, t in tensors.items()})

    def add_fisher(self, strategy: Any) -> None:
        """Add the diagonal empirical Fisher of the effective weights on the task's training
        data to each importance (created at zero, in the weight's dtype and device)."""
        model = strategy.model
        bases = {
            name: layer.get_base_layer().weight for name, layer in _adapted_layers(model).items()
        }
        targets = bases | {f"heads.{n}": p for n, p in model.heads.named_parameters()}
        for k, p in targets.items():
            if k not in self.importance:
                self.importance[k] = torch.zeros_like(p, requires_grad=False)
                self.pull[k] = torch.zeros_like(p, requires_grad=False)
                self.offset[k] = torch.zeros((), device=p.device)
        loader = DataLoader(
            strategy.experience.dataset,
            batch_size=strategy.train_mb_size,
            collate_fn=strategy.collate,
        )
        count = max(1, len(loader))
        was_training = model.training
        model.eval()
        for weight in bases.values():
            weight.requires_grad_(True)
        try:
            with torch.enable_grad():
                for inputs, labels, tasks in loader:
                    inputs = {k: v.to(strategy.device) for k, v in inputs.items()}
                    loss = strategy.problem.batch_loss(
                        model, inputs, labels.to(strategy.device), tasks.to(strategy.device)
                    )
                    grads = torch.autograd.grad(loss, list(targets.values()), allow_unused=True)
                    for k, grad in zip(targets, grads, strict=True):
                        if grad is not None:
                            self.importance[k] += grad.square() / count
        finally:
            for weight in bases.values():
                weight.requires_grad_(False)
            model.train(was_training)
