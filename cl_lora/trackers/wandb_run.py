"""``--track wandb``: a Weights & Biases run named by the run id, offline unless the user has
set ``WANDB_MODE`` (``wandb sync <run dir>/wandb/offline-run-*`` uploads it later); files under
the run folder unless ``WANDB_DIR`` says otherwise."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cl_lora.trackers.registry import register_tracker


class WandbRun:
    def __init__(self, run_id: str, config: dict[str, Any], run_dir: Path) -> None:
        import wandb

        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "cl-lora"),
            name=run_id,
            id=run_id,
            config=config,
            dir=os.environ.get("WANDB_DIR", str(run_dir)),
            mode=os.environ.get("WANDB_MODE", "offline"),
            resume="allow",
        )
        for prefix, axis in (
            ("train", "optimizer_step"),
            ("matrix", "task"),
            ("knowledge", "task"),
        ):
            self.run.define_metric(f"{prefix}/*", step_metric=axis)

    def log_scalars(self, values: Mapping[str, float], step: int, axis: str) -> None:
        self.run.log({**values, axis: step})  # W&B's own step only grows: each axis its own

    def finish(self, summary: Mapping[str, float]) -> None:
        self.run.summary.update(dict(summary))
        self.run.finish()


@register_tracker("wandb", "Weights & Biases, offline by default (WANDB_MODE)", package="wandb")
def open_wandb(run_id: str, config: dict[str, Any], run_dir: Path) -> WandbRun:
    return WandbRun(run_id, config, run_dir)
