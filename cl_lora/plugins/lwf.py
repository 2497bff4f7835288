"""``--plugin lwf``: Avalanche's Learning without Forgetting (Li & Hoiem, TPAMI 2017).

While task ``t`` trains, the model after task ``t-1`` (a frozen copy, adapter included) labels
the current inputs, and the current model is distilled towards those soft labels (temperature
``temperature``, weight ``alpha``). What is distilled is the run's problem's to say:

- classification: Avalanche's LwF over every earlier head, on the earlier tasks' classes only;
  it reaches every head through ``model(x, None)``, which
  :class:`~cl_lora.backbones.ContinualClassifier` answers with one encoder pass and one output
  per distinct head (a shared head is distilled once, not once per task);
- text-to-text: the previous model's next-token distributions at the target positions.

The teacher is not a copy of the model (a 7B model in bf16 is 13.5 GB more, and Avalanche's
deep copy at a task's end briefly holds three). When the task attached a fresh adapter (every
per-task LoRA method), the model before the task *is* the current model with that adapter
switched off: an init leaves the base weights untouched (:mod:`cl_lora.lora`), so
``disable_adapter()`` computes exactly what the previous task's merged model computed; the
teacher is a view of the model that runs its encoder so (LoRA-Dash's extra term, part of the
adapter, switched off too), in eval mode (its soft labels are not dropout noise), with a copy
of the heads as the task found them (small). Whether the adapter is fresh is read off the
model (:func:`adapter_adds_nothing`); a run that keeps training the same weights across tasks
(``seq-ft``, ``seq-lora``) still copies the model, once, at the task's start.
Avalanche's LwF keeps the distillation and the bookkeeping.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from cl_lora.arguments import Argument
from cl_lora.plugins.registry import register_plugin


class AdapterOff(nn.Module):
    """The shared PEFT ``encoder`` run with its adapter switched off and in eval mode."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.inner = encoder

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with _eval_mode(self.inner), self.inner.disable_adapter():
            return self.inner(*args, **kwargs)


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def teacher_view(model: nn.Module) -> nn.Module:
    """``model`` as it was before this task's fresh adapter: the same module sharing every
    weight, its encoder run adapter-off (:class:`AdapterOff`), its heads a frozen copy."""
    view = copy.copy(model)
    view._modules = dict(model._modules)  # its own module table; the modules are shared
    view._modules["encoder"] = AdapterOff(model.encoder)
    view._modules["heads"] = copy.deepcopy(model.heads).requires_grad_(False)
    view.training = False  # not .eval(): that would reach the shared modules
    return view


def adapter_adds_nothing(encoder: nn.Module) -> bool:
    """Whether ``encoder`` is a PEFT model whose adapter changes no weight yet (a fresh
    per-task adapter: ``s (B A - B_0 A_0)`` is exactly 0), so switching it off gives the same
    function."""
    from peft import PeftModel

    from cl_lora.lora import adapter_delta, lora_layers

    if not isinstance(encoder, PeftModel):
        return False
    with torch.no_grad():
        return not any(adapter_delta(layer).any() for layer in lora_layers(encoder).values())


@register_plugin(
    "lwf",
    "Learning without Forgetting: distill the previous model's heads (Li & Hoiem; Avalanche)",
    extends="avalanche.training.plugins:LwFPlugin",
    arguments={
        "alpha": Argument(float, 1.0, "weight of the distillation loss"),
        "temperature": Argument(float, 2.0, "softmax temperature of the distillation"),
    },
)
class TeacherEvalLwF:
    """Avalanche's LwF with a deterministic (eval-mode) teacher."""

    def before_backward(self, strategy: Any, **kwargs: Any) -> None:
        strategy.loss += strategy.problem.distillation(self.lwf, strategy)

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        """This task's teacher (none on the first): a view of the model when its adapter is
        at its initial factors (it adds nothing yet), else a copy of the model."""
        self.lwf.prev_model = None  # the last task's, before anything is copied
        if self.lwf.expcount == 0:
            return
        if adapter_adds_nothing(strategy.model.encoder):
            self.lwf.prev_model = teacher_view(strategy.model)
        else:
            self.lwf.prev_model = copy.deepcopy(strategy.model).eval()

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        """Avalanche's bookkeeping of the finished task (its count and classes), without its
        copy of the model: the next task builds its teacher."""
        self.lwf.expcount += 1
        dataset = strategy.experience.dataset
        for task_id in dataset.targets_task_labels.uniques:
            classes = set(dataset.task_set[task_id].targets.uniques)
            known = self.lwf.prev_classes_by_task.get(task_id, set())
            self.lwf.prev_classes_by_task[task_id] = known | classes

    def checkpoint_state(self) -> dict[str, Any]:
        """Counts and classes; the teacher is rebuilt when the next task starts."""
        return {
            "expcount": self.lwf.expcount,
            "prev_classes_by_task": dict(self.lwf.prev_classes_by_task),
        }

    def restore_checkpoint_state(
        self, state: dict[str, Any], strategy: Any, experiences: Any
    ) -> None:
        self.lwf.expcount = state["expcount"]
        self.lwf.prev_classes_by_task.clear()
        self.lwf.prev_classes_by_task.update(state["prev_classes_by_task"])
