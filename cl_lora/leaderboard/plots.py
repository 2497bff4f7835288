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
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import PIL.Image
from matplotlib.figure import Figure

from cl_lora.leaderboard.aggregate import REFERENCE_METHOD, STREAM, interval, of_stream
from cl_lora.results import draw_matrix, write_atomic

PlotFn = Callable[[pd.DataFrame, pd.DataFrame], Figure | None]


def write_plots(
    runs: pd.DataFrame,
    table: pd.DataFrame,
    out_dir: Path,
    kinds: Sequence[str] | None = None,
    colors: int | None = None,
) -> list[Path]:
    """Draw every figure (or those of ``kinds``, keys of :data:`FIGURES`) for every stream into
    ``out_dir``; return the files written. ``colors``: reduce each PNG to a palette of that many
    colours (a third of the bytes at 256, which the eye cannot tell apart on these figures).

    A figure with nothing to show for a stream (no retention curves, no ``intermediate`` runs
    with several ``f``) is not written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key, stream_runs in runs.groupby(STREAM, sort=True, dropna=False):
        stream_table = of_stream(table, key)
        for kind, plot in FIGURES.items():
            if kinds is not None and kind not in kinds:
                continue
            fig = plot(stream_runs, stream_table)
            if fig is None:
                continue
            path = out_dir / figure_name(kind, key)
            png = io.BytesIO()
            fig.savefig(png, format="png", dpi=100)
            write_atomic(path, png.getvalue() if colors is None else _palette(png, colors))
            written.append(path)
    return written


def _palette(png: io.BytesIO, colors: int) -> bytes:
    image = PIL.Image.open(png).convert("RGB").quantize(colors)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def stream_slug(key: tuple) -> str:
    """A file-name part for a (stream, scenario, backbone) key."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(str(part) for part in key))


def figure_name(kind: str, key: tuple) -> str:
    """The file name of figure ``kind`` for a (stream, scenario, backbone) key."""
    return f"{kind}-{stream_slug(key)}.png"


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


KEY_WIDTH = 46  # characters of a method name in the figure's key
ZOOM_SHARE = 0.4  # a zoom panel is added when the central methods span less of an axis


def plot_acc_forgetting(runs: pd.DataFrame, table: pd.DataFrame) -> Figure:
    """ACC against forgetting, one point per method (mean, 95% intervals as light bars).

    With dozens of methods, names beside every point overlap into noise: each point carries its
    rank by ACC instead, the key on the right lists rank, method, ACC and forgetting, and only
    the Pareto-front methods and :data:`~cl_lora.leaderboard.aggregate.REFERENCE_METHOD` are
    named in the plot. When a few outliers squeeze the rest into a corner, a second panel zooms
    on the central methods (10th-90th percentiles on both axes).
    """
    points = table[np.isfinite(table["forgetting_mean"]) & np.isfinite(table["acc_mean"])]
    points = points.sort_values("acc_mean", ascending=False, kind="stable").reset_index(drop=True)
    x, y = points["forgetting_mean"].to_numpy(), points["acc_mean"].to_numpy()
    front = pareto_front(y, x)
    box = _central_box(x, y)
    fig = Figure(figsize=(16 if box else 13, 7), layout="constrained")
    axes = fig.subplots(1, 3 if box else 2, width_ratios=[1.6, 1.6, 1] if box else [2.3, 1])
    *panels, key = axes
    for ax in panels:
        _draw_points(ax, points, front)
        _draw_acc_only(ax, table)
        ax.set_xlabel("forgetting (Chaudhry et al.; lower is better)")
        ax.grid(alpha=0.2)
    panels[0].set_ylabel("ACC: mean accuracy after the last task")
    panels[0].legend(loc="lower right", fontsize=7)
    panels[0].set_title(_title(runs, "ACC vs forgetting, mean and 95% CI over seeds"), fontsize=9)
    if box:
        (x0, x1), (y0, y1) = box
        panels[1].set_xlim(x0, x1)
        panels[1].set_ylim(y0, y1)
        panels[1].set_title("zoom on the central methods (grey box on the left)", fontsize=9)
        panels[0].add_patch(
            matplotlib.patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="0.5", lw=0.8)
        )
    lines = [
        f"{n:>2} {_short(method):<{KEY_WIDTH}} {a:.3f} {f:+.3f}" + (" *" if on else "")
        for n, (method, a, f, on) in enumerate(zip(points["method"], y, x, front, strict=True), 1)
    ]
    key.axis("off")
    header = f"{'#':>2} {'method':<{KEY_WIDTH}} {'ACC':>5} {'forg.':>6}"
    key.text(0, 1, "\n".join([header, *lines, "", "* on the Pareto front"]), va="top",
             ha="left", family="monospace", fontsize=6.5, transform=key.transAxes)  # fmt: skip
    return fig


