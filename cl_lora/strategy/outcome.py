"""What the loop measures over a stream: the accuracy matrix and its companions."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class StreamOutcome:
    """Everything the loop measured; ``matrix[i, j]`` is task j's score after training task i.

    ``retention`` is the knowledge probe's score before the first task and after each task;
    ``checkpoint_bytes`` the size of the checkpoint written after each task (when written).
    """

    matrix: np.ndarray
    before: list[float | None]
    scores: list[list[dict[str, float] | None]]
    timings: dict[str, list[float]] = field(default_factory=dict)
    trainable_params: list[int] = field(default_factory=list)
    retention: list[float] = field(default_factory=list)
    checkpoint_bytes: list[int] = field(default_factory=list)
    resumed_after: int | None = None  # the checkpointed task this run continued after

    @classmethod
    def empty(cls, count: int) -> StreamOutcome:
        """Nothing measured yet for a stream of ``count`` tasks (NaN = not evaluated)."""
        return cls(
            matrix=np.full((count, count), np.nan),
            before=[None] * count,
            scores=[[None] * count for _ in range(count)],
            timings={"train_s": [], "eval_s": [], "init_s": []},
        )
