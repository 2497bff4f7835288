"""Resume: a run stopped after any finished task ends with the matrix of an unbroken run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_strategy, make_toy_stream, tiny_backbone

from cl_lora.run import main
from cl_lora.strategy import run_stream

TINY = ["--max-train-per-task", "24", "--max-test-per-task", "12", "--epochs", "1", "--quiet"]


class Interrupted(Exception):
    pass


def _counting_strategy():
    """A strategy with a plugin whose state spans tasks (as replay buffers and EWC do)."""
    from avalanche.core import SupervisedPlugin

    class StepCounter(SupervisedPlugin):
        def __init__(self) -> None:
            super().__init__()
            self.steps = 0

        def after_training_iteration(self, strategy, **kwargs) -> None:
            self.steps += 1

    return make_strategy(tiny_backbone(), make_toy_stream(tasks=3), plugins=[StepCounter()])


def test_resumed_stream_matches_an_unbroken_one_with_plugin_state(tmp_path) -> None:
    import torch

    torch.manual_seed(0)
    strategy = _counting_strategy()
    unbroken = run_stream(strategy).matrix
    steps = strategy.plugins[1].steps

    def stop_after_first(task: int, _outcome) -> None:
        if task == 0:
            raise Interrupted

    checkpoint = tmp_path / "checkpoint.safetensors"
    torch.manual_seed(0)
    with pytest.raises(Interrupted):
        run_stream(_counting_strategy(), checkpoint=checkpoint, on_task_end=stop_after_first)
    torch.manual_seed(123)  # a fresh process would not share the first one's RNG state
    strategy = _counting_strategy()
    resumed = run_stream(strategy, checkpoint=checkpoint, resume=True)
    assert resumed.resumed_after == 0
    assert strategy.plugins[1].steps == steps  # task 0's count came back with the checkpoint
    np.testing.assert_array_equal(resumed.matrix, unbroken)


@pytest.mark.parametrize(("baseline", "attribute"), [("o-lora", "earlier_A"), ("inflora", "basis")])
def test_baselines_resume_with_their_memory_of_earlier_tasks(baseline, attribute, tmp_path) -> None:
    import torch

    def build():
        return make_strategy(tiny_backbone(), make_toy_stream(tasks=3), baseline=baseline)

    torch.manual_seed(0)
    unbroken = build()
    matrix = run_stream(unbroken).matrix

    def stop_after_second(task: int, _outcome) -> None:
        if task == 1:  # the memory then holds task 0, which the model no longer shows
            raise Interrupted

    checkpoint = tmp_path / "checkpoint.safetensors"
    torch.manual_seed(0)
    with pytest.raises(Interrupted):
        run_stream(build(), checkpoint=checkpoint, on_task_end=stop_after_second)
    resumed = build()
    np.testing.assert_array_equal(
        run_stream(resumed, checkpoint=checkpoint, resume=True).matrix, matrix
    )
    expected, got = getattr(unbroken, attribute), getattr(resumed, attribute)
    assert expected and set(got) == set(expected)  # without task 0's memory these differ
    for key in expected:
        assert torch.equal(got[key], expected[key])


def _run_cli(argv: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cl_lora.run", *argv],
        cwd=Path(__file__).parent.parent,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        **kwargs,
    )


def test_run_killed_after_its_second_task_resumes_to_the_same_result(tmp_path) -> None:
    unbroken_dir, broken_dir = tmp_path / "unbroken", tmp_path / "broken"
    assert main([*TINY, "--output-dir", str(unbroken_dir)]) == 0
    (unbroken,) = unbroken_dir.rglob("result.json")

    process = _run_cli([*TINY, "--output-dir", str(broken_dir)])
    for line in process.stderr:
        if line.startswith("[2/5]"):
            os.kill(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=120)
    assert process.returncode == -signal.SIGKILL
    assert not list(broken_dir.rglob("result.json"))
    (checkpoint,) = broken_dir.rglob("checkpoint.safetensors")

    resumed = _run_cli([*TINY, "--output-dir", str(broken_dir), "--resume"])
    log = resumed.stderr.read()
    assert resumed.wait(timeout=300) == 0, log
    assert "resuming after task" in log
    result = json.loads((checkpoint.parent / "result.json").read_text())
    expected = json.loads(unbroken.read_text())
    assert result["matrix"] == expected["matrix"]
    assert result["retention"] == expected["retention"]  # the probe head came back too
    assert result["determinism"]["resumed_after_task"] >= 1
    assert not checkpoint.exists()  # result.json marks the run finished


def test_resume_skips_a_finished_run(tmp_path, capsys) -> None:
    argv = [*TINY, "--output-dir", str(tmp_path), "--resume"]
    assert main(argv) == 0
    (result,) = tmp_path.rglob("result.json")
    written = result.stat().st_mtime_ns
    determinism = json.loads(result.read_text())["determinism"]
    assert determinism["device"] == "cpu" and determinism["deterministic_algorithms"] is False
    assert determinism["resumed_after_task"] is None and determinism["torch_threads"] >= 1
    capsys.readouterr()
    assert main(argv) == 0
    assert "already finished" in capsys.readouterr().out
    assert result.stat().st_mtime_ns == written


def test_nan_after_a_finished_task_keeps_its_checkpoint(monkeypatch, capsys, tmp_path) -> None:
    from cl_lora.strategy import LoRAStrategy

    real = LoRAStrategy.criterion

    def nan_on_second_task(self):
        loss = real(self)
        return loss * float("nan") if self.task_id == 1 else loss

    monkeypatch.setattr(LoRAStrategy, "criterion", nan_on_second_task)
    assert main([*TINY, "--output-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert "loss became nan on task 1 (sms-spam)" in err and "checkpointed in" in err
    assert "\n" not in err
    assert list(tmp_path.rglob("checkpoint.safetensors"))
    assert not list(tmp_path.rglob("result.json"))


def test_out_of_memory_is_one_line_naming_the_task_and_the_fix(tmp_path, monkeypatch) -> None:
    """A CUDA out-of-memory error in task 2 (raised by a stand-in for the device) stops the run
    with one line naming the task and settings that need less memory; task 1's checkpoint
    stays for --resume."""
    import torch

    from cl_lora.errors import RunFailure
    from cl_lora.strategy.template import LoRAStrategy

    strategy = make_strategy(tiny_backbone(), make_toy_stream(tasks=3))
    train = LoRAStrategy.train

    def train_until_memory_runs_out(self, experience, **kwargs):
        if experience.current_experience >= 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return train(self, experience, **kwargs)

    monkeypatch.setattr(LoRAStrategy, "train", train_until_memory_runs_out)
    checkpoint = tmp_path / "checkpoint.safetensors"
    with pytest.raises(RunFailure) as failure:
        run_stream(strategy, checkpoint=checkpoint)
    message = str(failure.value)
    assert "\n" not in message and "while training task 2/3" in message
    assert f"--batch-size {strategy.train_mb_size // 2}" in message
    assert "--gradient-checkpointing" in message and str(checkpoint) in message
    assert checkpoint.exists()


def test_out_of_memory_while_calibrating_names_the_calibration_settings(monkeypatch) -> None:
    """Calibration runs at its own batch size and memory budget: an out-of-memory error there
    names those (--eval-batch-size, --calib-max-memory), not the training batch size."""
    import torch

    from cl_lora.calibration import covariance
    from cl_lora.errors import RunFailure
    from cl_lora.strategy import calibrate

    strategy = make_strategy(tiny_backbone(), make_toy_stream(tasks=2), "lora-null")

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(covariance, "collect_input_covariances", no_memory)
    monkeypatch.setattr(calibrate, "free_memory", lambda device: 2**31)
    with pytest.raises(RunFailure) as failure:
        run_stream(strategy)
    message = str(failure.value)
    assert "\n" not in message and "while calibrating for task 1/2" in message
    assert f"--eval-batch-size {strategy.eval_mb_size // 2}" in message
    assert "--calib-max-memory 512MB" in message and "--batch-size" not in message


@pytest.mark.parametrize(("init", "init_args"), [("pissa", {}), ("lora-dash", {"t": 2, "s": 2})])
def test_a_bf16_run_resumes_to_the_unbroken_runs_weights(init, init_args, tmp_path) -> None:
    """bf16 weights (as a CUDA run loads a language model): a run stopped after its first task
    and resumed ends with the unbroken run's weights bit for bit (pissa's pending init term and
    LoRA-Dash's folded directions replayed onto the model in its own dtype)."""
    import torch

    def strategy():
        backbone = tiny_backbone()
        backbone.encoder.to(torch.bfloat16)
        stream = make_toy_stream(tasks=3)
        return make_strategy(backbone, stream, init, init_args, precision="bf16")

    def stop_after_first(task: int, _outcome) -> None:
        if task == 0:
            raise Interrupted

    torch.manual_seed(0)
    unbroken = strategy()
    matrix = run_stream(unbroken).matrix
    checkpoint = tmp_path / "checkpoint.safetensors"
    torch.manual_seed(0)
    with pytest.raises(Interrupted):
        run_stream(strategy(), checkpoint=checkpoint, on_task_end=stop_after_first)
    torch.manual_seed(123)
    resumed = strategy()
    outcome = run_stream(resumed, checkpoint=checkpoint, resume=True)
    assert outcome.resumed_after == 0
    np.testing.assert_array_equal(outcome.matrix, matrix)
    expected, weights = unbroken.model.state_dict(), resumed.model.state_dict()
    assert expected.keys() == weights.keys()
    query = next(k for k in weights if k.endswith("query.base_layer.weight"))
    assert weights[query].dtype == torch.bfloat16
    assert all(torch.equal(weights[k], expected[k]) for k in expected)