def _central_box(x: np.ndarray, y: np.ndarray) -> tuple[tuple[float, float], ...] | None:
    """Limits around the 10th-90th percentiles of both axes (padded), when those span less than
    :data:`ZOOM_SHARE` of the full range on some axis; None when no zoom is needed."""
    if len(x) < 8:
        return None
    limits = []
    for values in (x, y):
        low, high = np.percentile(values, [10, 90])
        pad = 0.15 * (high - low) or 0.01
        limits.append((low - pad, high + pad))
    shares = [(hi - lo) / (np.ptp(v) or 1) for (lo, hi), v in zip(limits, (x, y), strict=True)]
    return tuple(limits) if min(shares) < ZOOM_SHARE else None


def _draw_points(ax: matplotlib.axes.Axes, points: pd.DataFrame, front: np.ndarray) -> None:
    """Each method as a numbered point with light 95% bars; the front and the reference named;
    the front joined by a step line."""
    for number, ((_, row), on_front) in enumerate(zip(points.iterrows(), front, strict=True), 1):
        x, y = row["forgetting_mean"], row["acc_mean"]
        color = "tab:red" if on_front else "tab:blue"
        ax.errorbar(x, y, xerr=_finite(row["forgetting_ci"]), yerr=_finite(row["acc_ci"]),
                    fmt="none", ecolor=color, alpha=0.25, capsize=0, lw=0.8)  # fmt: skip
        ax.plot(x, y, "o", color=color, mfc=color if on_front else "white", ms=5, zorder=3)
        named = on_front or row["method"] == REFERENCE_METHOD
        label = ax.annotate(f"{number} {_short(row['method'])}" if named else str(number), (x, y),
                    fontsize=7 if named else 6, xytext=(3, 3), textcoords="offset points",
                    color=color if named else "0.3", annotation_clip=True,
                    bbox={"fc": "white", "ec": "none", "alpha": 0.7, "pad": 0.5} if named
                    else None)  # fmt: skip
        label.set_in_layout(False)  # a long name near the edge must not squeeze the panels
    on = points[front].sort_values("forgetting_mean")
    ax.step(on["forgetting_mean"], on["acc_mean"], where="post", color="tab:red", lw=1,
            label="Pareto front (higher ACC, lower forgetting)")  # fmt: skip


def _draw_acc_only(ax: matplotlib.axes.Axes, table: pd.DataFrame) -> None:
    """Methods with ACC but no forgetting (e.g. joint: no diagonal to forget from) as lines."""
    for _, row in table[~np.isfinite(table["forgetting_mean"])].iterrows():
        if np.isfinite(row["acc_mean"]):
            ax.axhline(row["acc_mean"], color="grey", ls="--", lw=0.8)
            label = ax.annotate(f"{row['method']} (ACC only)", (0, row["acc_mean"]), fontsize=7,
                                xycoords=("axes fraction", "data"), xytext=(2, 2),
                                textcoords="offset points", color="grey",
                                annotation_clip=True)  # fmt: skip
            label.set_in_layout(False)


def _short(method: str) -> str:
    return method if len(method) <= KEY_WIDTH else method[: KEY_WIDTH - 1] + "…"


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
    ax.set_ylabel("knowledge-probe score")
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1))
    what = "pretrained-knowledge retention, mean over seeds (language models: NQ-open exact match)"
    ax.set_title(_title(runs, what), fontsize=9)
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
