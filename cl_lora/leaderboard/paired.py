"""Statistics every finding shares: differences of a metric between two methods paired by
seed, their 95% Student-t interval, which side of zero it lies on, and the outcome a rule draws
from those sides. A grid is a table of runs with ``window`` (the method or window compared),
``seed``, ``lr`` and metric columns."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cl_lora.leaderboard.aggregate import interval


def paired(grid: pd.DataFrame, metric: str, a: object, b: object, lr: float | None = None) -> tuple:
    """Mean, 95% half-width and count of ``metric(a) - metric(b)`` over the seeds both have
    (at rate ``lr``; ``None``: whatever rate each trained at)."""
    rows = grid if lr is None else grid[grid["lr"] == lr]
    at = rows.pivot_table(index="seed", columns="window", values=metric)
    if not {a, b} <= set(at.columns):
        return math.nan, math.nan, 0
    both = at[[a, b]].dropna()
    mean, _, n, half = interval((both[a] - both[b]).to_numpy())
    return mean, half, n


def cell(mean: float, half: float, signed: bool = True) -> str:
    """``mean ± half`` (a difference with its sign), ``-`` when there is nothing to show."""
    if not np.isfinite(mean):
        return "-"
    value = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    return f"{value} ± {half:.3f}" if np.isfinite(half) else value


def side_of_zero(mean: float, half: float) -> bool | None:
    """True: interval above 0; False: below 0; None: it contains 0."""
    if not (np.isfinite(mean) and np.isfinite(half)):
        return None
    return True if mean - half > 0 else False if mean + half < 0 else None


def outcome(results: Sequence[bool | None]) -> str:
    """``supported`` when every comparison holds (interval above 0), ``not supported`` when any
    is reversed (below 0), else ``inconclusive``."""
    if results and all(result is True for result in results):
        return "supported"
    if any(result is False for result in results):
        return "not supported"
    return "inconclusive"


def by_method(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with ``window`` = the method with its arguments (``lora-dash(t=20)``), without
    the leaderboard's ``[setting=...]`` suffix."""
    return runs.assign(window=runs["method"].str.replace(r" \[.*\]$", "", regex=True))
