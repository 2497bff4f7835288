"""``--plugin lwf``: Avalanche's Learning without Forgetting (Li & Hoiem, TPAMI 2017).

While task ``t`` trains, the model after task ``t-1`` (a frozen copy, adapter included) labels
the current inputs, and the current model is distilled towards those soft labels (temperature
``temperature``, weight ``alpha``). What is distilled is the run's problem's to say:

- classification: Avalanche's LwF over every earlier head, on the earlier tasks' classes only;
  it reaches every head through ``model(x, None)``, which
  :class:`~cl_lora.backbones.ContinualClassifier` answers with one encoder pass and one output
  per distinct head (a shared head is distilled once, not once per task);
- text-to-text: the previous model's next-token distributions at the target positions.

Avalanche keeps the teacher and the bookkeeping; one change: the teacher is put in eval mode,
so its soft labels are not dropout noise.
"""

from __future__ import annotations

import copy
from typing import Any

from cl_lora.arguments import Argument
from cl_lora.plugins.registry import register_plugin


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

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        super().after_training_exp(strategy, **kwargs)
        self.lwf.prev_model.eval()

    def checkpoint_state(self) -> dict[str, Any]:
        """The teacher is not stored: after a task it is a copy of the model as the task left
        it, which is what the checkpoint's model is."""
        return {
            "expcount": self.lwf.expcount,
            "prev_classes_by_task": dict(self.lwf.prev_classes_by_task),
            "has_teacher": self.lwf.prev_model is not None,
        }

    def restore_checkpoint_state(
        self, state: dict[str, Any], strategy: Any, experiences: Any
    ) -> None:
        self.lwf.expcount = state["expcount"]
        self.lwf.prev_classes_by_task.clear()
        self.lwf.prev_classes_by_task.update(state["prev_classes_by_task"])
        if state["has_teacher"]:
            self.lwf.prev_model = copy.deepcopy(strategy.model).eval()
