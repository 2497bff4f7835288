"""``joint``: one LoRA trained on all tasks at once -- the usual upper bound.

How ``R`` is filled: joint training has one training phase, not one per task. The strategy runs
inside the same loop as every other method (:func:`cl_lora.strategy.run_stream`), which calls
``train`` once per task; ``train`` on every task but the last only records the task (no
training, no evaluation), and ``train`` on the last task trains one LoRA (initialized with
``--init``) on the union of all tasks' training sets for ``--epochs`` epochs -- each example
still goes through its own task's head, and every head trains. Only the last row ``R[T-1]``
is then evaluated; the rows before it stay NaN, so ``acc`` is defined and every metric that
needs the diagonal or earlier rows (learning accuracy, BWT, forgetting, average incremental
accuracy, FWT) is reported undefined with the cells it misses. With a shared head the scores
before training (``b``) are still measured.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from cl_lora.baselines.registry import register

if TYPE_CHECKING:  # types only: registering a baseline must not load Avalanche or PEFT
    from cl_lora.backbones import ContinualClassifier

JOINT_MATRIX = (
    "one training phase on all tasks, after the last task: only the last row R[T-1] is "
    "evaluated; earlier rows are NaN and metrics that need them are undefined"
)


@register(
    "joint",
    "one LoRA trained on the union of all tasks (upper bound; last row of R only)",
    matrix=JOINT_MATRIX,
)
class JointTraining:
    """Defers training to the last task, then trains on every task's data at once."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._deferred = False  # the last train call only recorded a task: nothing to evaluate

    def _is_last(self, experience: Any) -> bool:
        return int(experience.current_experience) == len(self.stream.tasks) - 1

    def train(self, experiences: Any, eval_streams: Any = None, **kwargs: Any) -> dict:
        if not self._is_last(experiences):
            task_id = int(experiences.current_experience)
            self.trainable_params[task_id] = 0
            self.init_seconds[task_id] = 0.0
            self._deferred = True
            return {}
        self._deferred = False
        return super().train(experiences, eval_streams, **kwargs)

    def eval(self, exp_list: Any, **kwargs: Any) -> dict:
        if self._deferred:  # nothing was trained since the last evaluation: leave the row NaN
            self.scorer.scores = {}
            return {}
        return super().eval(exp_list, **kwargs)

    def train_dataset_adaptation(self, **kwargs: Any) -> None:
        """The union of every task's training set (from the stream, so a resumed run that
        skips the earlier tasks still sees all of them)."""
        from avalanche.benchmarks.utils import concat_datasets

        from cl_lora.strategy.experiences import to_benchmark

        union = concat_datasets([exp.dataset for exp in to_benchmark(self.stream).train_stream])
        self.adapted_dataset = union.train()

    def make_heads(self, model: ContinualClassifier) -> torch.nn.Module:
        for task_id, task in enumerate(self.stream.tasks):
            model.add_head(task_id, task.num_labels, task.classes)
        return model.heads
