"""Render the leaderboard as Markdown and CSV (the HTML site is :mod:`.site`).

Every output is a pure function of the runs and the references except one line with the time
it was generated, so re-running on the same result files reproduces it byte for byte apart
from that timestamp. Paths are written relative to the runs folder, figures relative to the
output folder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from cl_lora.leaderboard.aggregate import PAIRED_METRICS, REFERENCE_METHOD, STREAM, of_stream
from cl_lora.leaderboard.collect import METRICS, OPTIONAL_METRICS
from cl_lora.leaderboard.plots import stream_slug

LABELS = {
    "acc": "ACC",
    "acc_pooled": "ACC (pooled)",
    "avg_incremental_acc": "avg. incr. ACC",
    "bwt": "BWT",
    "forgetting": "forgetting",
    "learning_acc": "learning ACC",
    "retention_drop": "retention drop",
    "general_ability": "general ability change",
    "trainable_params": "trainable params",
    "wall_s": "wall time (s)",
}
FORMATS = ("md", "csv")
_TEXT_COLUMNS = {"backbone", "method", "seeds", "from", "checked in paper", "source", "skipped"}
_TEXT_COLUMNS |= {"lr (trained)"}


def rates_text(rates: list[float], separator: str = ", ") -> str:
    """The adapter rates a method's runs trained at, as a cell (``-`` when none is known)."""
    return separator.join(f"{lr:g}" for lr in rates) or "-"


@dataclass
class Leaderboard:
    """Everything a report shows: the per-method table, the per-run table, paired comparisons,
    references (matching and other), the figures and what was skipped."""

    table: pd.DataFrame
    runs: pd.DataFrame
    paired: pd.DataFrame
    matching: pd.DataFrame | None  # None: --compare was not asked for
    other: pd.DataFrame | None
    figures: list[Path]
    skipped: list[str]


def cell(mean: float, std: float, n: int, half: float, digits: int = 3) -> str:
    """``mean ± std [±ci]`` (the 95% half-width in brackets); one seed gives the mean alone,
    no seed ``undef.``."""
    if n == 0 or not math.isfinite(mean):
        return "undef."
    if n == 1 or not math.isfinite(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f} [±{half:.{digits}f}]"


def metric_cell(row: pd.Series, metric: str, digits: int = 3) -> str:
    """:func:`cell` for ``metric`` of one aggregated row."""
    stats = (row[f"{metric}_{part}"] for part in ("mean", "std", "n", "ci"))
    return cell(*stats, digits=digits)


def method_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One stream's per-method rows as display strings."""
    shown = {
        "rank": rows["rank"].map(lambda r: "" if pd.isna(r) else str(int(r))),
        "method": rows["method"],
        "seeds": rows["seeds"].map(lambda seeds: ",".join(map(str, seeds))),
        "lr (trained)": rows["lr"].map(rates_text),
    }
    for metric in METRICS:
        if metric in OPTIONAL_METRICS and not rows[f"{metric}_n"].any():
            continue
        digits = {"trainable_params": 0, "wall_s": 0}.get(metric, 3)
        shown[LABELS[metric]] = [metric_cell(r, metric, digits) for _, r in rows.iterrows()]
    return pd.DataFrame(shown)


def paired_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One stream's comparisons with ``lora``, one row per method."""
    shown = []
    for method, group in rows.groupby("method", sort=True):
        line = {"method": method}
        for metric in PAIRED_METRICS:
            r = group[group["metric"] == metric].iloc[0]
            diff = "undef." if r["pairs"] == 0 else f"{r['diff_mean']:+.3f}"
            if math.isfinite(r["diff_ci"]):
                diff += f" [±{r['diff_ci']:.3f}]"
            p = "" if not math.isfinite(r["p_holm"]) else f"{r['p_holm']:.3f}"
            line[f"Δ{LABELS[metric]}"] = diff
            line[f"p ({LABELS[metric]})"] = p
            line[f"seeds better ({LABELS[metric]})"] = f"{r['better']}/{r['pairs']}"
        shown.append(line)
    return pd.DataFrame(shown)


def published_value(row: pd.Series) -> str:
    """A reference row's value as the paper prints it (``86.51%``)."""
    return row["value"] + ("%" if row["unit"] == "%" else "")


