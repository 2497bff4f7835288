"""The findings' statistics and verdict rules on constructed grids with a known answer, and
results/FINDINGS.md's tables and verdicts rebuilt from its committed run folders."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

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


# -- finding (d): LoRA-Null's knowledge claim along a stream ------------------------------------
def stream_grid(seeds: int = 5, pissa_acc: float = 0.8) -> pd.DataFrame:
    """Three methods over a 3-task stream. LoRA-Null loses 0.1 nats per task, lora 0.3 and
    pissa 0.1 after task 1 then 0.3 (so LoRA-Null keeps more than both only after tasks 2 and
    3); Delta R^G: LoRA-Null -0.01, lora -0.05, pissa -0.01 (seed noise only)."""
    noise = np.random.default_rng(3).normal(0, 0.004, size=(3, seeds, 4))
    per_task = {"lora-null": [0.1, 0.1, 0.1], "lora": [0.3, 0.3, 0.3], "pissa": [0.1, 0.3, 0.3]}
    general = {"lora-null": -0.01, "lora": -0.05, "pissa": -0.01}
    acc = {"lora-null": 0.8, "lora": 0.8, "pissa": pissa_acc}
    rows = []
    for i, method in enumerate(per_task):
        for seed in range(seeds):
            drops = np.cumsum(per_task[method]) + noise[i, seed, :3]
            rows.append(
                dict(window=method, lr=1e-3 * (1 + seed), seed=seed, learning_acc=0.85,
                     acc=acc[method] + noise[i, seed, 3], retention_drop=0.0, bwt=-0.05,
                     loglik_drop=drops[-1], forgetting=0.05,
                     general_ability=general[method] + noise[i, seed, 3] / 4,
                     lr_edge="high" if (method, seed) == ("pissa", 2) else None,
                     minutes=30.0 + seed,
                     **{f"loglik_drop_{k + 1}": d for k, d in enumerate(drops)},
                     **{"change mmlu acc": general[method], "change mmlu acc_norm": 0.0})
            )  # fmt: skip
    return pd.DataFrame(rows)


def test_knowledge_stream_gives_its_verdicts_only_on_five_finished_seeds() -> None:
    from cl_lora.leaderboard.knowledge import knowledge_stream_report, plot_knowledge_stream

    grid = stream_grid()
    table, verdict = knowledge_stream_report(grid)
    # rule 1 at the end of the stream: lora and pissa both lose more (0.9 vs 0.3 nats)
    assert verdict.startswith("LoRA-Null keeps the most knowledge: supported;")
    # rule 3: lora's Delta R^G is lower, pissa's indistinguishable -> inconclusive
    assert verdict.endswith("LoRA-Null keeps the most general ability: inconclusive")
    assert "Seeds finished by all 3 methods: 0, 1, 2, 3, 4 (finished runs: lora 5" in table
    # rule 2: pissa keeps as much after task 1, so the advantage holds after tasks 2 and 3 only
    assert "after tasks: 2, 3; kept throughout: no." in table
    assert re.search(r"\| pissa - lora-null \| [+-]0\.00\d ± [\d.]+ \| \+0\.20\d ± ", table)
    assert (
        "| pissa | 0.850 ± 0.000 | -0.050 ± 0.000 | 0.050 ± 0.000 | 0: 0.001, 1: 0.002" in table
        and "| 2 (high) |" in table
    )
    # rule 4: a method with higher task accuracy is named in the verdict
    assert (
        ", at lower task accuracy than pissa;"
        in knowledge_stream_report(stream_grid(pissa_acc=0.9))[1]
    )
    # four seeds: the tables, no verdict
    table, verdict = knowledge_stream_report(stream_grid(seeds=4))
    assert verdict == "none yet: 4 of 5 seeds finished by every method" and "| lora |" in table
    # every finished run, with its time; here 3 methods x 5 seeds of 30 + seed minutes
    assert re.search(
        r"\| pissa \| 2 \| 0\.003 \| 0\.\d{3} \| 0\.050 \| 0\.69\d \| -0\.01\d \| 32 \|", table
    )
    assert "Run time: 8.0 h over 15 runs" in knowledge_stream_report(grid)[0]
    assert len(plot_knowledge_stream(grid).axes) == 2


def test_knowledge_stream_shows_finished_runs_before_any_seed_is_complete() -> None:
    """A sweep part-way through its first seed: no pairs, but each finished run is shown."""
    from cl_lora.leaderboard.knowledge import knowledge_stream_report

    grid = stream_grid(seeds=2)
    pissa_only_seed_1 = (grid["window"] != "pissa") & (grid["seed"] == 0) | (
        (grid["window"] == "pissa") & (grid["seed"] == 1)
    )
    table, verdict = knowledge_stream_report(grid[pissa_only_seed_1])
    assert verdict == "none yet: no seed is finished by every method"
    assert table.startswith("Seeds finished by all 3 methods: none (finished runs: lora 1,")
    runs = [line.split(" | ")[:2] for line in table.splitlines() if re.match(r"\| \S+ \| \d", line)]
    assert runs == [["| lora", "0"], ["| lora-null", "0"], ["| pissa", "1"]]
    assert "Run time: 1.5 h over 3 runs" in table


def test_knowledge_stream_pairs_only_the_seeds_every_method_finished() -> None:
    from cl_lora.leaderboard.knowledge import knowledge_stream_report

    grid = stream_grid(seeds=6)
    unfinished = (grid["window"] == "pissa") & (grid["seed"] == 5)
    grid.loc[grid["window"] == "lora-null", "loglik_drop"] += np.where(
        grid.loc[grid["window"] == "lora-null", "seed"] == 5, 10.0, 0.0
    )  # seed 5's LoRA-Null would reverse the verdict if it counted
    table, verdict = knowledge_stream_report(grid[~unfinished])
    counts = "(finished runs: lora 6, lora-null 6, pissa 5)"
    assert f"Seeds finished by all 3 methods: 0, 1, 2, 3, 4 {counts}" in table
    assert verdict.startswith("LoRA-Null keeps the most knowledge: supported")


def test_knowledge_stream_reads_each_runs_curves(tmp_path: Path) -> None:
    from cl_lora.leaderboard.knowledge import _along_stream

    probe = {"metric": "acc", "curve": [0.3, 0.25, 0.2],
             "other_metrics": {"acc_norm": {"curve": [0.4, 0.5, None]}}}  # fmt: skip
    result = {
        "retention": {"gold_loglik": {"curve": [-2.0, -2.5, -3.25]}, "probes": {"mmlu": probe}},
        "lr_search": {"edge": "low", "cost": {"seconds": 600.0}},
        "timings": {"train_s": [300.0, 400.0], "eval_s": [100.0, 80.0], "total_s": 1500.0},
        "determinism": {"resumed_after_task": None},
    }
    row = _along_stream(result)
    assert row["minutes"] == 25.0  # the wall time, from the search's start to the result
    result["determinism"]["resumed_after_task"] = 0  # total_s counts the last part only
    assert _along_stream(result)["minutes"] == pytest.approx((600 + 700 + 180) / 60)
    assert row["loglik_drop_1"] == 0.5 and row["loglik_drop_2"] == 1.25  # before - after task k
    assert row["change mmlu acc"] == pytest.approx(-0.1)  # after the last task - before
    assert np.isnan(row["change mmlu acc_norm"]) and row["lr_edge"] == "low"
