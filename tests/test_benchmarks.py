"""The benchmark scripts: smoke runs with tiny settings (numbers, not timing, are checked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import startup, throughput
from cl_lora.errors import BadInputError


@pytest.mark.parametrize("model", ["minilm", "smollm2"])
def test_throughput_smoke(model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "throughput.json"
    result = throughput.main(
        ["--model", model, "--examples", "4", "--batch-size", "2", "--repeats", "1"]
        + ["--warmup-batches", "1", "--device", "cpu", "--json", str(out)]
    )
    assert result["same_batches"]
    assert (result["examples"], result["batches"], result["device"]) == (4, 2, "cpu")
    for side in ("strategy", "bare"):
        assert result[side]["examples_per_s"] > 0
        assert result[side]["loop_examples_per_s"] > 0
        assert result[side]["init_s"] >= 0
        assert result[side]["tokens_per_s"] > result[side]["examples_per_s"]
        assert len(result[side]["rounds_examples_per_s"]) == 1
    assert result["ratio"] > 0 and result["loop_ratio"] > 0
    # Same weights, init, batches and recipe: both sides did the same work.
    assert result["strategy"]["final_loss"] == pytest.approx(result["bare"]["final_loss"], rel=1e-4)
    assert result["eval_examples"] == 16 and result["eval_s"] > 0  # one evaluation, timed
    assert json.loads(out.read_text()) == result
    assert "ratio strategy/bare = " in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv", [["--examples", "0"], ["--precision", "fp16"], ["--repeats", "x"], ["--model", "t5"]]
)
def test_throughput_bad_input(argv: list[str]) -> None:
    with pytest.raises(BadInputError):
        throughput.main(argv)


def test_startup_times_each_command_side_by_side(tmp_path: Path) -> None:
    out = tmp_path / "startup.json"
    result = startup.main(["--repeats", "1", "--json", str(out)])
    assert set(result["median_s"]) == {"import torch", "run --help", "run --list"}
    assert result["ratio_to_torch"]["import torch"] == pytest.approx(1.0)
    assert all(len(values) == 1 and values[0] > 0 for values in result["seconds"].values())
    assert json.loads(out.read_text()) == result
    with pytest.raises(BadInputError):
        startup.main(["--repeats", "0"])
