"""The leaderboard: aggregation over seeds, skipping unusable files, reference matching,
figures, and the committed results rebuilt from their result files."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cl_lora.leaderboard.__main__ import DEFAULT_REFERENCES, main
from cl_lora.leaderboard.aggregate import aggregate, holm, interval, paired_with_reference
from cl_lora.leaderboard.collect import collect_runs, method_name
from cl_lora.leaderboard.plots import intermediate_sweep, pareto_front
from cl_lora.leaderboard.references import COLUMNS, load_references, split_references
from cl_lora.results import write_run

ROOT = Path(__file__).resolve().parent.parent
TASKS = ["first", "second"]


def fake_result(
    seed: int,
    matrix: list[list[float | None]],
    init: str = "lora",
    stream: str = "toy",
    backbone: str = "tiny",
    init_args: dict | None = None,
    **setup,
) -> dict:
    """A result file's content with only what the leaderboard reads."""
    config = {
        "stream": stream,
        "init": init,
        "init_args": init_args or {},
        "baseline": None,
        "baseline_args": {},
        "plugins": [],
        "plugin_args": {},
        "seed": seed,
        "rank": 8,
        "epochs": 1,
        **setup,
    }
    return {
        "run_id": f"{stream}-{init}-s{seed}-{setup.get('rank', 8)}",
        "config": config,
        "stream": {"name": stream, "scenario": "task"},
        "tasks": [{"name": name} for name in TASKS[: len(matrix)]],
        "matrix": matrix,
        "before": [None] * len(matrix),
        "seed": seed,
        "backbone": {"name": backbone},
        "timings": {"total_s": 10.0 + seed},
        "retention": {
            "curve": [0.7] + [0.7 - 0.1 * (i + 1) for i in range(len(matrix))],
            "drop": 0.1 * len(matrix),
        },
        "trainable_params": [100] * len(matrix),
    }


def write(runs_dir: Path, result: dict, name: str | None = None) -> Path:
    return write_run(runs_dir / (name or result["run_id"]), result)


# ACC per seed: lora 0.6, 0.7, 0.8 and pissa 0.7, 0.9, 0.8 (R[1] = [x, x]); forgetting from R[0][0].
LORA = {0: [[0.7, None], [0.6, 0.6]], 1: [[0.7, None], [0.7, 0.7]], 2: [[0.9, None], [0.8, 0.8]]}
PISSA = {0: [[0.7, None], [0.7, 0.7]], 1: [[0.9, None], [0.9, 0.9]], 2: [[0.8, None], [0.8, 0.8]]}


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    for seed in range(3):
        write(tmp_path, fake_result(seed, LORA[seed]))
        write(tmp_path, fake_result(seed, PISSA[seed], init="pissa"))
    return tmp_path


def test_aggregate_gives_known_means_intervals_ranks_and_pairs(runs_dir: Path):
    runs = collect_runs(runs_dir)
    assert runs.skipped == []
    table = aggregate(runs.table).set_index("method")
    lora, pissa = table.loc["lora"], table.loc["pissa"]
    assert lora["seeds"] == [0, 1, 2]
    assert lora["acc_mean"] == pytest.approx(0.7)
    assert lora["acc_std"] == pytest.approx(0.1)
    assert lora["acc_n"] == 3
    assert lora["acc_ci"] == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-6)
    # forgetting per seed: lora 0.1, 0.0, 0.1; pissa 0.0, 0.0, 0.0
    assert lora["forgetting_mean"] == pytest.approx(0.2 / 3)
    assert pissa["forgetting_mean"] == pytest.approx(0.0)
    assert pissa["forgetting_std"] == pytest.approx(0.0)
    assert lora["retention_drop_mean"] == pytest.approx(0.2)
    assert lora["wall_s_mean"] == pytest.approx(11.0)
    assert (pissa["rank"], lora["rank"]) == (1, 2)

    paired = paired_with_reference(runs.table).set_index(["method", "metric"])
    acc = paired.loc[("pissa", "acc")]
    assert acc["pairs"] == 3
    assert acc["diff_mean"] == pytest.approx(0.1)  # differences 0.1, 0.2, 0.0
    assert acc["diff_ci"] == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-6)
    expected = stats.ttest_rel([0.7, 0.9, 0.8], [0.6, 0.7, 0.8]).pvalue
    assert acc["p_value"] == pytest.approx(expected)
    assert acc["p_holm"] == pytest.approx(expected)  # the only test of its family
    assert acc["better"] == 2  # seed 2 ties
    assert paired.loc[("pissa", "forgetting")]["better"] == 2  # 0 < 0.1 twice


