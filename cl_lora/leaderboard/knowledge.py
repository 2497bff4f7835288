"""LoRA-Null's knowledge claim (Tang et al.): how much of a language model's pretrained
knowledge survives LoRA training, LoRA-Null against every other method on the same seeds.

``knowledge`` reads it after one fine-tune or one stream (the NQ-open gold-answer
log-likelihood drop, :func:`knowledge_report`). ``knowledge-stream`` is the continual version
(results/FINDINGS.md, finding (d)), whose rule was fixed before its runs: the same verdict at the
end of the stream and only on :data:`REQUIRED_SEEDS` seeds finished by every method, the
difference after every task, a second verdict on the general-ability probes (TRACE's Delta R^G)
and task accuracy as a qualifier (:func:`knowledge_stream_report`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cl_lora.leaderboard.aggregate import interval
from cl_lora.leaderboard.paired import by_method, cell, outcome, paired, side_of_zero
from cl_lora.results import load_run

KNOWLEDGE_REFERENCE = "lora-null"


def knowledge_grid(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run: ``window`` the method, task ``acc``, and the knowledge probe's drops
    (``retention_drop``: exact match; ``loglik_drop``: gold-answer log-likelihood per token)."""
    grid = by_method(runs[runs["loglik_drop"].notna()])  # language models score the probe
    columns = ["stream", "window", "lr", "seed", "acc", "learning_acc", "retention_drop"]
    return grid[[*columns, "loglik_drop"]]


def knowledge_report(grid: pd.DataFrame) -> tuple[str, str]:
    """LoRA-Null against every other method on the same seeds. Rule: it keeps more knowledge
    than a method when that method's log-likelihood drop minus LoRA-Null's has a 95% interval
    above 0 (below 0: it keeps less); the claim holds when that is so for every other method.
    The task ACC difference is shown beside it ("at comparable task accuracy")."""
    lines = [
        "| method | seeds | ACC | NQ exact-match drop | gold log-lik drop | "
        "drop - lora-null's drop | ACC - lora-null's ACC |",
        "|---|---|---|---|---|---|---|",
    ]
    results = []
    for method, rows in grid.groupby("window", sort=True):
        cells = [
            cell(*interval(rows[m].to_numpy(dtype=float))[::3], signed=False)
            for m in ("acc", "retention_drop", "loglik_drop")
        ]
        diffs = ["-", "-"]
        if method != KNOWLEDGE_REFERENCE:
            pairs = [
                paired(grid, metric, method, KNOWLEDGE_REFERENCE)
                for metric in ("loglik_drop", "acc")
            ]
            diffs = [cell(mean, half) for mean, half, _ in pairs]
            results.append(side_of_zero(*pairs[0][:2]))
        lines.append(f"| {method} | {len(rows)} | " + " | ".join(cells + diffs) + " |")
    return "\n".join(lines), f"LoRA-Null keeps the most knowledge: {outcome(results)}"


def plot_knowledge(grid: pd.DataFrame) -> Figure:
    """Gold-answer log-likelihood drop against task ACC, one point per method (mean ± 95% CI
    both ways) and every seed as a faint dot."""
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.subplots()
    for index, (method, rows) in enumerate(grid.groupby("window", sort=True)):
        acc, _, _, acc_half = interval(rows["acc"].to_numpy(dtype=float))
        drop, _, _, drop_half = interval(rows["loglik_drop"].to_numpy(dtype=float))
        color = f"C{index}"
        ax.scatter(rows["acc"], rows["loglik_drop"], s=10, color=color, alpha=0.4)
        ax.errorbar([acc], [drop], xerr=[np.nan_to_num(acc_half)], yerr=[np.nan_to_num(drop_half)],
                    fmt="o", capsize=3, color=color, label=method)  # fmt: skip
    ax.set_xlabel("task ACC after the last task")
    ax.set_ylabel("NQ-open gold-answer log-lik drop (nats/token)")
    ax.legend(fontsize=8)
    fig.suptitle("pretrained knowledge lost (lower keeps more) against task accuracy", fontsize=10)
    return fig


