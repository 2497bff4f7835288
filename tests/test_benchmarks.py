"""The benchmark scripts: smoke runs with tiny settings (numbers, not timing, are checked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import startup, svd_init, throughput
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
    assert all(len(values) == 1 and values[0] > 0 for values in result["seconds"].values())
    assert json.loads(out.read_text()) == result
    with pytest.raises(BadInputError):
        startup.main(["--repeats", "0"])


def test_startup_reports_each_commands_median_over_torchs(monkeypatch) -> None:
    """Scripted wall times (no interpreters): rounds alternate the commands, each one's median
    is taken over its own rounds, and its ratio is that median over ``import torch``'s."""
    seconds = {"import torch": [2.0, 9.0, 1.0], "run --help": [3.0, 4.0, 30.0],
               "run --list": [1.5, 0.5, 7.0]}  # fmt: skip
    calls = []

    def wall_time(arguments: list[str]) -> float:
        name = next(name for name, args in startup.COMMANDS.items() if args == arguments)
        calls.append(name)
        return seconds[name][calls.count(name) - 1]

    monkeypatch.setattr(startup, "wall_time", wall_time)
    result = startup.measure(3)
    assert calls == list(startup.COMMANDS) * 3  # one of each per round
    assert result["seconds"] == seconds
    assert result["median_s"] == {"import torch": 2.0, "run --help": 4.0, "run --list": 1.5}
    assert result["ratio_to_torch"] == {"import torch": 1.0, "run --help": 2.0, "run --list": 0.75}
    assert "run --help" in startup.table(result) and "2.00x" in startup.table(result)


def test_svd_init_times_ours_against_peft_per_shape_and_method(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "svd_init.json"
    result = svd_init.main(["--shapes", "64x48", "--repeats", "1", "--json", str(out)])
    rows = {row["method"]: row for row in result["rows"]}
    assert set(rows) == set(svd_init.DEFAULT_METHODS)
    for row in rows.values():
        assert row["shape"] == "64x48" and len(row["ours_rounds"]) == len(row["peft_rounds"]) == 1
        assert row["ours_s"] > 0 and row["peft_s"] > 0
        assert row["ratio"] == pytest.approx(row["ours_s"] / row["peft_s"])
    # Same method, deterministic: both sides wrote the same residual; elsewhere no comparison.
    assert rows["olora"]["max_residual_difference"] == 0.0
    assert rows["pissa"]["max_residual_difference"] < 1e-5
    assert rows["pissa-niter"]["peft_init_lora_weights"] == "pissa_niter_4"
    assert rows["milora"]["max_residual_difference"] is None  # PEFT's pissa stands in
    assert result["llama_7b_block"] == {}  # only with all three LLaMA shapes
    assert json.loads(out.read_text()) == result
    printed = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(printed) if line.startswith("shape"))
    header, table = printed[at], printed[at + 2 : at + 2 + len(rows)]  # under the rule
    assert header.split()[3:6] == ["ours", "s", "PEFT"] and "ours/PEFT" in header
    end = header.index("ours/PEFT") + len("ours/PEFT")  # the ratio column, right-aligned
    for line, row in zip(table, result["rows"], strict=True):
        assert line.startswith("64x48") and row["label"] in line
        assert line[end - 11 : end].strip() == f"{row['ratio']:.2f}"


@pytest.mark.parametrize(
    "argv",
    [["--shapes", "64by48"], ["--shapes", "64x4"], ["--methods", "dora"], ["--niter", "0"]],
)
def test_svd_init_bad_input(argv: list[str]) -> None:
    with pytest.raises(BadInputError):
        svd_init.main(argv)


def test_calibration_memory_per_layer_and_under_a_budget(tmp_path: Path) -> None:
    """A tiny LLaMA-shaped model: per-layer bytes are one matrix per distinct input, and a
    budget of one layer's worth collects in one pass per layer holding one layer at a time."""
    from benchmarks import calibration_memory

    argv = ["--hidden", "32", "--intermediate", "48", "--heads", "4", "--sequences", "2"]
    result = calibration_memory.main([*argv, "--tokens", "8", "--json", str(tmp_path / "c.json")])
    assert result["bytes_per_layer"] == 4 * (3 * 32**2 + 48**2)  # qkv, o, gate/up, down
    assert result["bytes_per_layer_one_per_module"] == 4 * (6 * 32**2 + 48**2)
    budget = result["budget_one_layer"]
    assert budget["passes"] == 2 and max(budget["bytes"]) == result["bytes_per_layer"]
    assert result["init_one_layer_s"] > 0


