"""A cl-lora :class:`~cl_lora.streams.Stream` as an Avalanche benchmark.

Each task becomes one train and one test experience whose items are ``(example, label, task)``;
the example stays a raw row (text, or an image) so that the backbone's collate function owns all
preprocessing. Each item also carries its row number in the task's split (the ``rows`` data
attribute, not part of the item), which survives Avalanche's subsets and concatenations: a
replay memory is checkpointed as those numbers.
"""

from __future__ import annotations

from typing import Any

from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.scenarios.generic_scenario import CLScenario
from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
from avalanche.benchmarks.scenarios.task_aware import with_task_labels
from avalanche.benchmarks.utils.classification_dataset import (
    TaskAwareSupervisedClassificationDataset,
)
from avalanche.benchmarks.utils.data_attribute import DataAttribute, TaskLabels
from torch.utils.data import Dataset

from cl_lora.streams import Stream


class TaskExamples(Dataset):
    """Rows of a Hugging Face dataset as ``(row without label, label)`` pairs."""

    def __init__(self, rows: Any) -> None:
        self.rows = rows
        self.labels = [int(label) for label in rows["label"]]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[dict[str, Any], int]:
        row = dict(self.rows[index])
        return {key: value for key, value in row.items() if key != "label"}, row.pop("label")


def _experience_dataset(rows: Any, task_id: int) -> TaskAwareSupervisedClassificationDataset:
    """Avalanche's supervised, task-aware dataset type: what its plugins (LwF's per-task
    classes, replay's task-balanced memory) expect of an experience."""
    examples = TaskExamples(rows)
    return TaskAwareSupervisedClassificationDataset(
        [examples],
        data_attributes=[
            DataAttribute(examples.labels, "targets"),
            TaskLabels([task_id] * len(examples)),
            DataAttribute(list(range(len(examples))), "rows"),
        ],
    )


def to_benchmark(stream: Stream) -> CLScenario:
    """``train_stream`` and ``test_stream`` with one experience per task, carrying its task
    label and class timeline (what Avalanche's dynamic modules and plugins read)."""
    benchmark = benchmark_from_datasets(
        train=[_experience_dataset(task.train, i) for i, task in enumerate(stream.tasks)],
        test=[_experience_dataset(task.test, i) for i, task in enumerate(stream.tasks)],
    )
    return with_classes_timeline(with_task_labels(benchmark))
