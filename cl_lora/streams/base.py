"""What a stream is: an ordered tuple of tasks, each with its own train/test data and metric."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cl_lora.errors import BadInputError
from cl_lora.lazy import lazy_module
from cl_lora.streams import scoring

datasets = lazy_module("datasets")
pd = lazy_module("pandas")

SCENARIOS = ("task", "domain", "class")
PROBLEMS = ("classification", "text-to-text")
#: How a text-to-text stream's examples become token sequences and generations answers:
#: ``spaced`` (the suite's: the prompt, then " " + answer, tokenized apart; a generation is
#: stripped and cut at its first newline) or ``joined`` (TRACE's collator: prompt + answer as
#: one string between the beginning- and end-of-sequence tokens; a generation is kept as
#: decoded).
TEXT_FORMATS = ("spaced", "joined")


@dataclass(frozen=True)
class Task:
    """One experience of a stream.

    ``train`` and ``test`` have an integer ``"label"`` in ``0 .. num_labels - 1`` and the
    inputs: a ``"text"`` column (a ``"text_pair"`` column for sentence-pair tasks) or an
    ``"image"`` column for classification; for text-to-text tasks a ``"prompt"`` (instruction
    and input, ending with the answer cue) and a ``"target"`` (the answer text, which is
    ``label_names[label]``: a label word or an option letter). ``metric`` is the primary
    metric, a key of :data:`cl_lora.streams.scoring.METRICS`, or for free-text answers a text
    metric of :data:`cl_lora.streams.scoring.TEXT_METRICS` (the label names are then the
    distinct answers). ``answer_form`` says how a text-to-text task's generations are
    normalized before they are matched with the label texts (a key of
    :data:`cl_lora.streams.scoring.ANSWER_FORMS`).
    """

    name: str
    train: datasets.Dataset
    test: datasets.Dataset
    label_names: tuple[str, ...]
    metric: str
    answer_form: str = "squad"

    def __post_init__(self) -> None:
        if self.metric not in scoring.METRICS and not scoring.is_text_metric(self.metric):
            raise ValueError(f"task {self.name}: unknown metric {self.metric!r}")
        if self.answer_form not in scoring.ANSWER_FORMS:
            raise ValueError(f"task {self.name}: unknown answer form {self.answer_form!r}")
        for split in (self.train, self.test):
            columns = set(split.column_names)
            if "prompt" in columns:
                needed = {"label", "prompt", "target"}
            else:
                needed = {"label", "image" if "image" in columns else "text"}
            missing = needed - columns
            if missing:
                raise ValueError(f"task {self.name}: split lacks columns {sorted(missing)}")

    @property
    def num_labels(self) -> int:
        """Size of the task's label space."""
        return len(self.label_names)

    @property
    def classes(self) -> tuple[int, ...]:
        """The label ids this task trains on (its own classes of a class-incremental stream)."""
        return tuple(sorted({int(label) for label in self.train["label"]}))

    @property
    def chance(self) -> float:
        """Score of always predicting the test set's most frequent label (lowest id on ties):
        for a text metric, of always answering the most frequent answer."""
        labels = self.test["label"]
        counts = Counter(labels)
        majority = min(counts, key=lambda label: (-counts[label], label))
        if scoring.is_text_metric(self.metric):
            answer = [self.label_names[majority]] * len(labels)
            values = scoring.text_scores(
                self.metric, answer, self.test["target"], self.test["prompt"]
            )
            return self.score(values, labels)["score"]
        return self.score([majority] * len(labels), labels)["score"]

    def score(
        self, predictions: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray
    ) -> dict[str, float]:
        """All of this task's metrics (GLUE style) plus ``"score"``, the primary value."""
        return scoring.score(self.metric, predictions, labels)


@dataclass(frozen=True)
class Stream:
    """An ordered sequence of tasks and the continual-learning scenario they form.

    ``shared_head`` is True when all tasks share one classifier head: one label space
    (domain-incremental) or all classes seen so far (class-incremental); otherwise each task
    gets its own head. ``backbone`` names the backbone the stream runs on by default (``None``:
    its modality's default). ``problem`` says how a model learns its tasks: ``classification``
    (a backbone with task heads) or ``text-to-text`` (a language model that generates the
    answer; no heads, so ``shared_head`` is False). ``provenance`` says where a stream read
    from local files came from (folder, instruction source, task list) for ``result.json``.
    ``text_format`` (a text-to-text stream's) is one of :data:`TEXT_FORMATS`.
    """

    name: str
    tasks: tuple[Task, ...]
    scenario: str
    modality: str
    shared_head: bool
    backbone: str | None = None
    problem: str = "classification"
    provenance: dict[str, Any] | None = None
    text_format: str = "spaced"

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"stream {self.name}: scenario must be one of {SCENARIOS}")
        if self.problem not in PROBLEMS:
            raise ValueError(f"stream {self.name}: problem must be one of {PROBLEMS}")
        if self.text_format not in TEXT_FORMATS:
            raise ValueError(f"stream {self.name}: text_format must be one of {TEXT_FORMATS}")

    @property
    def knowledge(self) -> str:
        """Which knowledge probe stands for this stream's pretrained model (see
        :func:`cl_lora.streams.knowledge_probe`): its modality, or ``text-to-text``."""
        return "text-to-text" if self.problem == "text-to-text" else self.modality


@dataclass(frozen=True)
class StreamOptions:
    """User choices a stream builder honours.

    ``data_dir`` points at local data for streams that read it; the caps bound each task's
    train/test size (``None`` keeps the stream's documented default); ``scenario`` picks
    ``task``, ``class`` or ``domain`` for streams that support more than one (``None``: the
    stream's default). ``order`` picks a published task order and ``tasks`` a custom sequence
    of task names, for streams registered with ``sequences=True``.
    """

    data_dir: Path | None = None
    max_train_per_task: int | None = None
    max_test_per_task: int | None = None
    scenario: str | None = None
    order: int | None = None
    tasks: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.scenario is not None and self.scenario not in SCENARIOS:
            raise BadInputError(
                f"unknown scenario '{self.scenario}': choose one of {', '.join(SCENARIOS)}"
            )
        for field in ("max_train_per_task", "max_test_per_task"):
            value = getattr(self, field)
            if value is not None and (isinstance(value, bool) or value < 1):
                raise BadInputError(f"{field} must be a positive integer, got {value!r}")


def to_dataset(frame: pd.DataFrame, label_names: Sequence[str]) -> datasets.Dataset:
    """A ``datasets.Dataset`` with the task columns and a ``ClassLabel`` label feature."""
    text_columns = ("text", "text_pair", "prompt", "target")
    columns = [column for column in text_columns if column in frame.columns]
    features = datasets.Features(
        {column: datasets.Value("string") for column in columns}
        | {"label": datasets.ClassLabel(names=list(label_names))}
    )
    frame = frame[[*columns, "label"]].reset_index(drop=True)
    return datasets.Dataset.from_pandas(frame, features=features, preserve_index=False)
