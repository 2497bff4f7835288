"""Every summary metric of a continual-learning run, from its accuracy matrix (the definitions
are in docs/ARCHITECTURE.md, section Metrics).

Pure functions, no I/O. ``R[i][j]`` is the score on task ``j`` after training task ``i``;
indices here are 0-based (the usual papers write them 1-based), so the last row is ``R[T-1]``.
Entries that were not evaluated are NaN (or ``None``). A metric that needs a missing entry
is reported as ``None`` together with a one-sentence reason, never computed from partial data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

_NEEDS_TWO = "needs at least two tasks; this run has one."


def summarize(
    R: Any, b: Sequence[float | None] | None = None, test_sizes: Sequence[int] | None = None
) -> dict[str, Any]:
    """Derive every summary metric from the accuracy matrix ``R`` (T x T).

    ``b`` holds each task's score before any training (``None``/NaN where undefined), or is
    ``None`` when it was not measured. ``test_sizes`` (optional) are the tasks' test examples.
    Returns a dict with:

    - ``acc``: ``mean_j R[T-1][j]``; ``running_acc``: ``A_k = mean_{j<=k} R[k][j]`` per k;
    - ``acc_pooled``: ``sum_j n_j R[T-1][j] / sum_j n_j`` with ``n_j`` the test sizes: the
      accuracy over all test examples pooled, what O-LoRA's code reports (equal to ``acc`` when
      every task has as many test examples; undefined without ``test_sizes``).
      ``avg_incremental_acc``: ``mean_k A_k``; ``learning_acc``: ``mean_j R[j][j]``.
    - ``bwt`` (GEM, Lopez-Paz & Ranzato 2017): ``mean_{j<T-1} (R[T-1][j] - R[j][j])``.
      ``bwt_trace``: TRACE's BWT (Wang et al. 2023; SAPT's ``score.py`` too), the same sum
      divided by ``T`` (its last term ``R[T-1][T-1] - R[T-1][T-1]`` is 0), so ``(T-1)/T`` of
      ``bwt``. TRACE's other headline, OP (the mean of the last row), is ``acc``.
    - ``forgetting`` (Chaudhry et al. 2018): ``f_j = max_{l<T-1} R[l][j] - R[T-1][j]`` for
      ``j < T-1``, averaged; ``per_task_forgetting`` lists the ``f_j``. The max runs over the
      evaluated entries only: rows ``l >= j`` (after task ``j`` was trained) are required,
      rows ``l < j`` count where they were evaluated (they are NaN with per-task heads).
      Avalanche's "forgetting" is ``R[j][j] - R[T-1][j]`` (= -BWT per task); ours is
      Chaudhry's, which also counts accuracy that rose after task ``j`` and was lost later,
      so it is at least Avalanche's value.
    - ``fwt`` (GEM): ``mean_{j>=1} (R[j-1][j] - b[j])``. Undefined with per-task heads (task
      ``j``'s head does not exist before task ``j``, so ``R[j-1][j]`` is NaN) or without ``b``.
    - ``undefined_reasons``: metric name -> why it is ``None`` (for the list metrics: why
      some entries are ``None``). Entries are named with the same 0-based indices as ``R``.

    Raises ``ValueError`` if ``R`` is not a non-empty square matrix or ``b`` has the wrong
    length.
    """
    R = np.array(R, dtype=float)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] == 0:
        raise ValueError(f"accuracy matrix must be square T x T with T >= 1, got shape {R.shape}")
    T = R.shape[0]
    if b is not None:
        b = np.array(b, dtype=float)
        if b.shape != (T,):
            raise ValueError(f"b must have one score per task ({T}), got shape {b.shape}")

    reasons: dict[str, str] = {}
    out: dict[str, Any] = {}

    out["acc"] = _mean(R, [(T - 1, j) for j in range(T)], "acc", reasons)
    out["acc_pooled"] = _pooled(R, test_sizes, reasons)

    running: list[float | None] = []
    for k in range(T):
        running.append(_mean(R, [(k, j) for j in range(k + 1)], None, {}))
    out["running_acc"] = running
    missing_rows = [k for k, a in enumerate(running) if a is None]
    if missing_rows:
        reasons["running_acc"] = (
            f"A_k is undefined for k in {missing_rows}: some R[k][j<=k] were not evaluated."
        )
        out["avg_incremental_acc"] = None
        reasons["avg_incremental_acc"] = (
            f"running accuracy A_k is undefined for k in {missing_rows}."
        )
    else:
        out["avg_incremental_acc"] = float(np.mean(running))

    out["learning_acc"] = _mean(R, [(j, j) for j in range(T)], "learning_acc", reasons)

    out["bwt"], out["bwt_trace"], out["forgetting"], out["fwt"] = None, None, None, None
    out["per_task_forgetting"] = []
    if T == 1:
        for name in ("bwt", "bwt_trace", "forgetting", "fwt"):
            reasons[name] = _NEEDS_TWO
    else:
        out["bwt"] = _bwt(R, reasons)
        if out["bwt"] is None:
            reasons["bwt_trace"] = reasons["bwt"]
        else:
            out["bwt_trace"] = out["bwt"] * (T - 1) / T
        out["per_task_forgetting"], out["forgetting"] = _forgetting(R, reasons)
        out["fwt"] = _fwt(R, b, reasons)

    out["undefined_reasons"] = reasons
    return out


def _missing(R: np.ndarray, cells: list[tuple[int, int]]) -> list[str]:
    return [f"R[{i}][{j}]" for i, j in cells if np.isnan(R[i, j])]


def _mean(
    R: np.ndarray, cells: list[tuple[int, int]], name: str | None, reasons: dict[str, str]
) -> float | None:
    """Mean of ``R`` over ``cells``, or ``None`` (with a reason under ``name``) if any is NaN."""
    missing = _missing(R, cells)
    if missing:
        if name is not None:
            reasons[name] = f"not evaluated: {', '.join(missing)}."
        return None
    return float(np.mean([R[i, j] for i, j in cells]))


def _pooled(R: np.ndarray, sizes: Sequence[int] | None, reasons: dict[str, str]) -> float | None:
    """The last row's example-weighted mean (see :func:`summarize`)."""
    T = R.shape[0]
    if sizes is None or len(sizes) != T or sum(sizes) <= 0:
        reasons["acc_pooled"] = "the tasks' test sizes were not given."
        return None
    if _mean(R, [(T - 1, j) for j in range(T)], "acc_pooled", reasons) is None:
        return None
    return float(np.dot(R[T - 1], sizes) / sum(sizes))


def _bwt(R: np.ndarray, reasons: dict[str, str]) -> float | None:
    T = R.shape[0]
    cells = [(T - 1, j) for j in range(T - 1)] + [(j, j) for j in range(T - 1)]
    missing = _missing(R, cells)
    if missing:
        reasons["bwt"] = f"not evaluated: {', '.join(missing)}."
        return None
    return float(np.mean([R[T - 1, j] - R[j, j] for j in range(T - 1)]))


def _forgetting(R: np.ndarray, reasons: dict[str, str]) -> tuple[list[float | None], float | None]:
    T = R.shape[0]
    per_task: list[float | None] = []
    all_missing: list[str] = []
    for j in range(T - 1):
        missing = _missing(R, [(row, j) for row in range(j, T)])
        all_missing += missing
        if missing:
            per_task.append(None)
        else:
            per_task.append(float(np.nanmax(R[: T - 1, j]) - R[T - 1, j]))
    if all_missing:
        reasons["per_task_forgetting"] = reasons["forgetting"] = (
            f"not evaluated: {', '.join(all_missing)}."
        )
        return per_task, None
    return per_task, float(np.mean(per_task))


def _fwt(R: np.ndarray, b: np.ndarray | None, reasons: dict[str, str]) -> float | None:
    T = R.shape[0]
    missing = _missing(R, [(j - 1, j) for j in range(1, T)])
    if missing:
        reasons["fwt"] = (
            f"a task's score before it was trained is missing ({', '.join(missing)}), "
            "e.g. with per-task heads task j's head does not exist before task j."
        )
        return None
    if b is None:
        reasons["fwt"] = "the scores before any training (b) were not given."
        return None
    missing_b = [f"b[{j}]" for j in range(1, T) if np.isnan(b[j])]
    if missing_b:
        reasons["fwt"] = f"scores before any training are undefined: {', '.join(missing_b)}."
        return None
    return float(np.mean([R[j - 1, j] - b[j] for j in range(1, T)]))


def retention_summary(curve: Sequence[float | None]) -> dict[str, Any]:
    """Pretrained-knowledge retention from the probe's scores ``[before, after task 1..T]``.

    ``drop`` is ``before - final`` (positive: knowledge lost), ``max_drop`` the largest drop
    after any task. Both are ``None`` when the curve lacks the start or any later point.
    """
    values = [None if v is None or v != v else float(v) for v in curve]
    known = len(values) >= 2 and all(v is not None for v in values)
    return {
        "curve": values,
        "drop": values[0] - values[-1] if known else None,
        "max_drop": values[0] - min(values[1:]) if known else None,
    }