def side_by_side(ours: pd.DataFrame, references: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Our methods and the published rows on one stream, backbone and metric, best first;
    published values in % are shown on our 0-1 scale with the printed value next to it."""
    rows = [
        {
            "from": "ours",
            "method": r["method"],
            "value": metric_cell(r, metric),
            "sort": r[f"{metric}_mean"],
            "checked in paper": "",
            "source": "seeds " + ",".join(map(str, r["seeds"])),
        }
        for _, r in ours.iterrows()
    ]
    rows += [
        {
            "from": f"{r['paper']}, {r['table']}",
            "method": r["method"],
            "value": f"{r['fraction']:.4g} ({published_value(r)})",
            "sort": r["fraction"],
            "checked in paper": r["checked"],
            "source": r["source"],
        }
        for _, r in references.iterrows()
    ]
    frame = pd.DataFrame(rows).sort_values("sort", ascending=False, kind="stable")
    return frame.drop(columns="sort")


def published_table(references: pd.DataFrame) -> pd.DataFrame:
    """One paper table's rows as the paper shows them: a row per (backbone,) method, a column
    per stream or metric (whichever varies; both when both do)."""
    if references["metric"].nunique() == 1:
        column = references["stream"]
    elif references["stream"].nunique() == 1:
        column = references["metric"]
    else:
        column = references["stream"] + ": " + references["metric"]
    index = ["backbone", "method"] if references["backbone"].nunique() > 1 else ["method"]
    frame = references.assign(shown=references.apply(published_value, axis=1), column=column)
    wide = frame.pivot_table(
        index=index, columns="column", values="shown", aggfunc=" / ".join, sort=False
    )
    return wide.fillna("").reset_index().rename_axis(columns=None)


def _reference_sections(board: Leaderboard) -> list[tuple[str, str, pd.DataFrame | None, list]]:
    sections = []
    matching, other = board.matching, board.other
    if matching.empty:
        text = "No published number shares stream, backbone and metric with these runs."
        sections.append(("Published numbers on our setups", text, None, []))
    keys = ["stream", "backbone_ours", "metric"]
    for (stream, backbone, metric), refs in matching.groupby(keys, sort=True):
        ours = board.table[
            (board.table["stream"] == stream) & (board.table["backbone"] == backbone)
        ]
        text = (
            "Our rows and the published ones on the same stream, backbone and metric (published "
            "values in % on our 0-1 scale, printed value in parentheses). Check `setup` in "
            "results/references before reading a gap as a result: task count and order matter."
        )
        sections.append(
            (
                f"Published vs ours: {stream}, {backbone}, {metric}",
                text,
                side_by_side(ours, refs, metric),
                [],
            )
        )
    for (paper, table), refs in other.groupby(["paper", "table"], sort=True):
        sources = "; ".join(sorted(set(refs["source"])))
        checked = ", ".join(sorted(set(refs["checked"])))
        text = (
            f"Published, different setup (not comparable with our rows): {paper}, {table}. "
            f"Backbone {', '.join(sorted(set(refs['backbone'])))}; metric "
            f"{', '.join(sorted(set(refs['metric'])))}. Source: {sources}. Checked in the "
            f"paper: {checked}. Each row's setup is in results/references."
        )
        sections.append((f"Published: {paper}, {table}", text, published_table(refs), []))
    return sections


def _sections(board: Leaderboard) -> list[tuple[str, str, pd.DataFrame | None, list[Path]]]:
    """(level-2 heading, text, table or None, figures) in reading order."""
    sections = []
    for key, rows in board.table.groupby(STREAM, sort=True, dropna=False):
        stream, scenario, backbone = key
        heading = f"{stream} ({scenario}-incremental, {backbone})"
        n_runs = len(of_stream(board.runs, key))
        text = (
            f"{n_runs} runs. Ranked by mean ACC. Cells: mean ± standard deviation over seeds "
            "[± half-width of the 95% Student-t interval]."
        )
        slug = stream_slug(key)
        figures = [f for f in board.figures if f.stem.endswith(slug)]
        sections.append((heading, text, method_table(rows), figures))
        paired = of_stream(board.paired, key) if not board.paired.empty else board.paired
        if not paired.empty:
            sections.append(
                (
                    f"{heading}: paired with `{REFERENCE_METHOD}`",
                    f"Method minus `{REFERENCE_METHOD}` on the seeds both ran [± 95% half-width "
                    "of the paired differences]; p from the paired t-test, Holm-Bonferroni "
                    "corrected over every method compared on this stream and metric (the raw "
                    "p is in paired.csv); seeds where the method is better (higher ACC, lower "
                    "forgetting).",
                    paired_table(paired),
                    [],
                )
            )
    if board.matching is not None:
        sections += _reference_sections(board)
    if board.skipped:
        skipped = pd.DataFrame({"skipped": board.skipped})
        sections.append(("Skipped result files", "", skipped, []))
    return sections


def generated_line(board: Leaderboard) -> str:
    """Which command made the report, when, from how many result files (Markdown)."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f"Generated by `python -m cl_lora.leaderboard` at {stamp} from {len(board.runs)} "
        f"result files ({len(board.skipped)} skipped)."
    )


def to_markdown(board: Leaderboard, out_dir: Path) -> str:
    lines = ["# Leaderboard", "", generated_line(board), ""]
    for heading, text, table, figures in _sections(board):
        lines += [f"## {heading}", ""]
        if text:
            lines += [text, ""]
        if table is not None:
            align = ["left" if column in _TEXT_COLUMNS else "right" for column in table.columns]
            lines += [table.to_markdown(index=False, disable_numparse=True, colalign=align), ""]
        for figure in figures:
            lines += [f"![{figure.stem}]({figure.relative_to(out_dir).as_posix()})", ""]
    return "\n".join(lines)


def to_csv(board: Leaderboard, runs_dir: Path) -> dict[str, str]:
    """``leaderboard.csv`` (per method, numbers unformatted; ``lr`` the rates its runs trained
    at), ``paired.csv`` and ``runs.csv`` (one row per run with the rate it trained at; the
    matrix and curves stay in the result files)."""
    shown = [m for m in METRICS if m not in OPTIONAL_METRICS or board.runs[m].notna().any()]
    runs = board.runs[[*STREAM, "method", "seed", "lr", "run_id", "path", *shown]].copy()
    runs["path"] = runs["path"].map(lambda p: Path(p).relative_to(runs_dir).as_posix())
    absent = [m for m in METRICS if m not in shown]
    table = board.table.drop(columns=[c for c in board.table if c.rsplit("_", 1)[0] in absent])
    table = table.assign(
        seeds=table["seeds"].map(lambda s: " ".join(map(str, s))),
        lr=table["lr"].map(lambda rates: rates_text(rates, " ")),
    )
    return {
        "leaderboard.csv": table.to_csv(index=False, float_format="%.6g"),
        "paired.csv": board.paired.to_csv(index=False, float_format="%.6g"),
        "runs.csv": runs.to_csv(index=False, float_format="%.6g"),
    }