def test_holm_adjusts_within_a_family_and_skips_untested():
    # m = 4 tests: sorted 0.01, 0.02, 0.03, 0.04 -> 0.04, 0.06, 0.06 (monotone), 0.06
    p = np.array([0.03, np.nan, 0.01, 0.04, 0.02])
    adjusted = holm(p)
    np.testing.assert_allclose(adjusted[[2, 4, 0, 3]], [0.04, 0.06, 0.06, 0.06])
    assert np.isnan(adjusted[1])
    np.testing.assert_allclose(holm(np.array([0.5, 0.4])), [0.8, 0.8])  # capped at 1 first
    assert holm(np.array([0.9, 0.8]))[0] == 1.0


def test_interval_is_unknown_not_zero_for_one_seed():
    mean, std, n, half = interval(np.array([0.5, np.nan]))
    assert (mean, n) == (0.5, 1)
    assert math.isnan(std) and math.isnan(half)
    assert interval(np.array([]))[2] == 0


def test_pairs_only_use_shared_seeds(runs_dir: Path):
    write(runs_dir, fake_result(5, [[0.5, None], [0.5, 0.5]], init="milora"))
    paired = paired_with_reference(collect_runs(runs_dir).table).set_index(["method", "metric"])
    row = paired.loc[("milora", "acc")]
    assert row["pairs"] == 0 and math.isnan(row["diff_mean"])


def test_runs_with_other_settings_are_not_averaged_together(runs_dir: Path):
    write(runs_dir, fake_result(0, [[0.1, None], [0.1, 0.1]], rank=16))
    table = aggregate(collect_runs(runs_dir).table).set_index("method")
    assert table.loc["lora", "acc_mean"] == pytest.approx(0.7)
    assert table.loc["lora [rank=16]", "acc_mean"] == pytest.approx(0.1)


def test_searched_and_fixed_rates_are_never_averaged_together(tmp_path: Path):
    """Whichever is the majority, runs with --lr-search and runs without get their own rows
    (files written before the setting existed lack it, which means no search)."""
    for seed in (0, 1):
        write(tmp_path, fake_result(seed, [[0.5, None], [0.5, 0.5]]))
    for seed in (2, 3, 4):  # searched runs are the majority here
        write(tmp_path, fake_result(seed, [[0.2, None], [0.2, 0.2]], lr_search=[1e-4, 1e-3]))
    table = aggregate(collect_runs(tmp_path).table).set_index("method")
    assert table.loc["lora", "acc_mean"] == pytest.approx(0.2)
    assert table.loc["lora [lr_search=None]", "acc_mean"] == pytest.approx(0.5)


def test_runs_on_other_weights_are_not_averaged_together(tmp_path: Path):
    """A run whose backbone fingerprint differs from its stream's usual one gets its own row;
    a file without a fingerprint (written before they were recorded) joins the usual row."""
    for seed, fingerprint in [(0, "aaaa1111bbbb2222"), (1, "aaaa1111bbbb2222"), (2, None),
                              (3, "cccc3333dddd4444")]:  # fmt: skip
        result = fake_result(seed, [[0.5 + seed / 10, None], [0.5, 0.5]])
        if fingerprint:
            result["backbone"]["fingerprint"] = fingerprint
        write(tmp_path, result)
    table = aggregate(collect_runs(tmp_path).table).set_index("method")
    assert table.loc["lora", "seeds"] == [0, 1, 2]
    assert table.loc["lora [weights=cccc3333]", "seeds"] == [3]


