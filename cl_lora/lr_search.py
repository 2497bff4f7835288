"""Per-method learning-rate selection before a stream (``--lr-search LR1,LR2,...``).

LoRA initializations move the weights on different scales, so one fixed learning rate can
favour some of them; once each method's rate is tuned, published gaps between inits often
shrink to a point or two. The search gives every method the same chance:

1. The first :data:`SEARCH_TASKS` task(s) of the stream are split into *fit* and *validation*
   data: a class-balanced :data:`VALIDATION_SHARE` of the task's training data is held out
   (fixed split seed, independent of the run seed; the test set is never read).
2. For each candidate rate, a fresh copy of the backbone trains on the fit data with the run's
   own recipe (epochs, batch, init, plugins, seed) and is scored on the validation data.
3. The rate with the best validation score (the first on ties) trains the real stream.

Every candidate's score and the choice are recorded in ``result.json`` (``lr_search``) and kept
in the run folder, so a resumed run does not search again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cl_lora.results import write_atomic
from cl_lora.streams import Stream, Task
from cl_lora.streams.sampling import balanced_split

VALIDATION_SHARE = 0.2
SEARCH_TASKS = 1
SEARCH_FILE = "lr_search.json"

log = logging.getLogger("cl_lora")


def validation_split(task: Task) -> Task:
    """``task`` with its training data split in two: ``train`` the fit data, ``test`` the
    validation data (a class-balanced, fixed-seed :data:`VALIDATION_SHARE` of the training
    data, at least one example)."""
    labels = np.asarray(task.train["label"])
    size = max(1, round(VALIDATION_SHARE * len(labels)))
    _, held_out = balanced_split(labels, 0, size, task.num_labels)
    fit = np.setdiff1d(np.arange(len(labels)), held_out)
    return dataclasses.replace(
        task, train=task.train.select(fit), test=task.train.select(np.sort(held_out))
    )


def search_stream(stream: Stream) -> Stream:
    """The stream the search trains: its first task(s), each split by :func:`validation_split`."""
    tasks = tuple(validation_split(task) for task in stream.tasks[:SEARCH_TASKS])
    return dataclasses.replace(stream, name=f"{stream.name}:lr-search", tasks=tasks)


@dataclass(frozen=True)
class LRSearch:
    """The candidates, each one's validation score, and the chosen rate."""

    candidates: tuple[float, ...]
    scores: tuple[float, ...]
    tasks: tuple[str, ...]
    fit_sizes: tuple[int, ...]
    validation_sizes: tuple[int, ...]

    @property
    def chosen(self) -> float:
        """The candidate with the best validation score (the first of equals; NaN loses)."""
        scores = np.nan_to_num(np.asarray(self.scores, dtype=float), nan=-np.inf)
        return self.candidates[int(np.argmax(scores))]

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> LRSearch:
        """The inverse of :meth:`record`."""
        keys = ("candidates", "validation_scores", "tasks", "fit_sizes", "validation_sizes")
        return cls(*(tuple(record[key]) for key in keys))

    def record(self) -> dict[str, Any]:
        return {
            "candidates": list(self.candidates),
            "validation_scores": list(self.scores),
            "chosen": self.chosen,
            "tasks": list(self.tasks),
            "fit_sizes": list(self.fit_sizes),
            "validation_sizes": list(self.validation_sizes),
            "validation": f"class-balanced {VALIDATION_SHARE:.0%} of each task's training data "
            "(fixed split seed), the rest to fit",
        }


def search_learning_rate(
    candidates: Sequence[float],
    stream: Stream,
    score_at: Callable[[float, Stream], float],
    cache: Path | None = None,
) -> LRSearch:
    """Score every candidate with ``score_at(lr, search stream)`` and keep the best.

    ``cache`` (a file in the run folder) holds a finished search: a resumed run reads it back
    instead of searching again, as long as the candidates are the same.
    """
    if cache is not None and cache.is_file():
        saved = json.loads(cache.read_text())
        if saved["candidates"] == list(candidates):
            log.info("lr search: reusing %s (chosen %g)", cache, saved["chosen"])
            return LRSearch.from_record(saved)
    search = search_stream(stream)
    scores = []
    for number, lr in enumerate(candidates, 1):
        scores.append(float(score_at(lr, search)))
        log.info("lr search %d/%d: lr %g -> validation %.3f", number, len(candidates), lr,
                 scores[-1])  # fmt: skip
    result = LRSearch(
        tuple(candidates),
        tuple(scores),
        tuple(task.name for task in search.tasks),
        tuple(len(task.train) for task in search.tasks),
        tuple(len(task.test) for task in search.tasks),
    )
    log.info("lr search: chose %g", result.chosen)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache, json.dumps(result.record(), indent=2).encode())
    return result