#: Finding (d)'s rule: a verdict only once this many seeds are finished by every method.
REQUIRED_SEEDS = 5
#: After-task columns of the stream grid: ``loglik_drop_1`` ... ``loglik_drop_T``.
AFTER_TASK = "loglik_drop_"
#: Probe-change columns of the stream grid: ``change mmlu acc`` = after the last task - before.
CHANGE = "change "


def knowledge_stream_grid(runs: pd.DataFrame) -> pd.DataFrame:
    """:func:`knowledge_grid`'s columns plus, per run, ``bwt``, ``forgetting``,
    ``general_ability`` (Delta R^G), the gold log-likelihood drop after each task
    (``loglik_drop_k`` = before - after task k), each probe metric's change over the stream
    (``change <probe> <metric>``) and ``lr_edge`` (the searched rate's edge, if it stayed at
    one), read from each run's ``result.json``."""
    runs = runs[runs["loglik_drop"].notna()]
    along = pd.DataFrame([_along_stream(load_run(path)) for path in runs["path"]], index=runs.index)
    extra = runs[["bwt", "forgetting", "general_ability"]]
    return pd.concat([knowledge_grid(runs), extra, along], axis=1)


def _along_stream(result: Mapping[str, Any]) -> dict[str, Any]:
    retention = result["retention"]
    curve = [np.nan if v is None else v for v in retention["gold_loglik"]["curve"]]
    row: dict[str, Any] = {f"{AFTER_TASK}{k}": curve[0] - curve[k] for k in range(1, len(curve))}
    for name, probe in (retention.get("probes") or {}).items():
        metrics = {probe["metric"]: probe, **probe.get("other_metrics", {})}
        for metric, record in metrics.items():
            first, last = record["curve"][0], record["curve"][-1]
            known = first is not None and last is not None
            row[f"{CHANGE}{name} {metric}"] = last - first if known else np.nan
    row["lr_edge"] = (result.get("lr_search") or {}).get("edge")
    row["minutes"] = _run_seconds(result) / 60
    return row


def _run_seconds(result: Mapping[str, Any]) -> float:
    """A run's wall time (``total_s``, from the start of its search to its result). A resumed
    run's ``total_s`` counts only its last part, so its time is the parts ``result.json`` keeps
    across a resume: the search, each task's init and training and each evaluation with the
    probes (the model's loading and the first probe, before the first task, are not in it)."""
    timings = result["timings"]
    if (result.get("determinism") or {}).get("resumed_after_task") is None:
        return timings["total_s"]
    search = ((result.get("lr_search") or {}).get("cost") or {}).get("seconds", 0.0)
    return search + sum(timings["train_s"]) + sum(timings["eval_s"])


def knowledge_stream_report(grid: pd.DataFrame) -> tuple[str, str]:
    """Finding (d): LoRA-Null against each other method M over the seeds every method finished,
    paired by seed, each interval the two-sided 95% Student-t interval.

    1. Knowledge kept (the verdict): :func:`knowledge_report` on those seeds (M's gold
       log-likelihood drop minus LoRA-Null's, before the stream to after its last task).
    2. Along the stream (reported): the same difference after each task; LoRA-Null's advantage
       is kept throughout when it holds after every task against every M.
    3. General abilities (a second verdict, same rule): LoRA-Null's Delta R^G minus M's; each
       probe metric's change beside it.
    4. Task accuracy (a qualifier): where ACC(M) - ACC(LoRA-Null) lies above 0, the verdict
       says "at lower task accuracy than M"; BWT and forgetting beside it.

    No verdict while fewer than :data:`REQUIRED_SEEDS` seeds are finished by every method: the
    tables then show the finished seeds."""
    methods = sorted(grid["window"].unique())
    counts = grid.groupby("window")["seed"].nunique()
    complete = sorted(
        s for s, rows in grid.groupby("seed") if rows["window"].nunique() == len(methods)
    )
    shared = grid[grid["seed"].isin(complete)]
    runs = ", ".join(f"{method} {counts[method]}" for method in methods)
    lines = [f"Seeds finished by all {len(methods)} methods: "
             f"{', '.join(map(str, complete)) or 'none'} (finished runs: {runs}).",
             "", _runs_table(grid)]  # fmt: skip
    if shared.empty:
        return "\n".join(lines), "none yet: no seed is finished by every method"
    table, kept = knowledge_report(shared)
    others = [m for m in methods if m != KNOWLEDGE_REFERENCE]
    lower_acc = [
        m
        for m in others
        if side_of_zero(*paired(shared, "acc", m, KNOWLEDGE_REFERENCE)[:2]) is True
    ]
    lines += ["", table, "", _task_table(shared), "", *_along_table(shared, others)]
    general = _general_table(shared, others)
    lines += ["", general[0]]
    if len(complete) < REQUIRED_SEEDS:
        return "\n".join(lines), (
            f"none yet: {len(complete)} of {REQUIRED_SEEDS} seeds finished by every method"
        )
    qualifier = f", at lower task accuracy than {', '.join(lower_acc)}" if lower_acc else ""
    return "\n".join(lines), (
        f"{kept}{qualifier}; LoRA-Null keeps the most general ability: {general[1]}"
    )


