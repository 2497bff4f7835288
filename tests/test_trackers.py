"""Experiment trackers, offline: what a run logs to TensorBoard, W&B and MLflow is read back
from their own stores and compared with the run's result.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cl_lora.run import main

TINY = ["--max-train-per-task", "16", "--max-test-per-task", "8", "--epochs", "1", "--quiet"]


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, tiny_backbone_dir) -> tuple[Path, dict]:
    """One tiny run logged to all three trackers (W&B offline, MLflow's file store)."""
    out = tmp_path_factory.mktemp("runs")
    argv = ["--backbone", tiny_backbone_dir, "--tasks", "movie-sentiment,sms-spam", *TINY,
            "--track", "tensorboard", "--track", "wandb", "--track", "mlflow",
            "--output-dir", str(out)]  # fmt: skip
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_SILENT", "true")
        env.delenv("WANDB_MODE", raising=False)
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert main(argv) == 0
    run_dir = next(out.glob("*/result.json")).parent
    return run_dir, json.loads((run_dir / "result.json").read_text())


def _steps(result: dict) -> int:
    return sum(record["optimizer_steps"] for record in result["training"])


def test_tensorboard_holds_every_step_each_matrix_row_and_the_summary(tracked_run) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, result = tracked_run
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1, _steps(result) + 1))
    assert all(e.value > 0 for e in loss)
    for i, row in enumerate(result["matrix"]):
        logged = {e.step: e.value for e in events.Scalars("matrix/sms-spam")}
        if row[1] is not None:
            assert logged[i + 1] == pytest.approx(row[1])
    assert events.Scalars("summary/acc")[0].value == pytest.approx(result["metrics"]["acc"])
    assert events.Scalars("knowledge/retention")[-1].value == pytest.approx(
        result["retention"]["curve"][-1]
    )


def test_mlflow_file_store_holds_the_run_by_its_id(tracked_run) -> None:
    from mlflow.tracking import MlflowClient

    run_dir, result = tracked_run
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("cl-lora").experiment_id])
    assert run.info.run_name == result["run_id"]
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == _steps(result)
    assert run.data.metrics["summary/acc"] == pytest.approx(result["metrics"]["acc"])
    assert json.loads(run.data.params["seed"]) == result["seed"]


def _wandb_records(path: Path) -> list:
    """The protobuf records of a W&B offline run file: after its 7-byte header, a LevelDB-style
    log (32 KiB blocks; chunks with a 7-byte header: crc, length, type FULL/FIRST/MIDDLE/LAST)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, block, position = path.read_bytes(), 32768, 7
    records, partial = [], b""
    while position + 7 <= len(data):
        left = block - position % block
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if left < 7 or (kind == 0 and length == 0):  # block trailer or padding
            position += left
            continue
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        partial = chunk if kind in (1, 2) else partial + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(partial)
            records.append(record)
    return records


def test_wandb_offline_run_holds_the_steps_rows_and_summary(tracked_run) -> None:
    run_dir, result = tracked_run
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    records = _wandb_records(next(offline.glob("*.wandb")))

    def items(entries) -> dict:
        return {e.key or "/".join(e.nested_key): json.loads(e.value_json) for e in entries}

    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.run_id == run.display_name == result["run_id"]
    history = [items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    steps = [h for h in history if "train/loss" in h]
    assert [h["optimizer_step"] for h in steps] == list(range(1, _steps(result) + 1))
    rows = [h for h in history if "matrix/movie-sentiment" in h]
    assert [h["task"] for h in rows] == [1, 2]
    assert rows[-1]["matrix/movie-sentiment"] == pytest.approx(result["matrix"][-1][0])
    summary: dict = {}
    for record in records:
        if record.WhichOneof("record_type") == "summary":
            summary |= items(record.summary.update)
    assert summary["acc"] == pytest.approx(result["metrics"]["acc"])


def test_an_unknown_tracker_is_one_line(tmp_path, capsys) -> None:
    assert main(["--track", "neptune", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown tracker 'neptune'" in err
    assert not any(tmp_path.iterdir())
