"""The leaderboard as a static site: ``python -m cl_lora.leaderboard RUNS_DIR --html DIR``.

What DIR holds:

- ``index.html``: a tab per (stream, scenario, backbone) with its table, a row per method: the
  settings it differs in from the stream's other runs (setup), mean ± 95% interval of each
  metric, the paired difference to ``lora`` with its Holm-corrected p, and links to its runs;
  with ``--compare`` the published numbers on the same stream, backbone and metric as rows
  beside ours, each with its source. Below the table the ACC-vs-forgetting figure (Pareto front)
  and the knowledge curves. A last tab holds the published numbers on other setups.
- ``runs/<run id>.html``: a page per run: its accuracy matrix, metrics and knowledge curve.
- ``plots/``: the figures, drawn by :mod:`cl_lora.leaderboard.plots`.
- ``site.css``, ``site.js``: copied from the package (``cl_lora/leaderboard/static``).

The pages are plain files: no server, nothing fetched. The rows are in the HTML; the script
only sorts and filters them, keeping its state in the URL hash (``#stream=SLUG&sort=COLUMN
&desc=1&filter=TEXT``), so a link, or a headless browser, opens the page as it was left. The
site is built in a temporary folder beside DIR and moved into place when complete.
"""

from __future__ import annotations

import html
import math
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import matplotlib
import numpy as np
import pandas as pd

from cl_lora.errors import BadInputError
from cl_lora.leaderboard.aggregate import PAIRED_METRICS, REFERENCE_METHOD, STREAM, of_stream
from cl_lora.leaderboard.collect import METRICS
from cl_lora.leaderboard.plots import figure_name, stream_slug, write_plots
from cl_lora.leaderboard.references import backbone_key
from cl_lora.leaderboard.report import (
    LABELS,
    Leaderboard,
    generated_line,
    published_value,
    rates_text,
)
from cl_lora.results import MATRIX_COLORMAP, matrix_scale, replace_folder

INDEX = "index.html"
ASSETS = ("site.css", "site.js")
STATIC = Path(__file__).with_name("static")
#: What marks a folder as an earlier site (which ``--html`` may replace whole).
GENERATOR = '<meta name="generator" content="cl_lora.leaderboard">'
#: The figures a stream's tab shows, with their captions.
FIGURES = {
    "acc-forgetting": "ACC against forgetting, mean and 95% interval per method; the Pareto "
    "front (no other method has both higher ACC and lower forgetting) in red.",
    "retention": "Knowledge curves: the pretrained-knowledge probe before and after each task, "
    "mean over seeds.",
    "intermediate-f": "The intermediate init's window position f against ACC and forgetting.",
}
#: Metric columns of a stream's table (each where some run of the stream has it).
SHOWN_METRICS = ["acc", "forgetting", "retention_drop", "general_ability"]
LOWER_IS_BETTER = {"forgetting", "retention_drop", "trainable_params", "wall_s"}
PUBLISHED = "published"  # the tab of the published numbers on other setups


@dataclass(frozen=True)
class Column:
    key: str  # the name in the URL hash (sort=KEY)
    label: str
    numeric: bool = True
    better: str = "high"  # the direction a first click sorts: "high", "low" (best first)
    title: str = ""


@dataclass(frozen=True)
class Cell:
    text: str  # HTML, escaped
    value: float | None = None  # the sort key of a numeric column; None sorts last
    title: str = ""
    css: str = ""


Row = tuple[str, dict[str, Cell]]  # (the row's class, its cells by column key)


def check_site_folder(folder: Path) -> None:
    """Refuse ``folder`` unless it is new, empty or an earlier site: it is replaced whole."""
    if folder.exists() and not folder.is_dir():
        raise BadInputError(f"--html {folder} is a file: pass a folder for the site")
    if folder.is_dir() and any(folder.iterdir()) and not is_site(folder):
        raise BadInputError(
            f"--html {folder} holds other files and no earlier leaderboard site: pass a new "
            "or empty folder (the site replaces the folder whole)"
        )


def is_site(folder: Path) -> bool:
    index = folder / INDEX
    return index.is_file() and GENERATOR in index.read_text(errors="replace")[:2000]


