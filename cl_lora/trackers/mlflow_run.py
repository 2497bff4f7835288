"""``--track mlflow``: an MLflow run named by the run id, in the tracking store
``MLFLOW_TRACKING_URI`` names, else a file store in ``<run dir>/mlruns``."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cl_lora.trackers.registry import register_tracker


class MlflowRun:
    def __init__(self, run_id: str, config: dict[str, Any], run_dir: Path) -> None:
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if uri is None:  # a file store: needs no server (MLflow 3 asks to allow it explicitly)
            uri = (run_dir / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name("cl-lora")
        experiment_id = (
            experiment.experiment_id if experiment else self.client.create_experiment("cl-lora")
        )
        self.run_id = self.client.create_run(experiment_id, run_name=run_id).info.run_id
        for key, value in config.items():  # MLflow params are short strings
            self.client.log_param(self.run_id, key, json.dumps(value, default=str)[:500])

    def log_scalars(self, values: Mapping[str, float], step: int, axis: str) -> None:
        for key, value in values.items():
            self.client.log_metric(self.run_id, key, float(value), step=step)

    def finish(self, summary: Mapping[str, float]) -> None:
        for key, value in summary.items():
            self.client.log_metric(self.run_id, f"summary/{key}", float(value))
        self.client.set_terminated(self.run_id)


@register_tracker("mlflow", "MLflow, a file store in the run folder by default", package="mlflow")
def open_mlflow(run_id: str, config: dict[str, Any], run_dir: Path) -> MlflowRun:
    return MlflowRun(run_id, config, run_dir)
