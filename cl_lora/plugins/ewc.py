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
- anchor: ``W_eff`` when the task ends, which is exactly the weight the next task's merge
  produces (any init's residual + ``s B_0 A_0`` is that weight again);
- penalty: ``lambda * sum F * (W_eff - W_anchor)^2``, differentiable in the new ``A`` and
  ``B`` through ``W_eff``.

Avalanche's own code keeps the rest: the ``separate``/``online`` modes and its importance
update (:meth:`EWCPlugin.update_importances`). Parameters that never train (the backbone's
non-adapted weights, finished per-task heads) cost nothing: their difference stays 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

from cl_lora.arguments import Argument
from cl_lora.errors import BadInputError
from cl_lora.plugins.registry import register_plugin

if TYPE_CHECKING:  # types only: registering a plugin must not load Avalanche or PEFT
    from avalanche.training.utils import ParamData

    from cl_lora.backbones import ContinualClassifier


def effective_weights(model: ContinualClassifier) -> dict[str, torch.Tensor]:
    """Each adapted layer's ``W_base + s B A`` (by layer name) and every head parameter
    (``heads.<key>.<param>``), differentiable in the adapter and the heads."""
    from cl_lora.lora import adapter_delta, lora_layers

    weights = {
        name: layer.get_base_layer().weight + adapter_delta(layer)
        for name, layer in lora_layers(model.encoder).items()
    }
    weights |= {f"heads.{name}": p for name, p in model.heads.named_parameters()}
    return weights


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

    def before_backward(self, strategy: Any, **kwargs: Any) -> None:
        done = strategy.clock.train_exp_counter
        if done == 0:
            return
        current = effective_weights(strategy.model)
        anchors = range(done) if self.mode == "separate" else [done - 1]
        terms = [
            (self.importances[e][k].data * (w - self.saved_params[e][k].data).pow(2)).sum()
            for e in anchors
            for k, w in current.items()
            if k in self.saved_params[e]
        ]
        if terms:
            strategy.loss += self.ewc_lambda * torch.stack(terms).sum()

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        from avalanche.training.utils import ParamData

        done = strategy.clock.train_exp_counter
        self.update_importances(self.fisher(strategy), done)
        with torch.no_grad():
            self.saved_params[done] = {
                k: ParamData(k, init_tensor=w.detach().clone(), device=w.device)
                for k, w in effective_weights(strategy.model).items()
            }
        if done > 0 and not self.keep_importance_data:
            del self.saved_params[done - 1]

    def checkpoint_state(self) -> dict[str, Any]:
        """Anchors and importances per finished task, as named tensors."""
        return {
            part: {
                task: {key: (value.name, value.data) for key, value in params.items()}
                for task, params in getattr(self, part).items()
            }
            for part in ("saved_params", "importances")
        }

    def restore_checkpoint_state(
        self, state: dict[str, Any], strategy: Any, experiences: Any
    ) -> None:
        from avalanche.training.utils import ParamData

        for part, tasks in state.items():
            target = getattr(self, part)
            target.clear()
            for task, params in tasks.items():
                target[task] = {
                    key: ParamData(name, init_tensor=data, device=data.device)
                    for key, (name, data) in params.items()
                }

    @staticmethod
    def fisher(strategy: Any) -> dict[str, ParamData]:
        """Diagonal empirical Fisher of the effective weights on the task's training data."""
        from avalanche.training.utils import ParamData

        from cl_lora.lora import lora_layers

        model = strategy.model
        bases = {
            name: layer.get_base_layer().weight
            for name, layer in lora_layers(model.encoder).items()
        }
        targets = bases | {f"heads.{n}": p for n, p in model.heads.named_parameters()}
        sums = {k: torch.zeros_like(p) for k, p in targets.items()}
        loader = DataLoader(
            strategy.experience.dataset,
            batch_size=strategy.train_mb_size,
            collate_fn=strategy.collate,
        )
        was_training = model.training
        model.eval()
        for weight in bases.values():
            weight.requires_grad_(True)
        try:
            for inputs, labels, tasks in loader:
                inputs = {k: v.to(strategy.device) for k, v in inputs.items()}
                loss = strategy.problem.batch_loss(
                    model, inputs, labels.to(strategy.device), tasks.to(strategy.device)
                )
                grads = torch.autograd.grad(loss, list(targets.values()), allow_unused=True)
                for k, grad in zip(targets, grads, strict=True):
                    if grad is not None:
                        sums[k] += grad.pow(2)
        finally:
            for weight in bases.values():
                weight.requires_grad_(False)
            model.train(was_training)
        count = max(1, len(loader))
        return {
            k: ParamData(f"imp_{k}", init_tensor=s / count, device=s.device)
            for k, s in sums.items()
        }