def test_init_share_splits_real_runs_into_calibration_factors_and_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One tiny real run per method: a calibrated method reports its calibration time, plain
    LoRA none, and the share is the init over the training."""
    from benchmarks import init_share

    out = tmp_path / "share.json"
    argv = ["--streams", "offline-text", "--methods", "lora", "lora-null", "lora-ga"]
    argv += ["--epochs", "1"]
    argv += ["--max-train-per-task", "8", "--max-test-per-task", "4", "--json", str(out)]
    result = init_share.main(argv)
    rows = {row["method"]: row for row in result["rows"]}
    assert rows["lora"]["calibration_s"] == 0.0 and rows["lora-null"]["calibration_s"] > 0
    assert rows["lora-null"]["calibration_examples"] == 256  # the probe, every example
    assert rows["lora-ga"]["calibration_examples"] == 8  # gradients on the (capped) task
    for row in rows.values():
        assert (row["task"], row["train_examples"], row["epochs"]) == ("movie-sentiment", 8, 1)
        assert row["init_s"] == pytest.approx(row["calibration_s"] + row["factors_s"])
        assert row["share"] == pytest.approx(row["init_s"] / row["train_s"])
        assert row["examples_for_target"] == pytest.approx(8 * row["share"] / 0.02)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert "lora-null" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [["--methods", "dora"], ["--repeats", "0"], ["--task-index", "9"], ["--streams", "nope"]],
)
def test_init_share_bad_input(argv: list[str]) -> None:
    from benchmarks import init_share

    with pytest.raises(BadInputError):
        init_share.main(argv)


def test_memory_counts_what_each_component_holds(tmp_path: Path) -> None:
    """On a tiny Llama shape: the numbers are the tensors' bytes, as the shapes give them."""
    from benchmarks import memory

    tiny = ["--layers", "1", "--hidden", "64", "--intermediate", "128", "--heads", "4"]
    methods = ["--methods", "lora", "olora", "ewc", "lwf", "lora-ga", "lora-init"]
    result = memory.main([*tiny, *methods, "--json", str(tmp_path / "m.json")])["methods"]
    rank8 = 4 * 8 * (4 * (64 + 64) + 3 * (64 + 128))  # fp32 factors of the 7 projections
    assert result["lora"]["adapter"] == rank8
    assert result["olora"]["adapter"] == 2 * rank8  # the init's -s B0 A0 held next to it
    assert result["lora"]["between_tasks"] == rank8  # task 1's final factors (its init is 0)
    weights = 4 * 64 * 64 + 3 * 64 * 128  # the adapted weights (elements)
    # + F and G in bf16 and the scalar H per layer, whatever the number of tasks
    assert result["ewc"]["between_tasks"] == rank8 + 2 * 2 * weights + 7 * 4
    assert result["ewc"]["per_step"] < weights  # no dense float32 copy kept for the backward
    assert result["lwf"]["between_tasks"] == rank8  # the teacher shares the model
    assert result["lora-ga"]["calibration"] == 4 * weights  # float32 mean gradients
    assert result["lora-init"]["calibration"] == rank8  # the warm-up's (s B, A)
    assert json.loads((tmp_path / "m.json").read_text())["methods"] == result


def test_memory_counts_activations_per_layer_and_per_token() -> None:
    """One layer's saved activations hold at least its bf16 input and grow linearly with the
    tokens (the attention keeps no tokens x tokens matrix); the rest holds the float32 logits."""
    from benchmarks.memory import Settings, activation_bytes

    tiny = Settings(hidden=64, intermediate=128, heads=4, tokens=16)
    one, two, three = (activation_bytes(tiny, n) for n in (1, 2, 3))
    per_layer = two - one
    assert three - two == per_layer  # the same for every layer
    assert per_layer >= 2 * 16 * 64  # at least the layer's input in bf16
    assert one - per_layer >= 4 * 16 * 49152  # float32 logits over SmolLM2's vocabulary
    longer = Settings(hidden=64, intermediate=128, heads=4, tokens=32)
    assert activation_bytes(longer, 2) - activation_bytes(longer, 1) == 2 * per_layer


