"""The research's claims tested on run folders (``results/FINDINGS.md``): for each claim a
table, paired statistics over shared seeds, one figure, and a verdict by a rule fixed before the
runs were read.

    python -m cl_lora.leaderboard.findings intermediate results/findings-runs/intermediate-vision \\
        --out results/findings

``knowledge`` (Tang et al.'s LoRA-Null): knowledge kept by a language model, LoRA-Null
against every other method (rule: :func:`~cl_lora.leaderboard.knowledge.knowledge_report`);
``knowledge-stream`` the same claim along a stream of tasks, with the general-ability probes
(rule: :func:`~cl_lora.leaderboard.knowledge.knowledge_stream_report`).

``versus-lora`` (e.g. Si et al.'s LoRA-Dash, LoRA-Init and LoRA-TSD): each method's task
accuracy against plain LoRA on the same seeds (rule: :func:`versus_lora_report`).

``intermediate`` (Quercia et al.): forgetting of the pretraining task is U-shaped in the window
position ``f``, and intermediate windows are more robust to high learning rates. Rule, per
learning rate: the U holds when the pretrained-probe drop at both ends (``f=0`` and ``f=1``)
exceeds the drop at ``f=0.5``, each paired 95% interval above 0; it fails when either end is
below the middle with its interval below 0. Robustness holds when the drop's growth from the
lowest to the highest rate is larger at both ends than at ``f=0.5`` (paired intervals above 0).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cl_lora.cli import OneLineParser
from cl_lora.errors import BadInputError
from cl_lora.leaderboard.aggregate import interval
from cl_lora.leaderboard.collect import collect_runs
from cl_lora.leaderboard.knowledge import (
    knowledge_grid,
    knowledge_report,
    knowledge_stream_grid,
    knowledge_stream_report,
    plot_knowledge,
    plot_knowledge_stream,
)
from cl_lora.leaderboard.paired import by_method, cell, outcome, paired, side_of_zero

MIDDLE, ENDS = 0.5, (0.0, 1.0)
METRICS = {"retention_drop": "pretrained-probe drop", "forgetting": "task forgetting"}


def intermediate_grid(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run: ``window`` (``f`` of an ``intermediate`` run, ``lora`` for plain LoRA),
    ``lr``, ``seed`` and the metrics."""
    is_window = (runs["init"] == "intermediate") & runs["init_args"].map(
        lambda args: args.get("start") is None
    )
    window = runs["init_args"].map(lambda args: args.get("f"))
    grid = runs.assign(window=window.where(is_window, runs["init"]))
    grid = grid[is_window | (runs["init"] == "lora")]
    return grid[["stream", "window", "lr", "seed", "acc", "learning_acc", *METRICS]]


def _growth(grid: pd.DataFrame, low: float, high: float) -> pd.DataFrame:
    """Per seed and window, the probe drop at ``high`` minus the drop at ``low``."""
    wide = grid.pivot_table(index=["seed", "window"], columns="lr", values="retention_drop")
    return (wide[high] - wide[low]).rename("retention_drop").reset_index().assign(lr=high)


def intermediate_report(grid: pd.DataFrame) -> tuple[str, str]:
    """The markdown tables and the one-line verdicts of the intermediate-components claim."""
    rates = sorted(grid["lr"].unique())
    windows = sorted(
        grid["window"].unique(),
        key=lambda w: (isinstance(w, str), w if not isinstance(w, str) else 0),
    )
    lines = ["| lr | window | seeds | learning acc | ACC | probe drop | task forgetting |"]
    lines.append("|---|---|---|---|---|---|---|")
    for lr in rates:
        for window in windows:
            rows = grid[(grid["lr"] == lr) & (grid["window"] == window)]
            if rows.empty:
                continue
            cells = [
                cell(*interval(rows[m].to_numpy())[::3], signed=False)
                for m in ("learning_acc", "acc", *METRICS)
            ]
            name = f"f={window:g}" if not isinstance(window, str) else window
            lines.append(f"| {lr:g} | {name} | {len(rows)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| lr | drop(f=0) - drop(f=0.5) | drop(f=1) - drop(f=0.5) | U |",
        "|---|---|---|---|",
    ]
    u_results = []
    for lr in rates:
        ends = [paired(grid, "retention_drop", end, MIDDLE, lr) for end in ENDS]
        holds = [side_of_zero(mean, half) for mean, half, _ in ends]
        u = True if all(h is True for h in holds) else False if False in holds else None
        u_results.append(u)
        lines.append(
            f"| {lr:g} | {cell(*ends[0][:2])} | {cell(*ends[1][:2])} | "
            f"{ {True: 'yes', False: 'no', None: 'unclear'}[u] } |"
        )
    verdicts = [f"U-shape in f (every rate): {outcome(u_results)}"]
    if len(rates) >= 2:
        growth = _growth(grid, rates[0], rates[-1])
        ends = [paired(growth, "retention_drop", end, MIDDLE, rates[-1]) for end in ENDS]
        lines += [
            "",
            f"Growth of the probe drop from lr {rates[0]:g} to {rates[-1]:g}, end minus middle: "
            f"f=0 {cell(*ends[0][:2])}, f=1 {cell(*ends[1][:2])}",
        ]
        robust = [side_of_zero(mean, half) for mean, half, _ in ends]
        verdicts.append(f"intermediate windows more robust to high rates: {outcome(robust)}")
    return "\n".join(lines), "; ".join(verdicts)


