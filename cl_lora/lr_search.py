"""Per-method learning-rate selection before a stream (``--lr-search``).

LoRA initializations move the weights on different scales, so one fixed learning rate can
favour some of them; the best rate of an init can sit an order of magnitude away from plain
LoRA's, and once each method's rate is tuned, published gaps between inits often shrink to a
point or two. The search gives every method the same chance:

1. The first :data:`SEARCH_TASKS` task(s) of the stream are split into *fit* and *validation*
   data: a class-balanced :data:`VALIDATION_SHARE` of the task's training data is held out
   (fixed split seed, independent of the run seed; the test set is never read).
2. For each candidate rate, a fresh copy of the backbone trains on the fit data with the run's
   own recipe (epochs, batch, init, plugins, seed) and is scored on the validation data.
   ``--lr-search`` alone tries ``--lr-grid`` (:data:`~cl_lora.config.DEFAULT_LR_GRID`: 7 rates
   half a decade apart, 1e-5 to 1e-2); ``--lr-search LR1,LR2,...`` tries those.
3. While the best rate is the grid's highest (lowest), the grid grows that way by one rate
   :data:`EXTEND_FACTOR` further, at most ``--lr-extend`` times and never past
   :data:`LR_FLOOR`..:data:`LR_CEILING`. A best rate still at an edge is flagged (``edge`` and
   ``edge_limit`` in the record): the grid did not bracket it.
4. The rate with the best validation score (the first on ties) trains the real stream.

Every candidate's score, the choice, the flag and the search's cost (seconds, candidates,
training runs) are recorded in ``result.json`` (``lr_search``). The search is kept in the run
folder as it goes, so a resumed run scores no candidate twice.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cl_lora import distributed
from cl_lora.results import to_jsonable, write_atomic
from cl_lora.streams import Stream, Task
from cl_lora.streams.sampling import balanced_split

VALIDATION_SHARE = 0.2
SEARCH_TASKS = 1
SEARCH_FILE = "lr_search.json"
#: Each rate the search adds past an edge is this factor further (half a decade).
EXTEND_FACTOR = 10**0.5
#: The search never tries a rate outside these.
LR_FLOOR, LR_CEILING = 1e-6, 1e-1

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


def rounded(lr: float) -> float:
    """``lr`` to three significant digits (the grid's rates print as 3.16e-05, not
    3.1622776601683795e-05)."""
    return float(f"{lr:.3g}")


def next_rate(lr: float, direction: int) -> float | None:
    """The rate :data:`EXTEND_FACTOR` above (``direction`` +1) or below (-1) ``lr``, or None
    when it would leave :data:`LR_FLOOR`..:data:`LR_CEILING`. A rate within rounding of the
    half-decade lattice stays on it (3.16e-2 -> 1e-1, not 9.99e-2)."""
    exponent = math.log10(lr) + direction * math.log10(EXTEND_FACTOR)
    lattice = round(exponent * 2) / 2
    if abs(exponent - lattice) < 1e-3:  # three digits kept are 4e-4 off in log10 at most
        exponent = lattice
    candidate = rounded(10**exponent)
    inside = LR_FLOOR * (1 - 1e-9) <= candidate <= LR_CEILING * (1 + 1e-9)
    return candidate if inside else None


@dataclass(frozen=True)
class LRSearch:
    """The candidates (the grid, then any rates added past its edge), each one's validation
    score and seconds, and the chosen rate."""

    candidates: tuple[float, ...]
    scores: tuple[float, ...]
    tasks: tuple[str, ...]
    fit_sizes: tuple[int, ...]
    validation_sizes: tuple[int, ...]
    grid: tuple[float, ...] = ()  # as given; empty: the candidates themselves
    extend: int = 0
    seconds: tuple[float, ...] = field(default=())

    @property
    def chosen(self) -> float:
        """The candidate with the best validation score (the first of equals; NaN loses)."""
        return self.candidates[_best(self.scores)]

    @property
    def extended(self) -> tuple[float, ...]:
        """The rates added past the grid's edge, in the order tried."""
        return self.candidates[len(self.grid or self.candidates) :]

    @property
    def edge(self) -> str | None:
        """``"high"`` or ``"low"`` when the chosen rate is the highest or lowest candidate
        tried (the grid did not bracket the best rate), else None."""
        if not math.isfinite(max(self.scores, key=_finite)):
            return None  # no candidate scored: no best to bracket
        if self.chosen == max(self.candidates):
            return "high"
        if self.chosen == min(self.candidates):
            return "low"
        return None

    @property
    def edge_limit(self) -> str | None:
        """Why the search stopped with the best rate at an edge: ``"bound"`` (the next rate
        would leave 1e-6..1e-1) or ``"extend"`` (``--lr-extend`` rates were added, 0 included);
        None when the best rate is inside."""
        if self.edge is None:
            return None
        direction = 1 if self.edge == "high" else -1
        return "bound" if next_rate(self.chosen, direction) is None else "extend"

    def edge_note(self) -> str | None:
        """One line on an edge the best rate sits at, for the summary; None when inside."""
        if self.edge is None:
            return None
        side = "highest" if self.edge == "high" else "lowest"
        if self.edge_limit == "bound":
            bound = LR_CEILING if self.edge == "high" else LR_FLOOR
            why = f"the search's bound {bound:g} is reached"
        elif self.extend == 0:
            why = "the grid is not extended (--lr-extend 0)"
        else:
            why = f"{len(self.extended)} rate(s) added past the grid (--lr-extend {self.extend})"
        return f"best at the {side} rate tried, {self.chosen:g}: {why}"

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> LRSearch:
        """The inverse of :meth:`record` (records from before grids grew read as they were)."""
        keys = ("candidates", "tasks", "fit_sizes", "validation_sizes")
        candidates, tasks, fit_sizes, validation_sizes = (tuple(record[key]) for key in keys)
        scores = tuple(math.nan if s is None else float(s) for s in record["validation_scores"])
        cost = record.get("cost") or {}
        return cls(
            candidates,
            scores,
            tasks,
            fit_sizes,
            validation_sizes,
            grid=tuple(record.get("grid", record["candidates"])),
            extend=int(record.get("extend", 0)),
            seconds=tuple(cost.get("candidate_seconds", ())),
        )

    def record(self) -> dict[str, Any]:
        """What ``result.json`` keeps under ``lr_search``."""
        runs = len(self.candidates) * len(self.tasks)
        return {
            "grid": list(self.grid or self.candidates),
            "extend": self.extend,
            "candidates": list(self.candidates),
            "validation_scores": list(self.scores),
            "chosen": self.chosen,
            "extended": list(self.extended),
            "edge": self.edge,
            "edge_limit": self.edge_limit,
            "tasks": list(self.tasks),
            "fit_sizes": list(self.fit_sizes),
            "validation_sizes": list(self.validation_sizes),
            "validation": f"class-balanced {VALIDATION_SHARE:.0%} of each task's training data "
            "(fixed split seed), the rest to fit",
            "cost": {
                "seconds": float(sum(self.seconds)),
                "candidate_seconds": list(self.seconds),
                "candidates": len(self.candidates),
                "runs": runs,  # one training of the search stream per candidate
            },
        }


