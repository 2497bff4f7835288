"""The findings' statistics and verdict rules on constructed grids with a known answer, and
results/FINDINGS.md's tables and verdicts rebuilt from its committed run folders."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd

from cl_lora.leaderboard.collect import collect_runs
from cl_lora.leaderboard.findings import intermediate_report, main, plot_intermediate

F = [0.0, 0.25, 0.5, 0.75, 1.0]


def grid(drop_of_f, growth: float = 0.0, seeds: int = 5) -> pd.DataFrame:
    """Runs at two rates; the probe drop is ``drop_of_f(f)`` plus seed noise, and at the higher
    rate it grows by ``growth * |f - 0.5|`` (more at the ends when ``growth`` > 0)."""
    noise = np.random.default_rng(0).normal(0, 0.005, size=(2, len(F) + 1, seeds))
    rows = []
    for i, lr in enumerate((1e-3, 1e-2)):
        for j, window in enumerate([*F, "lora"]):
            base = drop_of_f(0.0 if window == "lora" else window)
            extra = i * growth * abs((0.0 if window == "lora" else window) - 0.5)
            for seed in range(seeds):
                drop = base + extra + noise[i, j, seed]
                rows.append(dict(window=window, lr=lr, seed=seed, acc=0.9, learning_acc=0.9,
                                 retention_drop=drop, forgetting=drop / 2))  # fmt: skip
    return pd.DataFrame(rows)


def test_a_clear_u_is_supported_and_robustness_is_read_from_the_growth() -> None:
    table, verdict = intermediate_report(grid(lambda f: 0.4 * (f - 0.5) ** 2 + 0.02, growth=0.5))
    assert "U-shape in f (every rate): supported" in verdict
    assert "more robust to high rates: supported" in verdict
    assert "| 0.001 | f=0.5 | 5 |" in table and "| 0.01 | lora | 5 |" in table


def test_an_inverted_u_is_not_supported_and_a_flat_line_is_inconclusive() -> None:
    _, verdict = intermediate_report(grid(lambda f: 0.3 - 0.4 * (f - 0.5) ** 2))
    assert "U-shape in f (every rate): not supported" in verdict
    _, verdict = intermediate_report(grid(lambda f: 0.1, growth=0.0))
    assert "U-shape in f (every rate): inconclusive" in verdict


def test_the_figure_has_one_line_per_rate_and_lora_references() -> None:
    figure = plot_intermediate(grid(lambda f: f))
    drop_axis = figure.axes[0]
    assert len(drop_axis.containers) == 2  # one errorbar line per learning rate
    assert len(drop_axis.lines) >= 2 + 2  # their lines plus one dashed lora line per rate


def test_an_empty_folder_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["intermediate", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no usable result.json") and "\n" not in err


def test_versus_lora_reads_the_paired_accuracy_difference() -> None:
    from cl_lora.leaderboard.findings import plot_versus_lora, versus_lora_report

    noise = np.random.default_rng(1).normal(0, 0.002, size=15)
    rows = [
        dict(window=method, lr=1e-3, seed=seed, acc=0.8 + gain + noise[5 * i + seed],
             learning_acc=0.9, forgetting=0.05)
        for i, (method, gain) in enumerate((("lora", 0.0), ("better", 0.05), ("worse", -0.05)))
        for seed in range(5)
    ]  # fmt: skip
    grid = pd.DataFrame(rows)
    table, verdict = versus_lora_report(grid)
    assert "better better than lora: supported" in verdict
    assert "worse better than lora: not supported" in verdict
    assert "| better | 5 | 0.001 |" in table and "+0.050" in table
    assert len(plot_versus_lora(grid).axes) == 2


def test_knowledge_compares_every_method_with_lora_null() -> None:
    from cl_lora.leaderboard.findings import knowledge_report, plot_knowledge

    noise = np.random.default_rng(2).normal(0, 0.01, size=(3, 5))
    drops = {"lora": 0.5, "lora-null": 0.1, "pissa": 0.9}
    rows = [
        dict(window=method, lr=1e-3, seed=seed, acc=0.8, learning_acc=0.8, retention_drop=0.0,
             loglik_drop=drop + noise[i, seed])
        for i, (method, drop) in enumerate(drops.items())
        for seed in range(5)
    ]  # fmt: skip
    grid = pd.DataFrame(rows)
    table, verdict = knowledge_report(grid)
    assert verdict == "LoRA-Null keeps the most knowledge: supported"
    assert "| pissa | 5 |" in table and "+0.79" in table
    grid.loc[grid["window"] == "lora", "loglik_drop"] -= 0.6  # lora now keeps more
    assert knowledge_report(grid)[1].endswith("not supported")
    assert len(plot_knowledge(grid).axes) == 1


def test_a_folder_of_several_streams_asks_for_one(tmp_path: Path, capsys, monkeypatch) -> None:
    from cl_lora.leaderboard import findings

    table = grid(lambda f: 0.1).assign(
        stream=["a", "b"] * 30, init="intermediate", method="m", init_args=[{"f": 0.5}] * 60
    )
    monkeypatch.setattr(findings, "collect_runs", lambda path: type("R", (), {"table": table}))
    assert main(["intermediate", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "holds runs of 2 streams (a, b" in capsys.readouterr().err
    assert main(["intermediate", str(tmp_path), "--stream", "a", "--out", str(tmp_path)]) == 0


# -- results/FINDINGS.md rebuilt from its run folders -----------------------------------------
REPOSITORY = Path(__file__).resolve().parent.parent
COMMAND = re.compile(r"^python -m cl_lora\.leaderboard\.findings (.+)$", re.MULTILINE)
OUTCOME = re.compile(r"not supported|(?<!not )supported|inconclusive")


def findings_commands(text: str) -> list[list[str]]:
    """The arguments of every ``python -m cl_lora.leaderboard.findings`` command that starts a
    line of ``text`` (continued lines joined), without ``--out``."""
    commands = []
    for line in COMMAND.findall(re.sub(r"\\\n\s*", " ", text)):
        args = shlex.split(line, comments=True)
        if "--out" in args:
            del args[args.index("--out") : args.index("--out") + 2]
        commands.append(args)
    return commands


def table_blocks(text: str) -> list[list[str]]:
    """The markdown tables of ``text``: runs of consecutive lines that start with ``|``."""
    blocks, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append(line)
        elif block:
            blocks.append(block)
            block = []
    return blocks


def rebuild(finding: str, folder: str, options: list[str], out: Path, capsys) -> tuple[str, str]:
    """What ``python -m cl_lora.leaderboard.findings FINDING FOLDER`` prints (its markdown and
    its verdict line), checking first that every run of the folder is read and used."""
    from cl_lora.leaderboard.findings import FINDINGS

    runs = REPOSITORY / folder
    collected = collect_runs(runs)
    assert not collected.skipped, collected.skipped
    grid = FINDINGS[finding][0](collected.table)
    assert len(grid) == len(list(runs.rglob("result.json")))  # no run left out
    assert main([finding, str(runs), *options, "--out", str(out)]) == 0
    assert (out / f"{finding}.png").stat().st_size > 0
    printed, verdict = capsys.readouterr().out.split("\nverdict: ")
    return printed, verdict.splitlines()[0]


def test_findings_tables_and_verdicts_are_rebuilt_from_their_run_folders(tmp_path, capsys) -> None:
    """Each section of results/FINDINGS.md that gives ``findings`` commands: the commands, run
    on the committed run folders, print exactly the section's tables (every row, no row more,
    no table typed in beside them) and its other lines, and their verdicts are the outcomes
    its verdict paragraphs state in emphasis (``**Verdict: supported.**``, ``*U-shape:
    inconclusive*``). The findings commands of the README and the docs pages are FINDINGS.md's."""
    text = (REPOSITORY / "results" / "FINDINGS.md").read_text()
    sections = [section for section in text.split("\n## ")[1:] if findings_commands(section)]
    assert len(sections) >= 3
    for number, section in enumerate(sections):
        title, lines = section.splitlines()[0], section.splitlines()
        tables, outcomes = [], set()
        for finding, folder, *options in findings_commands(section):
            printed, verdict = rebuild(finding, folder, options, tmp_path / f"{number}", capsys)
            tables += table_blocks(printed)
            outcomes |= set(OUTCOME.findall(verdict))
            for line in printed.splitlines():
                assert not line or line.startswith("|") or line in lines, (title, line)
        assert tables and sorted(tables) == sorted(table_blocks(section)), title
        verdicts = [p for p in section.split("\n\n") if p.startswith("**Verdict")]
        emphasized = re.findall(r"\*+([^*]+)\*+", " ".join(verdicts).replace("\n", " "))
        assert set(OUTCOME.findall(" ".join(emphasized))) == outcomes, title
    documents = [REPOSITORY / "README.md", *sorted((REPOSITORY / "docs").glob("*.md"))]
    documented = {tuple(c) for d in documents for c in findings_commands(d.read_text())}
    assert documented and documented <= {tuple(c) for c in findings_commands(text)}