def plot_intermediate(grid: pd.DataFrame) -> Figure:
    """Probe drop and task forgetting against ``f``, one line per learning rate, plain LoRA
    as a dashed line of the same colour."""
    fig = Figure(figsize=(10, 4.8), layout="constrained")
    windows = grid[grid["window"].map(lambda w: not isinstance(w, str))]
    for ax, (metric, label) in zip(fig.subplots(1, 2), METRICS.items(), strict=True):
        for index, (lr, rows) in enumerate(windows.groupby("lr")):
            stats = [
                (f, *interval(group[metric].to_numpy())) for f, group in rows.groupby("window")
            ]
            f, mean, _, _, half = (np.array(col, dtype=float) for col in zip(*stats, strict=True))
            color = f"C{index}"
            ax.errorbar(f, mean, yerr=np.nan_to_num(half), marker="o", capsize=3, color=color,
                        label=f"intermediate, lr {lr:g}")  # fmt: skip
            lora = grid[(grid["window"] == "lora") & (grid["lr"] == lr)][metric]
            if len(lora):
                ax.axhline(lora.mean(), color=color, ls="--", lw=0.8, label=f"lora, lr {lr:g}")
        ax.set_xlabel("window position f (0 = principal, 1 = minor components)")
        ax.set_ylabel(f"{label}, mean ± 95% CI")
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=8)
    fig.suptitle("intermediate components: forgetting against the window position", fontsize=10)
    return fig


def method_grid(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run: ``window`` the method, ``lr`` the rate it trained at (the searched one,
    when searched)."""
    return by_method(runs)[["stream", "window", "lr", "seed", "acc", "learning_acc", "forgetting"]]


def versus_lora_report(grid: pd.DataFrame) -> tuple[str, str]:
    """Task accuracy of each method against plain ``lora`` on the same seeds. Rule: a method
    beats LoRA when its paired ACC difference has a 95% interval above 0 (below 0: it does
    not); learning accuracy (each task right after training it) is reported beside it."""
    lines = ["| method | seeds | lr chosen | learning acc | ACC | forgetting | ACC - lora ACC |"]
    lines.append("|---|---|---|---|---|---|---|")
    verdicts = []
    for method, rows in grid.groupby("window", sort=True):
        cells = [
            cell(*interval(rows[m].to_numpy())[::3], signed=False)
            for m in ("learning_acc", "acc", "forgetting")
        ]
        rates = ", ".join(f"{lr:g}" for lr in sorted(rows["lr"].unique()))
        diff = "-"
        if method != "lora":
            mean, half, _ = paired(grid, "acc", method, "lora")
            diff = cell(mean, half)
            verdicts.append(f"{method} better than lora: {outcome([side_of_zero(mean, half)])}")
        lines.append(f"| {method} | {len(rows)} | {rates} | " + " | ".join(cells) + f" | {diff} |")
    return "\n".join(lines), "; ".join(verdicts)


def plot_versus_lora(grid: pd.DataFrame) -> Figure:
    """ACC and learning accuracy per method, every seed as a dot and the mean ± 95% CI."""
    fig = Figure(figsize=(9, 4), layout="constrained")
    methods = sorted(grid["window"].unique(), key=lambda m: (m != "lora", m))
    for ax, (metric, label) in zip(
        fig.subplots(1, 2), (("acc", "ACC"), ("learning_acc", "learning accuracy")), strict=True
    ):
        for x, method in enumerate(methods):
            values = grid[grid["window"] == method][metric].to_numpy(dtype=float)
            mean, _, _, half = interval(values)
            ax.scatter(np.full(len(values), x), values, s=12, color="grey", alpha=0.6)
            ax.errorbar([x], [mean], yerr=[np.nan_to_num(half)], fmt="o", capsize=4, color="C0")
        ax.set_xticks(range(len(methods)), methods, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(label)
    fig.suptitle("each method against lora (grey: seeds; blue: mean ± 95% CI)", fontsize=10)
    return fig


FINDINGS = {
    "knowledge": (knowledge_grid, knowledge_report, plot_knowledge),
    "knowledge-stream": (knowledge_stream_grid, knowledge_stream_report, plot_knowledge_stream),
    "intermediate": (intermediate_grid, intermediate_report, plot_intermediate),
    "versus-lora": (method_grid, versus_lora_report, plot_versus_lora),
}


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="python -m cl_lora.leaderboard.findings", description=__doc__)
    parser.add_argument("finding", choices=sorted(FINDINGS))
    parser.add_argument("runs", type=Path, help="folder of the finding's runs")
    parser.add_argument("--out", type=Path, default=Path("results/findings"))
    parser.add_argument(
        "--stream", help="only this stream's runs (needed when the folder has several)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        table = collect_runs(args.runs).table
        if table.empty:
            raise BadInputError(f"no usable result.json under {args.runs}: run the sweep first")
        if args.stream is not None:
            table = table[table["stream"] == args.stream]
        to_grid, report, plot = FINDINGS[args.finding]
        grid = to_grid(table)
        streams = sorted(grid["stream"].unique())
        if len(streams) != 1:
            raise BadInputError(
                f"{args.runs} holds runs of {len(streams)} streams ({', '.join(streams) or 'none'}"
                f" fit '{args.finding}'): pass --stream NAME"
            )
        markdown, verdict = report(grid)
        args.out.mkdir(parents=True, exist_ok=True)
        figure = args.out / f"{args.finding}.png"
        plot(grid).savefig(figure, dpi=130)
    except BadInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(markdown)
    print(f"\nverdict: {verdict}\nfigure: {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
