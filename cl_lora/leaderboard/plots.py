"""The leaderboard's figures, one PNG per (figure, stream), drawn from the runs table.

- ``heatmaps``: the mean accuracy matrix of every method (mean over seeds);
- ``acc-forgetting``: ACC against forgetting per method, with 95% intervals and the Pareto
  front (no other method has both higher ACC and lower forgetting) marked;
- ``retention``: the mean pretrained-knowledge probe score before and after each task;
- ``intermediate-f``: ACC and forgetting of ``intermediate`` against its window position ``f``.

Figures are built without pyplot's global state, so this works in any thread and backend.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cl_lora.leaderboard.aggregate import REFERENCE_METHOD, STREAM, interval, of_stream
from cl_lora.results import draw_matrix, write_atomic

PlotFn = Callable[[pd.DataFrame, pd.DataFrame], Figure | None]


def write_plots(runs: pd.DataFrame, table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Draw every figure for every stream into ``out_dir``; return the files written.

    A figure with nothing to show for a stream (no retention curves, no ``intermediate`` runs
    with several ``f``) is not written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key, stream_runs in runs.groupby(STREAM, sort=True, dropna=False):
        stream_table = of_stream(table, key)
        for kind, plot in FIGURES.items():
            fig = plot(stream_runs, stream_table)
            if fig is None:
                continue
            path = out_dir / f"{kind}-{stream_slug(key)}.png"
            png = io.BytesIO()
            fig.savefig(png, format="png", dpi=100)
            write_atomic(path, png.getvalue())
            written.append(path)
    return written


def stream_slug(key: tuple) -> str:
    """A file-name part for a (stream, scenario, backbone) key."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(str(part) for part in key))


def _title(runs: pd.DataFrame, what: str) -> str:
    first = runs.iloc[0]
    return f"{first['stream']} ({first['scenario']}, {first['backbone']}): {what}"


