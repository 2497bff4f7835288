"""``--track tensorboard``: event files in ``<run dir>/tensorboard`` (``tensorboard --logdir
results/runs`` shows every run by its id), through ``torch.utils.tensorboard``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cl_lora.trackers.registry import register_tracker


class TensorBoardRun:
    def __init__(self, run_id: str, config: dict[str, Any], run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", f"```\n{json.dumps(config, indent=1, default=str)}\n```")

    def log_scalars(self, values: Mapping[str, float], step: int, axis: str) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def finish(self, summary: Mapping[str, float]) -> None:
        for key, value in summary.items():
            self.writer.add_scalar(f"summary/{key}", value, 0)
        self.writer.close()


@register_tracker("tensorboard", "TensorBoard event files in the run folder", package="tensorboard")
def open_tensorboard(run_id: str, config: dict[str, Any], run_dir: Path) -> TensorBoardRun:
    return TensorBoardRun(run_id, config, run_dir)
