"""A stand-in for the sweep worker's ``execute`` that dies for one run, for tests/test_sweep.py:
a module of its own (nothing heavy imported), since each spawned worker process imports it."""

from __future__ import annotations

import os


def dies_on_seed_1(config: dict, output_dir: str, threads: int, gpu: str | None) -> dict:
    """The run's record; for seed 1 the process kills itself instead (as the OOM killer would)."""
    if config["seed"] == 1:
        os._exit(9)
    return {"run_id": f"seed{config['seed']}", "status": "done"}