def _finite(score: float | None) -> float:
    """``score`` for ranking: NaN, infinite or missing (null in JSON) ranks below any."""
    return score if score is not None and math.isfinite(score) else -math.inf


def _best(scores: Sequence[float]) -> int:
    """The index of the best score (the first of equals; NaN loses)."""
    return int(np.argmax(np.nan_to_num(np.asarray(scores, dtype=float), nan=-np.inf)))


def search_learning_rate(
    grid: Sequence[float],
    stream: Stream,
    score_at: Callable[[float, Stream], float],
    cache: Path | None = None,
    extend: int = 0,
) -> LRSearch:
    """Score every rate of ``grid`` with ``score_at(lr, search stream)``, grow the grid past
    an edge while the best rate is there (at most ``extend`` rates, within the bounds), and keep
    the best.

    ``cache`` (a file in the run folder) is written after every candidate: a resumed run reads
    back the scores of the same grid and extension instead of training those candidates again.
    """
    known: dict[float, tuple[float, float]] = {}
    if cache is not None and cache.is_file():
        saved = LRSearch.from_record(json.loads(cache.read_text()))
        if saved.grid == tuple(grid) and saved.extend == extend:
            seconds = saved.seconds or (0.0,) * len(saved.candidates)
            known = dict(
                zip(saved.candidates, zip(saved.scores, seconds, strict=True), strict=True)
            )
            log.info("lr search: reusing %d scored rate(s) from %s", len(known), cache)
    search = search_stream(stream)
    candidates: list[float] = []
    scores: list[float] = []
    seconds: list[float] = []

    def current() -> LRSearch:
        return LRSearch(
            tuple(candidates),
            tuple(scores),
            tuple(task.name for task in search.tasks),
            tuple(len(task.train) for task in search.tasks),
            tuple(len(task.test) for task in search.tasks),
            grid=tuple(grid),
            extend=extend,
            seconds=tuple(seconds),
        )

    def score(lr: float) -> None:
        if lr in known:
            value, spent = known[lr]
        else:
            start = time.perf_counter()
            value = float(score_at(lr, search))
            spent = time.perf_counter() - start
        candidates.append(lr)
        scores.append(value)
        seconds.append(spent)
        log.info("lr search %d: lr %g -> validation %.3f (%.0f s)", len(candidates), lr, value,
                 spent)  # fmt: skip
        if cache is not None and distributed.current().main:  # one process writes it
            cache.parent.mkdir(parents=True, exist_ok=True)
            record = to_jsonable(current().record())  # NaN as null, as in result.json
            write_atomic(cache, json.dumps(record, indent=2, allow_nan=False).encode())

    for lr in grid:
        score(lr)
    while (edge := current().edge) is not None and len(current().extended) < extend:
        added = next_rate(current().chosen, 1 if edge == "high" else -1)
        if added is None:  # the bound: flagged as the edge's limit
            break
        score(added)
    result = current()
    log.info("lr search: chose %g%s", result.chosen,
             f" ({result.edge_note()})" if result.edge else "")  # fmt: skip
    return result