def write_site(board: Leaderboard, runs_dir: Path, folder: Path) -> tuple[int, int]:
    """Write the site for ``board`` (its runs read from ``runs_dir``) to ``folder``, replacing
    an earlier one; return the number of run pages and figures."""
    check_site_folder(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        for name in ASSETS:
            shutil.copyfile(STATIC / name, staging / name)
        figures = write_plots(board.runs, board.table, staging / "plots", list(FIGURES), colors=256)
        pages = run_pages(board.runs)
        (staging / "runs").mkdir()
        for (_, run), href in zip(board.runs.iterrows(), pages, strict=True):
            (staging / href).write_text(run_page(run, runs_dir), encoding="utf-8")
        index = index_page(board, [f.name for f in figures], pages)
        (staging / INDEX).write_text(index, encoding="utf-8")
        # readable by a web server (mkdtemp makes the folder 0700, write_atomic files 0600)
        staging.chmod(0o755)
        for figure in figures:
            figure.chmod(0o644)
        replace_folder(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return len(pages), len(figures)


# -- the index --------------------------------------------------------------------------------
def index_page(board: Leaderboard, figures: list[str], pages: list[str]) -> str:
    keys = list(board.table.groupby(STREAM, sort=True, dropna=False).groups)
    tabs = [(stream_slug(key), _stream_title(key)) for key in keys]
    sections = [_stream_section(board, key, figures, pages) for key in keys]
    if board.other is not None and not board.other.empty:
        tabs.append((PUBLISHED, "Published, other setups"))
        sections.append(_published_section(board.other))
    nav = "".join(
        f'<a href="#stream={slug}" data-stream="{slug}">{html.escape(title)}</a>'
        for slug, title in tabs
    )
    body = [
        "<header><h1>cl-lora leaderboard</h1>",
        f'<p class="meta">{_markdown_code(generated_line(board))}</p></header>',
        f'<nav class="tabs">{nav}</nav>',
        '<div class="toolbar"><label>Filter <input id="filter" type="search" '
        'placeholder="method, setup or source, e.g. pissa" autocomplete="off"></label>'
        '<span id="count"></span><span class="hint">Click a column header to sort; the '
        "address keeps the view.</span></div>",
        "<main>",
        *sections,
        "</main>",
        _skipped(board.skipped),
    ]
    return _page("cl-lora leaderboard", body)


def _stream_title(key: tuple) -> str:
    stream, scenario, backbone = key
    return f"{stream} ({scenario}, {backbone})"


def _stream_section(board: Leaderboard, key: tuple, figures: list[str], pages: list[str]) -> str:
    stream, scenario, backbone = key
    table = of_stream(board.table, key)
    runs = of_stream(board.runs, key)
    paired = of_stream(board.paired, key) if not board.paired.empty else board.paired
    references = _matching(board.matching, stream, backbone)
    metrics = [m for m in SHOWN_METRICS if table[f"{m}_n"].any()]
    metrics += [m for m in METRICS if m not in metrics and m in set(references["metric"])]
    columns = _stream_columns(metrics, paired_too=not paired.empty)
    links = {
        method: [(pages[board.runs.index.get_loc(i)], run["seed"]) for i, run in group.iterrows()]
        for method, group in runs.sort_values("seed").groupby("method")
    }
    rows = [_our_row(row, paired, links[row["method"]], metrics) for _, row in table.iterrows()]
    published = _reference_rows(references, metrics)
    rows += published
    rows.sort(key=lambda row: _sort_last(row[1]["acc"].value), reverse=True)  # stable: NaN last
    parts = [
        f'<section class="stream" id="stream-{stream_slug(key)}" data-stream="{stream_slug(key)}">',
        f"<h2>{html.escape(stream)} <small>({html.escape(str(scenario))}-incremental, "
        f"{html.escape(str(backbone))})</small></h2>",
        f"<p>{len(runs)} runs of {len(table)} methods"
        + (f" and {len(published)} published row{'s' * (len(published) > 1)}" if published else "")
        + ". Cells: mean ± half-width of the 95% Student-t interval over seeds (hover for the "
        f"spread). Δ: method minus <code>{REFERENCE_METHOD}</code> on the seeds both ran, p "
        "from the paired t-test, Holm-corrected over the methods of this stream. Setup: the "
        "settings in which a method's runs differ from most runs of the stream."
        + (
            " Published rows are on our 0-1 scale, the printed value in parentheses; check "
            "their setup before reading a gap as a result."
            if published
            else ""
        )
        + "</p>",
        _table(columns, rows),
    ]
    for kind, caption in FIGURES.items():
        name = figure_name(kind, key)
        if name in figures:
            src = f"plots/{quote(name)}"
            parts.append(
                f'<figure><a href="{src}"><img src="{src}" alt="{html.escape(kind)} figure">'
                f"</a><figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    parts.append("</section>")
    return "\n".join(parts)


def _matching(matching: pd.DataFrame | None, stream: str, backbone: str) -> pd.DataFrame:
    """The published rows on this stream and backbone (none without ``--compare``)."""
    if matching is None or matching.empty:
        return pd.DataFrame(columns=["metric"])
    same = (matching["stream"] == stream) & (
        matching["backbone_ours"].map(backbone_key) == backbone_key(backbone)
    )
    return matching[same]


def _stream_columns(metrics: list[str], paired_too: bool) -> list[Column]:
    columns = [
        Column("rank", "rank", better="low", title="rank by mean ACC among our methods"),
        Column("method", "method", numeric=False),
        Column("setup", "setup", numeric=False, title="settings that differ from most runs"),
        Column("source", "source", numeric=False, title="our seeds, or the published source"),
    ]
    columns += [
        Column(m, LABELS[m], better="low" if m in LOWER_IS_BETTER else "high", title="mean ± CI")
        for m in metrics
    ]
    if paired_too:
        for metric in PAIRED_METRICS:
            better = "low" if metric in LOWER_IS_BETTER else "high"
            columns += [
                Column(f"d_{metric}", f"Δ{LABELS[metric]}", better=better,
                       title=f"minus {REFERENCE_METHOD} on the same seeds ± 95% CI"),
                Column(f"p_{metric}", "p (Holm)", better="low",
                       title="paired t-test, Holm-corrected; hover for the raw p"),
            ]  # fmt: skip
    columns.append(Column("runs", "runs", title="each run's page: its accuracy matrix"))
    return columns


def _our_row(row: pd.Series, paired: pd.DataFrame, links: list, metrics: list[str]) -> Row:
    method, _, setup = row["method"].partition(" [")
    breaks = html.escape(method).replace(",", ",<wbr>").replace("(", "<wbr>(")
    seeds = ",".join(map(str, row["seeds"]))
    cells = {
        "rank": _number(row["rank"], "{:.0f}"),
        "method": Cell(breaks, css="method"),
        "setup": Cell(html.escape(setup.rstrip("]").replace("] [", "; "))),
        "source": Cell(f"ours, seeds {seeds}", title=f"lr {rates_text(row['lr'])}", css="nowrap"),
        "runs": Cell(
            " ".join(f'<a href="{href}">s{seed}</a>' for href, seed in links), value=len(links)
        ),
    }
    for metric in metrics:
        mean, std, n, half = (row[f"{metric}_{part}"] for part in ("mean", "std", "n", "ci"))
        cells[metric] = _interval_cell(mean, half, n, title=f"sd {std:.3f}, {n} seeds")
    mine = paired[paired["method"] == row["method"]] if not paired.empty else paired
    for metric in PAIRED_METRICS if not paired.empty else []:
        cells.update(_paired_cells(mine[mine["metric"] == metric], metric, row["method"]))
    return "ours" + (" reference" if row["method"] == REFERENCE_METHOD else ""), cells


def _paired_cells(pair: pd.DataFrame, metric: str, method: str) -> dict[str, Cell]:
    if method == REFERENCE_METHOD or pair.empty:
        text = "ref." if method == REFERENCE_METHOD else ""
        return {f"d_{metric}": Cell(text), f"p_{metric}": Cell("")}
    r = pair.iloc[0]
    better = f"better on {r['better']}/{r['pairs']} seeds"
    p = r["p_holm"]
    return {
        f"d_{metric}": _interval_cell(r["diff_mean"], r["diff_ci"], r["pairs"], better, "{:+.3f}"),
        f"p_{metric}": Cell(
            "" if not math.isfinite(p) else "&lt;0.001" if p < 0.001 else f"{p:.3f}",
            value=p if math.isfinite(p) else None,
            title=f"raw p {r['p_value']:.3g}" if math.isfinite(r["p_value"]) else "",
            css="sig" if p < 0.05 else "",
        ),
    }


def _reference_rows(references: pd.DataFrame, metrics: list[str]) -> list[Row]:
    """A row per published (paper, table, method, setup), its values in the metric columns."""
    rows: list[Row] = []
    if references.empty:
        return rows
    keys = ["paper", "table", "method", "setup", "source", "checked"]
    for (paper, table, method, setup, source, checked), refs in references.groupby(keys):
        cells = {
            "method": Cell(
                f'{html.escape(method)} <span class="badge">published</span>', css="method"
            ),
            "setup": Cell(html.escape(setup), css="long"),
            "source": Cell(
                f"{html.escape(paper)}, {html.escape(table)}<br><small>source: "
                f"{html.escape(source)}; checked in the paper: {html.escape(checked)}</small>",
                css="long",
            ),
        }
        for _, r in refs.iterrows():
            if r["metric"] in metrics:
                text = f"{r['fraction']:.3f} ({html.escape(published_value(r))})"
                cells[r["metric"]] = Cell(text, value=r["fraction"])
        rows.append(("published", cells))
    return rows


def _published_section(other: pd.DataFrame) -> str:
    columns = [
        Column("paper", "paper, table", numeric=False),
        Column("stream", "stream", numeric=False),
        Column("backbone", "backbone", numeric=False),
        Column("setup", "setup", numeric=False),
        Column("method", "method", numeric=False),
        Column("metric", "metric", numeric=False),
        Column("value", "value", title="on a 0-1 scale; the printed value in parentheses"),
        Column("source", "source", numeric=False),
    ]
    rows = [
        (
            "published",
            {
                "paper": Cell(html.escape(f"{r['paper']}, {r['table']}"), css="long"),
                "stream": Cell(html.escape(r["stream"]), css="nowrap"),
                "backbone": Cell(html.escape(r["backbone"]), css="nowrap"),
                "setup": Cell(html.escape(r["setup"]), css="long"),
                "method": Cell(html.escape(r["method"])),
                "metric": Cell(html.escape(r["metric"]), css="nowrap"),
                "value": Cell(
                    f"{r['fraction']:.3f} ({html.escape(published_value(r))})", r["fraction"]
                ),
                "source": Cell(
                    f"{html.escape(r['source'])}<br><small>checked in the paper: "
                    f"{html.escape(r['checked'])}</small>",
                    css="long",
                ),
            },
        )
        for _, r in other.iterrows()
    ]
    return "\n".join(
        [
            f'<section class="stream" id="stream-{PUBLISHED}" data-stream="{PUBLISHED}">',
            "<h2>Published numbers on other setups</h2>",
            "<p>Not comparable with our rows: no run here shares their stream, backbone and "
            "metric. Each row's setup and a verbatim quote are in results/references.</p>",
            _table(columns, rows),
            "</section>",
        ]
    )


def _table(columns: list[Column], rows: list[Row]) -> str:
    head = "".join(
        f'<th data-key="{c.key}" data-type="{"num" if c.numeric else "text"}" '
        f'data-better="{c.better if c.numeric else "low"}" title="{html.escape(c.title)}">'
        f"{html.escape(c.label)}</th>"
        for c in columns
    )
    body = []
    for i, (kind, cells) in enumerate(rows):
        tds = "".join(_td(cells.get(c.key, Cell("")), c.numeric) for c in columns)
        body.append(f'<tr class="{kind}" data-i="{i}">{tds}</tr>')
    return (
        '<div class="scroll"><table class="board"><thead><tr>'
        + head
        + "</tr></thead><tbody>\n"
        + "\n".join(body)
        + "\n</tbody></table></div>"
    )


def _td(cell: Cell, numeric: bool) -> str:
    attributes = ""
    if numeric:
        attributes += f' data-v="{"" if cell.value is None else repr(float(cell.value))}"'
    if cell.title:
        attributes += f' title="{html.escape(cell.title)}"'
    css = " ".join(filter(None, ["num" if numeric else "", cell.css]))
    if css:
        attributes += f' class="{css}"'
    return f"<td{attributes}>{cell.text}</td>"


def _interval_cell(mean, half, n, title: str = "", pattern: str = "{:.3f}") -> Cell:
    if n == 0 or not math.isfinite(mean):
        return Cell("undef.", title=title)
    text = pattern.format(mean)
    if math.isfinite(half):
        text += f" ± {half:.3f}"
    return Cell(text, value=float(mean), title=title)


def _number(value: float, pattern: str) -> Cell:
    if value is None or not math.isfinite(value):
        return Cell("")
    return Cell(pattern.format(value), value=float(value))


def _sort_last(value: float | None) -> float:
    return -math.inf if value is None or not math.isfinite(value) else value


def _skipped(skipped: list[str]) -> str:
    if not skipped:
        return ""
    items = "".join(f"<li>{html.escape(line)}</li>" for line in skipped)
    summary = f"<summary>{len(skipped)} result files skipped</summary>"
    return f"<details>{summary}<ul>{items}</ul></details>"


def _markdown_code(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


# -- the run pages ----------------------------------------------------------------------------
def run_pages(runs: pd.DataFrame) -> list[str]:
    """Each run's page, ``runs/<run id>.html`` (a file-name-safe id, numbered where ids
    repeat), in the order of ``runs``."""
    pages, seen = [], set()
    for run_id in runs["run_id"]:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", str(run_id)).strip("._") or "run"
        page, n = f"runs/{stem}.html", 1
        while page in seen:
            n += 1
            page = f"runs/{stem}-{n}.html"
        seen.add(page)
        pages.append(page)
    return pages


def run_page(run: pd.Series, runs_dir: Path) -> str:
    key = tuple(run[column] for column in STREAM)
    method = run["method"]
    back = f"../index.html#stream={stream_slug(key)}&filter={quote(method.partition(' [')[0])}"
    metrics = [
        (LABELS[m], f"{float(run[m]):.{0 if m in ('trainable_params', 'wall_s') else 4}f}")
        for m in METRICS
        if run[m] is not None and np.isfinite(float(run[m]))
    ]
    facts = [
        ("stream", _stream_title(key)),
        ("method", method),
        ("seed", str(run["seed"])),
        ("adapter lr (trained)", rates_text([run["lr"]] if pd.notna(run["lr"]) else [])),
        ("run id", str(run["run_id"])),
        ("result file", Path(run["path"]).relative_to(runs_dir).as_posix()),
    ]
    body = [
        f'<p><a href="{html.escape(back)}">← the leaderboard</a></p>',
        f"<h1>{html.escape(method)}, seed {run['seed']}</h1>",
        _facts(facts),
        "<h2>Accuracy matrix</h2>",
        "<p>R[after task i][on task j]; grey: not evaluated.</p>",
        matrix_table(run["matrix"], run["tasks"]),
        "<h2>Metrics</h2>",
        _facts(metrics),
    ]
    if run["retention"] is not None:
        names = ["before", *(f"after {task}" for task in run["tasks"])]
        curve = [(name, f"{v:.4f}") for name, v in zip(names, run["retention"], strict=True)]
        body += ["<h2>Knowledge curve</h2>", "<p>The pretrained-knowledge probe's score.</p>"]
        body.append(_facts(curve))
    return _page(f"{method}, seed {run['seed']}", body, root="../", script=False)


def matrix_table(matrix: np.ndarray, tasks: list[str]) -> str:
    """The accuracy matrix as an HTML table, cells coloured as :func:`draw_matrix` colours
    them (the same colour map and range)."""
    vmin, vmax = matrix_scale(matrix)
    colormap = matplotlib.colormaps[MATRIX_COLORMAP]
    head = "".join(f"<th>{html.escape(t)}</th>" for t in tasks)
    rows = []
    for task, values in zip(tasks, matrix, strict=True):
        cells = []
        for value in values:
            if not np.isfinite(value):
                cells.append('<td class="na"></td>')
                continue
            shade = (value - vmin) / (vmax - vmin)
            color = matplotlib.colors.to_hex(colormap(shade))
            ink = "#fff" if shade < 0.5 else "#000"
            cells.append(f'<td style="background:{color};color:{ink}">{value:.3f}</td>')
        rows.append(f"<tr><th>after {html.escape(task)}</th>{''.join(cells)}</tr>")
    return (
        '<table class="matrix"><thead><tr><th></th>'
        + head
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _facts(pairs: Iterable[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in pairs)
    return f'<table class="facts">{rows}</table>'


def _page(title: str, body: list[str], root: str = "", script: bool = True) -> str:
    """A page of the site; ``root``: the way up to the site's folder."""
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            GENERATOR,
            f"<title>{html.escape(title)}</title>",
            f'<link rel="stylesheet" href="{root}site.css"></head><body>',
            *body,
            *([f'<script src="{root}site.js"></script>'] if script else []),
            "</body></html>",
            "",
        ]
    )
