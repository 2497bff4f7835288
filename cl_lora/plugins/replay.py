"""``--plugin replay``: Avalanche's experience replay with a class-agnostic, experience-balanced
memory of ``mem_size`` training examples.

From the second task on, each batch is the task's batch plus a batch from the memory (earlier
tasks' raw examples, each routed to its own task's head). Avalanche's plugin and its
``ReplayDataLoader`` do the work; the only change is the collate function: cl-lora batches are
raw rows that the backbone tokenizes, so the loader uses the strategy's collate instead of the
dataset's default. Finished tasks' heads stay as they are (they are not in the optimizer, as in
every cl-lora run); the replayed examples train the new adapter so that those heads keep
working.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cl_lora.arguments import Argument
from cl_lora.plugins.registry import register_plugin


@register_plugin(
    "replay",
    "experience replay from a balanced memory of earlier tasks' examples (Avalanche)",
    extends="avalanche.training.plugins:ReplayPlugin",
    arguments={"mem_size": Argument(int, 200, "examples kept in memory over all earlier tasks")},
)
class TokenizingReplay:
    """Avalanche's replay, batching through the strategy's (tokenizing) collate."""

    def before_training_exp(
        self,
        strategy: Any,
        num_workers: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        **kwargs: Any,
    ) -> None:
        from avalanche.benchmarks.utils.data_loader import ReplayDataLoader

        if len(self.storage_policy.buffer) == 0:  # first task: nothing to replay yet
            return
        strategy.dataloader = ReplayDataLoader(
            strategy.adapted_dataset,
            self.storage_policy.buffer,
            oversample_small_tasks=True,
            batch_size=self.batch_size or strategy.train_mb_size,
            batch_size_mem=self.batch_size_mem or strategy.train_mb_size,
            task_balanced_dataloader=self.task_balanced_dataloader,
            num_workers=num_workers,
            shuffle=shuffle,
            drop_last=drop_last,
            collate_fn=strategy.collate_share,  # this process's share of each batch
            distributed_sampling=False,  # every process iterates the same global batches
        )

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        """Add the finished task's examples to the memory (the buffer's current API; the stock
        plugin calls its deprecated ``update``)."""
        self.storage_policy.post_adapt(strategy, strategy.experience)

    def checkpoint_state(self) -> dict[str, Any]:
        """The memory as row numbers of each task's training split (one group per task, in
        the order the buffer holds them) with the reservoir's sampling weights."""
        policy = self.storage_policy
        return {
            "num_exps": policy._num_exps,
            "groups": {
                task: {
                    "max_size": group.max_size,
                    "rows": list(group.buffer.rows),
                    "weights": group._buffer_weights,
                }
                for task, group in policy.buffer_groups.items()
            },
        }

    def restore_checkpoint_state(
        self, state: dict[str, Any], strategy: Any, experiences: Sequence[Any]
    ) -> None:
        from avalanche.training.storage_policy import ReservoirSamplingBuffer

        policy = self.storage_policy
        policy._num_exps = state["num_exps"]
        policy.buffer_groups.clear()
        for task, saved in state["groups"].items():
            group = ReservoirSamplingBuffer(saved["max_size"])
            group.buffer = experiences[task].dataset.subset(saved["rows"])
            group._buffer_weights = saved["weights"].cpu()
            policy.buffer_groups[task] = group
