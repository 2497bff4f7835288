"""Statistics over seeds: per-method means, spreads and 95% intervals, ranks, and paired
comparisons with plain ``lora`` on the same seeds."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from cl_lora.leaderboard.collect import GROUP, METRICS

STREAM = ["stream", "scenario", "backbone"]
REFERENCE_METHOD = "lora"
PAIRED_METRICS = ["acc", "forgetting"]
CONFIDENCE = 0.95


def of_stream(frame: pd.DataFrame, key: tuple) -> pd.DataFrame:
    """The rows of ``frame`` on one (stream, scenario, backbone)."""
    return frame[(frame[STREAM] == pd.Series(key, index=STREAM)).all(axis=1)]


def interval(values: np.ndarray) -> tuple[float, float, int, float]:
    """Mean, sample standard deviation, count and the half-width of the two-sided 95%
    Student-t interval of the mean, over the finite ``values``. With one value the spread and
    the interval are NaN (unknown, not zero); with none everything but the count is NaN."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0, math.nan
    mean = float(values.mean())
    if n == 1:
        return mean, math.nan, 1, math.nan
    std = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * std / math.sqrt(n))
    return mean, std, n, half


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (stream, scenario, backbone, method): ``seeds`` (the seeds, sorted), ``lr``
    (the adapter rates its runs trained at, sorted, once each: a searched rate may differ by
    seed), ``<metric>_mean``, ``_std``, ``_n`` and ``_ci`` (95% half-width) for every metric,
    and ``rank`` (1 = the highest mean ACC of its stream; ties share the better rank)."""
    rows = []
    for key, group in runs.groupby(GROUP, sort=True, dropna=False):
        row = dict(zip(GROUP, key, strict=True))
        row["seeds"] = sorted(int(seed) for seed in group["seed"])
        row["lr"] = trained_rates(group)
        for metric in METRICS:
            mean, std, n, half = interval(pd.to_numeric(group[metric], errors="coerce"))
            row.update(
                {
                    f"{metric}_mean": mean,
                    f"{metric}_std": std,
                    f"{metric}_n": n,
                    f"{metric}_ci": half,
                }
            )
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table.assign(rank=pd.Series(dtype=float))
    table["rank"] = table.groupby(STREAM, dropna=False)["acc_mean"].rank(
        ascending=False, method="min"
    )
    return table.sort_values([*STREAM, "rank", "method"], na_position="last").reset_index(drop=True)


def trained_rates(runs: pd.DataFrame) -> list[float]:
    """The distinct adapter rates ``runs`` trained at, sorted (none known: empty)."""
    if "lr" not in runs:
        return []
    return sorted({float(lr) for lr in pd.to_numeric(runs["lr"], errors="coerce").dropna()})


def paired_with_reference(runs: pd.DataFrame, reference: str = REFERENCE_METHOD) -> pd.DataFrame:
    """Every method against ``reference`` on the seeds both ran, per stream and metric.

    One row per (stream, scenario, backbone, method, metric): ``pairs`` (number of shared
    seeds), ``diff_mean`` (method minus reference), its ``diff_ci`` (95% half-width of the
    paired differences), ``p_value`` of the paired t-test (NaN with fewer than two pairs or
    identical differences), ``p_holm`` (that p after Holm-Bonferroni over every method of the
    stream on the same metric), and ``better`` (seeds where the method is better: higher ACC,
    lower forgetting).
    """
    rows = []
    for key, stream_runs in runs.groupby(STREAM, sort=True, dropna=False):
        ref = stream_runs[stream_runs["method"] == reference].set_index("seed")
        for method, group in stream_runs.groupby("method", sort=True):
            if method == reference or ref.empty:
                continue
            mine = group.set_index("seed")
            for metric in PAIRED_METRICS:
                both = pd.concat(
                    [pd.to_numeric(mine[metric]), pd.to_numeric(ref[metric])],
                    axis=1,
                    join="inner",
                ).dropna()
                mine_values, ref_values = both.iloc[:, 0], both.iloc[:, 1]
                diff = (mine_values - ref_values).to_numpy()
                mean, _, n, half = interval(diff)
                higher_is_better = metric != "forgetting"
                rows.append(
                    {
                        **dict(zip(STREAM, key, strict=True)),
                        "method": method,
                        "metric": metric,
                        "pairs": n,
                        "diff_mean": mean,
                        "diff_ci": half,
                        "p_value": _paired_p(mine_values, ref_values, diff),
                        "better": int(np.sum(diff > 0 if higher_is_better else diff < 0)),
                    }
                )
    table = pd.DataFrame(rows)
    if not table.empty:
        families = table.groupby([*STREAM, "metric"], dropna=False)["p_value"]
        table["p_holm"] = families.transform(lambda p: holm(p.to_numpy()))
    return table


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values of one family of tests (NaN: no test, not counted).

    The ``i``-th smallest of ``m`` p-values becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``
    (Holm 1979). A few lines here rather than a statsmodels dependency for one function.
    """
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    tested = np.flatnonzero(np.isfinite(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    running = 0.0
    for position, index in enumerate(order):
        running = max(running, min(1.0, (len(order) - position) * p[index]))
        adjusted[index] = running
    return adjusted


def _paired_p(mine: pd.Series, ref: pd.Series, diff: np.ndarray) -> float:
    """The paired t-test's p; NaN with fewer than two pairs or identical differences."""
    if len(diff) < 2 or np.allclose(diff, diff[0]):
        return math.nan
    return float(stats.ttest_rel(mine, ref).pvalue)
