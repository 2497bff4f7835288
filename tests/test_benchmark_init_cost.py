"""benchmarks/init_cost.py: a smoke run with tiny settings (keys and signs, never timings)."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

from cl_lora.errors import BadInputError

ROOT = Path(__file__).resolve().parents[1]
# Cheap on MiniLM, and between them every kind of work: no statistics (lora, olora: PEFT's
# "olora" too), the gradient pass (lora-ga, and PEFT's preprocess_loraga), the warm-up (lora-init).
METHODS = ["lora", "olora", "lora-ga", "lora-init"]
TINY_VIT = ["--vit-model", "vit_tiny_patch16_224", "--vit-image-size", "32", "--vit-images", "2"]


def _init_cost() -> ModuleType:
    """``benchmarks.init_cost``; benchmarks/ is a repository folder, not an installed package."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module("benchmarks.init_cost")


def test_init_cost_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "init_cost.json"
    result = _init_cost().main(
        ["--methods", *METHODS, "--repeats", "1", "--calib-size", "4", "--warmup-steps", "1"]
        + ["--train-steps", "1", "--train-warmup-steps", "0", "--device", "cpu"]
        + [*TINY_VIT, "--vit-batch-size", "2", "--vit-warmup-steps", "1", "--json", str(out)]
    )
    training = result["training"]
    assert training["timed_steps"] == 1 and training["extrapolated"]
    assert training["task_steps"] == math.ceil(training["train_examples"] / 16) * 2
    assert training["seconds_per_step"] > 0 and training["task_train_s"] > 0

    backbones = result["backbones"]
    assert set(backbones) == {"minilm", "vit_tiny_patch16_224"}
    assert backbones["minilm"]["adapted_layers"] == 36
    assert backbones["vit_tiny_patch16_224"]["adapted_layers"] == 48  # qkv, proj, fc1, fc2 x 12
    text_memory = backbones["minilm"]["covariance_memory"]
    assert (text_memory["modules"], text_memory["distinct_inputs"]) == (36, 24)  # q/k/v share
    assert 0 < text_memory["bytes"] < text_memory["bytes_one_per_module"]
    assert text_memory["saved_mib"] > 0 and 0 < text_memory["saved_fraction"] < 1
    vit_memory = backbones["vit_tiny_patch16_224"]["covariance_memory"]
    assert vit_memory["bytes"] == vit_memory["bytes_one_per_module"] > 0  # fused qkv: no sharing

    rows = {(row["backbone"], row["method"]): row for row in result["rows"]}
    assert set(rows) == {(b, m) for b in backbones for m in METHODS}
    for (backbone, method), row in rows.items():
        assert row["attach_s"] > 0 and row["total_s"] > 0 and len(row["rounds"]) == 1
        assert (row["calibration_s"] > 0) == bool(row["needs"])
        fraction = row["fraction_of_task_training"]
        assert fraction > 0 if backbone == "minilm" else fraction is None
        if method == "lora-init":  # PEFT does not have it
            assert row["peft"] is None and row["ratio"] is None
        else:
            assert row["peft"]["total_s"] > 0 and row["ratio"] > 0, row["peft"]
    assert rows[("minilm", "lora-ga")]["peft"]["prep_s"] > 0  # PEFT's gradient pass, timed
    assert json.loads(out.read_text()) == result
    printed = capsys.readouterr().out
    assert "ratio = ours / PEFT" in printed and "covariance memory" in printed


@pytest.mark.parametrize(
    "argv",
    [["--methods", "nope"], ["--repeats", "0"], ["--vit-images", "x"], ["--vit-model", "nope"]],
)
def test_init_cost_bad_input(argv: list[str]) -> None:
    with pytest.raises(BadInputError):
        _init_cost().main([*argv, "--skip-peft"])