def test_memory_bad_input() -> None:
    from benchmarks import memory

    with pytest.raises(BadInputError, match="unknown method nope"):
        memory.main(["--methods", "nope"])


def test_decompositions_times_the_replaced_forms_side_by_side() -> None:
    from benchmarks import decompositions

    argv = ["--out", "40", "--in", "60", "--cov", "30", "--memory", "4", "--repeats", "1"]
    result = decompositions.main(argv)
    assert set(result["median_s"]) == {
        "weight SVD (both)",
        "rates, dense dW (before)",
        "rates, factors (after)",
        "InfLoRA, SVD (before)",
        "InfLoRA, eigh (after)",
        *(f"{init}, {dtype}" for init in decompositions.COVARIANCE_INITS
          for dtype in ("float64", "float32")),
    }  # fmt: skip
    assert all(len(times) == 1 and times[0] > 0 for times in result["seconds"].values())


def test_probes_benchmark_scores_each_probe_once_on_its_sample() -> None:
    """Each probe's row: its sample size, its chance level, and the score its record holds."""
    from benchmarks import probes

    result = probes.main(["--size", "3", "--probes", "piqa", "asdiv"])["probes"]
    assert list(result) == ["piqa", "asdiv"]
    assert result["piqa"]["size"] == 3 and result["piqa"]["chance"] == "0.5"
    assert result["piqa"]["score"] in (0, 1 / 3, 2 / 3, 1)
    assert result["asdiv"]["record"]["curve"] == [result["asdiv"]["score"]]


def test_distributed_benchmark_runs_one_command_on_one_and_two_processes(tmp_path: Path) -> None:
    """All sides (one process; two, data parallel; two, FSDP2) train the same stream to the
    same matrix; tokens/s is the stream's training tokens over each side's training time; only
    the two-process sides exchange data."""
    from llm_fixtures import tiny_llama_dir

    from benchmarks import distributed

    llama = tiny_llama_dir(tmp_path)
    argv = ["--backbone", llama, "--max-train-per-task", "6", "--max-test-per-task", "3"]
    result = distributed.main(argv)
    one, two, sharded = (result["sides"][side] for side in ("1", "2", "2 fsdp2"))
    assert one["matrix"] == two["matrix"] == sharded["matrix"]
    settings = distributed.Settings(backbone=llama, max_train_per_task=6, max_test_per_task=3)
    assert result["tokens_per_epoch"] == distributed.training_tokens(settings) > 0
    for side in (one, two, sharded):
        assert side["tokens_per_s"] == pytest.approx(result["tokens_per_epoch"] / side["train_s"])
    assert one["communication_s"] == 0 and 0 < two["communication_share"] < 1
    assert 0 < sharded["communication_share"] < 1
    with pytest.raises(BadInputError, match="--processes must be at least 2"):
        distributed.measure(distributed.Settings(processes=1))


def test_fsdp2_loading_benchmark_reads_the_weights_on_every_process_or_on_process_0(
    tmp_path: Path,
) -> None:
    """Both sides load the same model (its whole size reported by every process); the processes
    that read its weights are all of them, then process 0 alone; each row has its growth."""
    from llm_fixtures import tiny_llama, tiny_llama_dir

    from benchmarks import fsdp2_loading

    result = fsdp2_loading.main(["--backbone", tiny_llama_dir(tmp_path)])
    whole = sum(p.numel() * p.element_size() for p in tiny_llama().encoder.parameters()) / 2**20
    every, first = result["sides"].values()
    assert [row["read_by"] for row in every] == [[0, 1]] * 2
    assert [row["read_by"] for row in first] == [[0]] * 2
    for row in every + first:
        assert row["weights_mb"] == pytest.approx(whole) and row["rss_growth_mb"] >= 0
    with pytest.raises(BadInputError, match="--processes must be at least 2"):
        fsdp2_loading.measure(fsdp2_loading.Settings(processes=1))
