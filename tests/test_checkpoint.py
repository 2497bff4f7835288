"""Checkpoints as low-rank deltas: a resumed run rebuilds its model from the pretrained weights
and the recorded factors, bit for bit, and a checkpoint file is numbers only."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_strategy, make_toy_stream, tiny_backbone

from cl_lora.config import RunConfig
from cl_lora.errors import BadInputError
from cl_lora.experiment import CHECKPOINT, resolve_config, run_id_of
from cl_lora.plugins import PLUGINS
from cl_lora.run import main
from cl_lora.strategy import run_stream
from cl_lora.strategy.checkpoint import load_checkpoint
from cl_lora.strategy.experiences import to_benchmark


class Interrupted(Exception):
    pass


def _stop_after(task: int):
    def stop(finished: int, _outcome) -> None:
        if finished == task:
            raise Interrupted

    return stop


def _weights(strategy) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in strategy.model.state_dict().items()}


def _unbroken_and_resumed(build, checkpoint: Path, stop_after: int = 0):
    """``(unbroken, resumed)`` strategies and outcomes of the same run, the second one stopped
    after task ``stop_after`` and resumed in a fresh strategy with another global RNG state."""
    torch.manual_seed(0)
    unbroken = build()
    expected = run_stream(unbroken)
    torch.manual_seed(0)
    with pytest.raises(Interrupted):
        run_stream(build(), checkpoint=checkpoint, on_task_end=_stop_after(stop_after))
    torch.manual_seed(123)
    resumed = build()
    got = run_stream(resumed, checkpoint=checkpoint, resume=True)
    return (unbroken, expected), (resumed, got)


@pytest.mark.parametrize(
    ("init", "init_args", "baseline", "plugin", "bf16"),
    [
        ("pissa", None, None, "replay", False),  # holds -s B0 A0; replay memory as rows
        ("lora-dash", {"t": 2, "s": 2}, None, "ewc", False),  # folds u d v^T; EWC importances
        ("lora-null", None, None, None, False),  # factors from a float64 decomposition
        ("lora", None, "seq-ft", None, False),  # no LoRA: the trained encoder is stored whole
        ("pissa", None, None, None, True),  # bf16 weights (a language model on CUDA)
        ("lora-dash", {"t": 2, "s": 2}, None, None, True),
        ("lora", None, "seq-ft", None, True),  # float32 masters, bf16 weights stored
    ],
)
def test_resume_rebuilds_the_model_bit_for_bit(
    init, init_args, baseline, plugin, bf16, tmp_path
) -> None:
    stream = make_toy_stream(tasks=3)

    def build():
        plugins = [PLUGINS.get(plugin).build({})] if plugin else None
        backbone = tiny_backbone()
        if bf16:
            backbone.encoder.to(torch.bfloat16)
        return make_strategy(
            backbone,
            stream,
            init,
            init_args,
            plugins=plugins,
            baseline=baseline,
            precision="bf16" if bf16 else "fp32",
        )

    checkpoint = tmp_path / "checkpoint.safetensors"
    (unbroken, expected), (resumed, got) = _unbroken_and_resumed(build, checkpoint, stop_after=1)
    assert got.resumed_after == 1
    np.testing.assert_array_equal(got.matrix, expected.matrix)
    want, have = _weights(unbroken), _weights(resumed)
    assert want.keys() == have.keys()
    assert [k for k in want if not torch.equal(want[k], have[k])] == []


def test_resume_moves_the_model_to_its_device_before_replaying(tmp_path, monkeypatch) -> None:
    """The checkpoint's tensors are loaded onto the run's device; the replay must find the
    model there too (on CUDA a CPU model would meet CUDA factors), and a history kept on the
    CPU."""
    import cl_lora.strategy.checkpoint as checkpoint_module

    checkpoint = _checkpoint_after_first_task(tmp_path, init="pissa")
    strategy = make_strategy(tiny_backbone(), make_toy_stream(tasks=2), "pissa")
    moved = []
    to = strategy.model.to
    monkeypatch.setattr(strategy.model, "to", lambda *a, **k: moved.append(a) or to(*a, **k))
    seen = []
    replay = checkpoint_module.replay
    monkeypatch.setattr(
        checkpoint_module, "replay", lambda *args: seen.append(list(moved)) or replay(*args)
    )
    load_checkpoint(checkpoint, strategy, to_benchmark(strategy.stream).train_stream)
    assert seen == [[(strategy.device,)]]
    factors = strategy.history.episodes[0]["init"]
    assert all(t.device.type == "cpu" for f in factors.values() for t in f.values())


def test_a_pending_init_term_is_replayed_not_stored(tmp_path) -> None:
    """A residual init's -s B0 A0 lives in the layers' buffers during the task; the checkpoint
    has it in the LoRA history already and does not store the buffers again."""
    from cl_lora.safe_state import load_state

    checkpoint = _checkpoint_after_first_task(tmp_path, init="pissa")
    state = load_state(checkpoint)
    assert state["model"]["lora_history"][0]["init"]  # the factors are there
    assert not [name for name in state["model"]["encoder"] if "lora_pending" in name]


def test_a_checkpoint_holds_factors_not_the_model(tmp_path) -> None:
    """A LoRA run's checkpoint grows by about one adapter per task; sequential fine-tuning's
    holds the whole encoder."""
    stream = make_toy_stream(tasks=2)
    sizes = {}
    for init, baseline in (("pissa", None), ("lora", "seq-ft")):
        torch.manual_seed(0)
        strategy = make_strategy(tiny_backbone(), stream, init, baseline=baseline)
        checkpoint = tmp_path / f"{init}.safetensors"
        sizes[init] = run_stream(strategy, checkpoint=checkpoint).checkpoint_bytes
    encoder = tiny_backbone().encoder
    model_bytes = sum(p.numel() * p.element_size() for p in encoder.parameters())
    assert len(sizes["pissa"]) == 2 and sizes["pissa"][0] < 0.1 * model_bytes
    assert sizes["pissa"][1] > sizes["pissa"][0]  # task 2 adds its factors
    assert sizes["lora"][0] > model_bytes  # every encoder weight trains: all are stored


def _checkpoint_after_first_task(tmp_path: Path, init: str = "lora") -> Path:
    checkpoint = tmp_path / "checkpoint.safetensors"
    with pytest.raises(Interrupted):
        run_stream(
            make_strategy(tiny_backbone(), make_toy_stream(tasks=2), init),
            checkpoint=checkpoint,
            on_task_end=_stop_after(0),
        )
    return checkpoint


def _load(checkpoint: Path) -> None:
    strategy = make_strategy(tiny_backbone(), make_toy_stream(tasks=2))
    load_checkpoint(checkpoint, strategy, to_benchmark(strategy.stream).train_stream)


def test_truncated_or_changed_checkpoints_fail_with_one_line(tmp_path) -> None:
    checkpoint = _checkpoint_after_first_task(tmp_path)
    data = checkpoint.read_bytes()
    changed = bytearray(data)
    changed[-5] ^= 0x01  # one bit of one stored number
    for content, message in [
        (data[: len(data) // 2], "cannot be read"),
        (bytes(changed), "does not match its checksum"),
    ]:
        checkpoint.write_bytes(content)
        with pytest.raises(BadInputError, match=message) as error:
            _load(checkpoint)
        assert "\n" not in str(error.value) and "delete it" in str(error.value)


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_pickle_in_the_run_folder_is_never_executed(tmp_path, capsys) -> None:
    """Resuming reads numbers only: a pickle put where the checkpoint is does not run."""
    config = RunConfig(max_train_per_task=24, max_test_per_task=12, epochs=1)
    run_dir = tmp_path / run_id_of(resolve_config(config))
    run_dir.mkdir()
    payload = _Payload()
    payload.marker = str(tmp_path / "executed")
    (run_dir / CHECKPOINT).write_bytes(pickle.dumps(payload))
    argv = ["--max-train-per-task", "24", "--max-test-per-task", "12", "--epochs", "1"]
    assert main([*argv, "--quiet", "--output-dir", str(tmp_path), "--resume"]) == 2
    assert "cannot be read" in capsys.readouterr().err
    assert not (tmp_path / "executed").exists()