def mean_matrix(matrices: list[np.ndarray]) -> np.ndarray:
    """The cell-wise mean over seeds, NaN where no seed evaluated the cell."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells stay NaN
        return np.nanmean(np.stack(matrices), axis=0)


def plot_heatmaps(runs: pd.DataFrame, table: pd.DataFrame) -> Figure:
    methods = list(table["method"])
    cols = min(4, len(methods))
    rows = math.ceil(len(methods) / cols)
    T = len(runs.iloc[0]["tasks"])
    side = 2.6 + 0.45 * T
    fig = Figure(figsize=(cols * (side + 0.8), rows * side + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, method in zip(axes, methods, strict=False):
        group = runs[runs["method"] == method]
        seeds = len(group)
        draw_matrix(
            fig,
            ax,
            mean_matrix(list(group["matrix"])),
            runs.iloc[0]["tasks"],
            f"{method}\n(mean of {seeds} seed{'s' * (seeds != 1)})",
            fontsize=6,
        )
        ax.tick_params(labelsize=6)
        ax.title.set_fontsize(7)
    for ax in axes[len(methods) :]:
        ax.set_axis_off()
    fig.suptitle(_title(runs, "accuracy matrix R[after i][on j] per method"))
    return fig


def pareto_front(acc: np.ndarray, forgetting: np.ndarray) -> np.ndarray:
    """Mask of the points no other point beats on both axes (ACC at least as high and
    forgetting at least as low, one strictly)."""
    front = np.ones(len(acc), dtype=bool)
    for i in range(len(acc)):
        dominated = (acc >= acc[i]) & (forgetting <= forgetting[i])
        dominated &= (acc > acc[i]) | (forgetting < forgetting[i])
        front[i] = not dominated.any()
    return front


def plot_acc_forgetting(runs: pd.DataFrame, table: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(9, 6.5), layout="constrained")
    ax = fig.subplots()
    points = table[np.isfinite(table["forgetting_mean"]) & np.isfinite(table["acc_mean"])]
    front = pareto_front(points["acc_mean"].to_numpy(), points["forgetting_mean"].to_numpy())
    for (_, row), on_front in zip(points.iterrows(), front, strict=True):
        ax.errorbar(
            row["forgetting_mean"],
            row["acc_mean"],
            xerr=_finite(row["forgetting_ci"]),
            yerr=_finite(row["acc_ci"]),
            fmt="o",
            color="tab:red" if on_front else "tab:blue",
            mfc="tab:red" if on_front else "white",
            capsize=2,
            lw=0.8,
        )
        ax.annotate(
            row["method"],
            (row["forgetting_mean"], row["acc_mean"]),
            fontsize=6,
            xytext=(3, 3),
            textcoords="offset points",
        )
    order = np.argsort(points["forgetting_mean"].to_numpy()[front])
    ax.step(
        points["forgetting_mean"].to_numpy()[front][order],
        points["acc_mean"].to_numpy()[front][order],
        where="post",
        color="tab:red",
        lw=1,
        label="Pareto front (higher ACC, lower forgetting)",
    )
    for _, row in table[~np.isfinite(table["forgetting_mean"])].iterrows():
        if np.isfinite(row["acc_mean"]):  # e.g. joint: ACC only, no diagonal to forget from
            ax.axhline(row["acc_mean"], color="grey", ls="--", lw=0.8)
            ax.annotate(
                f"{row['method']} (ACC only)",
                (0, row["acc_mean"]),
                fontsize=6,
                xycoords=("axes fraction", "data"),
                xytext=(2, 2),
                textcoords="offset points",
                color="grey",
            )
    ax.set_xlabel("forgetting (Chaudhry et al.; lower is better)")
    ax.set_ylabel("ACC: mean accuracy after the last task")
    ax.legend(loc="lower right", fontsize=7)
    ax.set_title(_title(runs, "ACC vs forgetting, mean ± 95% CI over seeds"), fontsize=9)
    return fig


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None


def plot_retention(runs: pd.DataFrame, table: pd.DataFrame) -> Figure | None:
    with_curve = runs[runs["retention"].notna()]
    if with_curve.empty:
        return None
    fig = Figure(figsize=(12, 5.5), layout="constrained")
    ax = fig.subplots()
    colors = matplotlib.colormaps["tab20"].colors
    for i, method in enumerate(table["method"]):
        curves = list(with_curve[with_curve["method"] == method]["retention"])
        if curves:
            style = {"color": colors[i % 20], "ls": ("-", "--", ":")[i // 20 % 3]}
            ax.plot(mean_matrix(curves), marker=".", lw=1, label=method, **style)
    tasks = runs.iloc[0]["tasks"]
    ax.set_xticks(
        range(len(tasks) + 1),
        ["before", *[f"after {t}" for t in tasks]],
        rotation=30,
        ha="right",
        fontsize=7,
    )
    ax.set_ylabel("probe score (frozen probe head)")
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title(_title(runs, "pretrained-knowledge retention, mean over seeds"), fontsize=9)
    return fig


def intermediate_sweep(runs: pd.DataFrame) -> pd.DataFrame:
    """The suite's own ``intermediate`` runs placed by ``f`` (column ``f``): not as a
    baseline's init, not in another setup, and not with ``start``, which overrides ``f``."""
    sweep = runs[(runs["init"] == "intermediate") & runs["method"].str.startswith("intermediate(")]
    sweep = sweep[~sweep["method"].str.contains(r"\[")]  # only runs in the stream's usual setup
    by_f = sweep["init_args"].map(lambda args: args.get("f") if args.get("start") is None else None)
    return sweep.assign(f=by_f)[by_f.notna()]


def plot_intermediate_f(runs: pd.DataFrame, table: pd.DataFrame) -> Figure | None:
    sweep = intermediate_sweep(runs)
    if sweep["f"].nunique() < 2:
        return None
    fig = Figure(figsize=(9, 4), layout="constrained")
    for ax, metric, label in zip(
        fig.subplots(1, 2), ("acc", "forgetting"), ("ACC", "forgetting"), strict=True
    ):
        points = [(f, *interval(group[metric])) for f, group in sweep.groupby("f")]
        f, mean, _, _, half = (
            np.array(column, dtype=float) for column in zip(*points, strict=True)
        )
        ax.errorbar(f, mean, yerr=np.where(np.isfinite(half), half, 0), marker="o", capsize=3)
        lora = table[table["method"] == REFERENCE_METHOD][f"{metric}_mean"]
        if len(lora) and np.isfinite(lora.iloc[0]):
            ax.axhline(
                lora.iloc[0], color="grey", ls="--", lw=0.8, label=f"{REFERENCE_METHOD} (mean)"
            )
            ax.legend(fontsize=7)
        ax.set_xlabel("window position f (0 = principal, 1 = minor components)")
        ax.set_ylabel(f"{label}, mean ± 95% CI")
    fig.suptitle(_title(runs, "intermediate components: the spectrum sweep"), fontsize=9)
    return fig


FIGURES: dict[str, PlotFn] = {
    "heatmaps": plot_heatmaps,
    "acc-forgetting": plot_acc_forgetting,
    "retention": plot_retention,
    "intermediate-f": plot_intermediate_f,
}