def test_method_names_carry_arguments():
    base = {"init": "lora", "init_args": {}, "baseline": None, "baseline_args": {}}
    assert method_name(base) == "lora"
    assert method_name(
        {**base, "init": "intermediate", "init_args": {"f": 0.25, "start": None}}
    ) == ("intermediate(f=0.25)")
    assert method_name({**base, "baseline": "seq-lora", "init": "pissa"}) == "seq-lora(init=pissa)"
    assert method_name({**base, "baseline": "joint"}) == "joint"
    plugins = {**base, "plugins": ["replay"], "plugin_args": {"mem_size": 200}}
    assert method_name(plugins) == "lora+replay(mem_size=200)"


def test_unusable_files_are_skipped_with_a_warning_that_names_them(runs_dir: Path, capsys):
    (runs_dir / "broken").mkdir()
    (runs_dir / "broken" / "result.json").write_text("{not json")
    (runs_dir / "future").mkdir()
    (runs_dir / "future" / "result.json").write_text(json.dumps({"schema_version": 99}))
    incomplete = fake_result(7, [[0.5, None], [None, None]])
    write(runs_dir, incomplete, "incomplete")
    other_tasks = fake_result(8, [[0.5]])  # one task where the stream has two
    write(runs_dir, other_tasks, "other-tasks")
    no_matrix = fake_result(9, [[0.5, None], [0.5, 0.5]])
    del no_matrix["matrix"]
    (runs_dir / "no-matrix").mkdir()
    (runs_dir / "no-matrix" / "result.json").write_text(
        json.dumps({"schema_version": 1, **no_matrix})
    )

    runs = collect_runs(runs_dir)
    reasons = {path.parent.name: reason for path, reason in runs.skipped}
    assert set(reasons) == {"broken", "future", "incomplete", "other-tasks", "no-matrix"}
    assert "schema_version 99" in reasons["future"]
    assert "last row" in reasons["incomplete"]
    assert "differ from the other toy runs" in reasons["other-tasks"]
    assert "matrix" in reasons["no-matrix"]
    assert len(runs.table) == 6  # the good ones are all there

    out = runs_dir / "board"
    assert main([str(runs_dir), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    for name in reasons:
        assert f"warning: skipped {runs_dir / name / 'result.json'}:" in err
    board = (out / "LEADERBOARD.md").read_text()
    assert "(5 skipped)" in board and "other-tasks/result.json: incompatible" in board


def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2
    assert "no usable result.json" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_outputs_and_figures(runs_dir: Path):
    for seed in range(2):
        for f in (0.0, 0.5, 1.0):
            result = fake_result(
                seed,
                [[0.8, None], [0.5 + f / 10, 0.6]],
                init="intermediate",
                init_args={"f": f, "start": None},
            )
            write(runs_dir, result, f"inter-{f}-{seed}")
    out = runs_dir / "board"
    assert main([str(runs_dir), "--out", str(out), "--format", "md", "csv"]) == 0
    names = {path.name for path in out.iterdir()}
    assert {"LEADERBOARD.md", "leaderboard.csv", "paired.csv", "runs.csv"} <= names
    plots = {path.name for path in (out / "plots").iterdir()}
    assert plots == {
        f"{kind}-toy-task-tiny.png"
        for kind in ("heatmaps", "acc-forgetting", "retention", "intermediate-f")
    }
    board = (out / "LEADERBOARD.md").read_text()
    assert re.search(r"^\|\s+1 \| pissa ", board, re.M)
    assert re.search(r"^\|\s+2 \| lora ", board, re.M)
    assert "0.700 ± 0.100 [±0.248]" in board  # lora's ACC cell
    assert "![acc-forgetting-toy-task-tiny](plots/acc-forgetting-toy-task-tiny.png)" in board
    table = pd.read_csv(out / "leaderboard.csv")
    assert set(table["method"]) == {
        "lora",
        "pissa",
        "intermediate(f=0.0)",
        "intermediate(f=0.5)",
        "intermediate(f=1.0)",
    }


def test_intermediate_sweep_places_runs_by_f_unless_start_overrides_it(runs_dir: Path):
    for f, start in ((0.0, None), (1.0, None), (0.5, 3)):
        result = fake_result(0, LORA[0], init="intermediate", init_args={"f": f, "start": start})
        write(runs_dir, result, f"inter-{f}-{start}")
    sweep = intermediate_sweep(collect_runs(runs_dir).table)
    assert sorted(sweep["f"]) == [0.0, 1.0]


def test_pareto_front():
    acc = np.array([0.9, 0.8, 0.7, 0.85])
    forgetting = np.array([0.3, 0.1, 0.2, 0.3])
    assert pareto_front(acc, forgetting).tolist() == [True, True, False, False]


def reference_rows(**changes) -> dict:
    row = {column: "x" for column in COLUMNS}
    row.update(
        stream="split-cifar100",
        backbone="vit-b/16-in21k",
        method="inflora",
        metric="acc",
        value="86.51",
        unit="%",
        source="a paper, Table 1",
        checked="no",
    )
    row.update(changes)
    return row


def test_references_match_on_stream_backbone_and_metric(tmp_path: Path):
    refs = tmp_path / "refs"
    refs.mkdir()
    rows = [
        reference_rows(),
        reference_rows(backbone="vit-b/16-in1k"),
        reference_rows(metric="triviaqa"),
        reference_rows(source=" "),
        reference_rows(unit="percent"),
    ]
    pd.DataFrame(rows).to_csv(refs / "a.csv", index=False)
    references, warnings = load_references(refs)
    assert warnings == [
        f"{refs / 'a.csv'}:5: skipped, no source",
        f"{refs / 'a.csv'}:6: skipped, unit is neither % nor fraction",
    ]
    assert references["fraction"].tolist() == pytest.approx([0.8651] * 3)
    ours = pd.DataFrame(
        {"stream": ["split-cifar100"], "backbone": ["vit_base_patch16_224.augreg_in21k"]}
    )
    matching, other = split_references(references, ours, ["acc", "forgetting"])
    assert len(matching) == 1 and matching.iloc[0]["backbone"] == "vit-b/16-in21k"
    assert sorted(other["backbone"] + "/" + other["metric"]) == [
        "vit-b/16-in1k/acc",
        "vit-b/16-in21k/triviaqa",
    ]

    runs_dir = tmp_path / "runs"
    for seed in range(2):
        write(
            runs_dir,
            fake_result(
                seed,
                [[0.9, None], [0.8, 0.9]],
                stream="split-cifar100",
                backbone="vit_base_patch16_224.augreg_in21k",
            ),
        )
    out = tmp_path / "board"
    assert main([str(runs_dir), "--out", str(out), "--compare", "--references", str(refs)]) == 0
    board = (out / "LEADERBOARD.md").read_text()
    same = board.split(
        "## Published vs ours: split-cifar100, vit_base_patch16_224.augreg_in21k, acc"
    )
    same, different = same[1].split("## Published: ", 1)
    assert "0.8651 (86.51%)" in same and "| ours " in same and "vit-b/16-in1k" not in same
    assert "vit-b/16-in1k" in different and "triviaqa" in different


def test_committed_references_all_have_a_source():
    references, warnings = load_references(DEFAULT_REFERENCES)
    assert warnings == []
    assert len(references) > 0
    raw = pd.concat(
        pd.read_csv(path, dtype=str, keep_default_na=False)
        for path in sorted(DEFAULT_REFERENCES.glob("*.csv"))
    )
    assert len(raw) == len(references)  # no row was dropped
    assert (raw["source"].str.len() > 10).all() and (raw["quote"].str.strip() != "").all()
    assert set(raw["checked"]) <= {"yes", "no"}


def _without_timestamp(text: str) -> str:
    return re.sub(r"at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "at <time>", text)


def _files(folder: Path) -> list[str]:
    """Every file under ``folder``, as paths relative to it, sorted."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_committed_leaderboard_rebuilds_from_committed_runs(tmp_path: Path):
    """results/LEADERBOARD.md, its CSVs, the site in results/site (its pages; its figures and
    those of results/plots by name) come out of the committed result files alone (the command
    in results/reproduce.sh)."""
    results = ROOT / "results"
    argv = [str(results / "benchmark-runs"), "--out", str(tmp_path), "--compare"]
    assert main([*argv, "--format", "md", "csv", "--html", str(tmp_path / "site")]) == 0
    pages = [name for name in _files(results / "site") if not name.endswith(".png")]
    for name in ["LEADERBOARD.md", "leaderboard.csv", "paired.csv", "runs.csv"]:
        rebuilt = _without_timestamp((tmp_path / name).read_text())
        assert rebuilt == _without_timestamp((results / name).read_text()), name
    for name in pages:
        rebuilt = _without_timestamp((tmp_path / "site" / name).read_text())
        assert rebuilt == _without_timestamp((results / "site" / name).read_text()), name
    assert _files(tmp_path / "plots") == _files(results / "plots")
    assert _files(tmp_path / "site") == _files(results / "site")


def test_committed_cl_benchmark_references_line_up_with_a_t5_run():
    """O-LoRA's T5-large rows meet a run of the same order on google-t5/t5-large (Hub owner and
    case ignored), not a run of another order, another task list or another T5."""
    references, warnings = load_references(ROOT / "results" / "references")
    assert not warnings
    ours = pd.DataFrame(
        {
            "stream": ["cl-benchmark-order1", "long-15-order4", "cl-benchmark:amazon,agnews",
                       "cl-benchmark-order2"],
            "backbone": ["google-t5/T5-Large", "t5-large", "google-t5/t5-large",
                         "google/t5-large-lm-adapt"],
        }
    )  # fmt: skip
    matching, _ = split_references(references, ours, ["acc"])
    assert set(matching["stream"]) == {"cl-benchmark-order1", "long-15-order4"}
    assert set(matching["backbone"]) == {"t5-large"}
    assert {"o-lora", "seq-lora"} <= set(matching["method"])


def test_o_loras_own_logged_results_sit_beside_the_papers():
    """The official repository's logs (cmnfriend/O-LoRA @ 07117e1,
    logs_and_outputs/order1_olora/outputs/4-agnews/all_results.json: "predict_exact_match":
    78.3651; long_olora/outputs/15-WiC/all_results.json: 73.8813, pooled over all test
    examples) meet runs of the same stream next to the paper's numbers as others quote them."""
    references, _ = load_references(ROOT / "results" / "references")
    ours = pd.DataFrame({"stream": ["cl-benchmark-order1", "long-15-order6"],
                         "backbone": ["google-t5/t5-large"] * 2})  # fmt: skip
    matching, _ = split_references(references, ours, ["acc", "acc_pooled"])
    logged = matching[matching["paper"].str.contains("official repository")]
    value = logged.set_index(["stream", "method", "metric"])["value"].astype(float)
    assert value[("cl-benchmark-order1", "o-lora", "acc_pooled")] == 78.3651
    assert value[("cl-benchmark-order1", "inclora", "acc")] == 68.6184
    assert value[("cl-benchmark-order1", "seq-lora", "acc")] == 62.875
    assert value[("cl-benchmark-order1", "seq-ft", "acc")] == 67.7664
    assert value[("long-15-order6", "o-lora", "acc_pooled")] == 73.8813
    assert ("long-15-order6", "o-lora", "acc") not in value  # pooled is not the task mean
    quoted = matching[~matching["paper"].str.contains("official repository")]
    assert {"o-lora"} <= set(quoted[quoted["stream"] == "cl-benchmark-order1"]["method"])