def _runs_table(grid: pd.DataFrame) -> str:
    """Every finished run, unpaired (the seeds not yet finished by every method too): its
    rate, ACC, forgetting, gold log-likelihood drop, Delta R^G and run time; then the total."""
    lines = ["| method | seed | lr trained | ACC | forgetting | gold log-lik drop | Delta R^G "
             "| minutes |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for _, run in grid.sort_values(["seed", "window"]).iterrows():
        numbers = [f"{run[c]:.3f}" for c in ("acc", "forgetting", "loglik_drop")]
        lines.append(
            f"| {run['window']} | {run['seed']} | {run['lr']:g} | "
            + " | ".join(numbers)
            + f" | {run['general_ability']:+.3f} | {run['minutes']:.0f} |"
        )
    hours = grid["minutes"].sum() / 60
    return "\n".join([*lines, "", f"Run time: {hours:.1f} h over {len(grid)} runs (a resumed "
                      "run: its search, training and evaluations only)."])  # fmt: skip


def _task_table(grid: pd.DataFrame) -> str:
    """Per method: learning accuracy, BWT, forgetting, the rate each seed trained at, and the
    seeds whose searched rate stayed at an edge of the rates tried."""
    lines = ["| method | learning acc | BWT | forgetting | lr by seed | lr at an edge |"]
    lines.append("|---|---|---|---|---|---|")
    for method, rows in grid.groupby("window", sort=True):
        cells = [
            cell(*interval(rows[m].to_numpy(dtype=float))[::3], signed=m == "bwt")
            for m in ("learning_acc", "bwt", "forgetting")
        ]
        rows = rows.sort_values("seed")
        rates = ", ".join(
            f"{seed}: {lr:g}" for seed, lr in zip(rows["seed"], rows["lr"], strict=True)
        )
        edges = rows[rows["lr_edge"].notna()]
        edge = (
            ", ".join(f"{s} ({e})" for s, e in zip(edges["seed"], edges["lr_edge"], strict=True))
            or "none"
        )
        lines.append(f"| {method} | " + " | ".join([*cells, rates, edge]) + " |")
    return "\n".join(lines)


def _after_task_columns(grid: pd.DataFrame) -> list[str]:
    """``loglik_drop_1`` ... ``loglik_drop_T``, in task order."""
    columns = [c for c in grid if c.startswith(AFTER_TASK)]
    return sorted(columns, key=lambda c: int(c[len(AFTER_TASK) :]))


def _along_table(grid: pd.DataFrame, others: list[str]) -> list[str]:
    """The gold log-likelihood drop after each task: LoRA-Null's own, and each M's minus
    LoRA-Null's; then after which tasks LoRA-Null keeps more than every M."""
    steps = _after_task_columns(grid)
    header = " | ".join(f"after task {c[len(AFTER_TASK) :]}" for c in steps)
    lines = [f"| gold log-lik drop | {header} |", "|---|" + "---|" * len(steps)]
    reference = grid[grid["window"] == KNOWLEDGE_REFERENCE]
    own = [cell(*interval(reference[c].to_numpy(dtype=float))[::3], signed=False) for c in steps]
    lines.append(f"| {KNOWLEDGE_REFERENCE} | " + " | ".join(own) + " |")
    held = []
    for method in others:
        pairs = [paired(grid, c, method, KNOWLEDGE_REFERENCE) for c in steps]
        held.append([side_of_zero(mean, half) for mean, half, _ in pairs])
        diffs = [cell(mean, half) for mean, half, _ in pairs]
        lines.append(f"| {method} - {KNOWLEDGE_REFERENCE} | " + " | ".join(diffs) + " |")
    after = [i + 1 for i in range(len(steps)) if held and all(h[i] is True for h in held)]
    throughout = "yes" if held and len(after) == len(steps) else "no"
    return lines + [
        "",
        f"LoRA-Null keeps more than every other method after tasks: "
        f"{', '.join(map(str, after)) or 'none'}; kept throughout: {throughout}.",
    ]


def _general_table(grid: pd.DataFrame, others: list[str]) -> tuple[str, str]:
    """Delta R^G per method, LoRA-Null's minus each M's (paired), each probe metric's change;
    and the second verdict."""
    changes = sorted(c for c in grid if c.startswith(CHANGE))
    header = [
        "method",
        "Delta R^G",
        "lora-null's - this",
        *(f"{c[len(CHANGE) :]} change" for c in changes),
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    results = []
    for method, rows in grid.groupby("window", sort=True):
        cells = [
            cell(*interval(rows[c].to_numpy(dtype=float))[::3])
            for c in ["general_ability", *changes]
        ]
        diff = "-"
        if method in others:
            mean, half, _ = paired(grid, "general_ability", KNOWLEDGE_REFERENCE, method)
            diff = cell(mean, half)
            results.append(side_of_zero(mean, half))
        lines.append("| " + " | ".join([method, cells[0], diff, *cells[1:]]) + " |")
    return "\n".join(lines), outcome(results)


def plot_knowledge_stream(grid: pd.DataFrame) -> Figure:
    """Left: each method's gold log-likelihood drop after each task (mean ± 95% CI). Right:
    each method's Delta R^G, every seed a dot, the mean ± 95% CI."""
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    drop_ax, general_ax = fig.subplots(1, 2)
    steps = _after_task_columns(grid)
    for index, (method, rows) in enumerate(grid.groupby("window", sort=True)):
        color = f"C{index}"
        stats = [interval(rows[c].to_numpy(dtype=float)) for c in steps]
        means, halves = [s[0] for s in stats], np.nan_to_num([s[3] for s in stats])
        drop_ax.errorbar(range(1, len(steps) + 1), means, yerr=halves, marker="o", capsize=3,
                         color=color, label=method)  # fmt: skip
        values = rows["general_ability"].to_numpy(dtype=float)
        mean, _, _, half = interval(values)
        general_ax.scatter(np.full(len(values), index), values, s=12, color="grey", alpha=0.6)
        general_ax.errorbar(
            [index], [mean], yerr=[np.nan_to_num(half)], fmt="o", capsize=4, color=color
        )
    drop_ax.set_xticks(range(1, len(steps) + 1))
    drop_ax.set_xlabel("after task")
    drop_ax.set_ylabel("NQ-open gold log-lik drop (nats/token)")
    drop_ax.legend(fontsize=8)
    methods = sorted(grid["window"].unique())
    general_ax.set_xticks(range(len(methods)), methods, rotation=20, ha="right", fontsize=8)
    general_ax.axhline(0.0, color="black", lw=0.6)
    general_ax.set_ylabel("Delta R^G (mean probe change; higher keeps more)")
    fig.suptitle("pretrained knowledge along the stream (lower drop keeps more)", fontsize=10)
    return fig
