"""One run of a sweep, as a worker (a local process or a Ray task) executes it.

It never raises: a failure comes back as a record (and lands in the run's ``error.json``), so
one bad run cannot stop the grid. Each run logs its per-task progress to ``log.txt`` in its
folder, since a worker has no terminal.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from pathlib import Path
from typing import Any

from cl_lora.config import RunConfig
from cl_lora.errors import BadInputError, RunFailure
from cl_lora.experiment import run_experiment, run_id_of
from cl_lora.results import write_json

ERROR_FILE = "error.json"
LOG_FILE = "log.txt"


def _record(run_id: str, status: str, seconds: float, **extra: Any) -> dict[str, Any]:
    return {"run_id": run_id, "status": status, "wall_s": round(seconds, 1), **extra}


def execute(
    config_data: dict[str, Any], output_dir: str, threads: int | None, gpu: str | None = None
) -> dict[str, Any]:
    """Run (or resume, or skip) one config; return ``{run_id, status, wall_s, ...}``.

    ``threads`` caps torch's CPU threads, so parallel runs on one machine do not oversubscribe
    its cores (recorded in the result's ``determinism`` block). ``gpu`` (a CUDA device id)
    becomes the only GPU this worker process sees, before anything initializes CUDA, so
    ``--device cuda`` (or ``auto``) runs there.
    """
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    import torch

    if threads:
        torch.set_num_threads(threads)
    config = RunConfig.from_dict(config_data)
    run_dir = Path(output_dir) / run_id_of(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ERROR_FILE).unlink(missing_ok=True)
    handler = logging.FileHandler(run_dir / LOG_FILE)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger = logging.getLogger("cl_lora")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    start = time.perf_counter()
    try:
        output = run_experiment(config, Path(output_dir), verbose=False, resume=True)
    except Exception as error:  # a worker reports every failure instead of dying with it
        kind = "bad input" if isinstance(error, BadInputError) else "failure"
        if not isinstance(error, (BadInputError, RunFailure)):
            kind = f"crash ({type(error).__name__})"
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        _write_error(run_dir, kind, message, traceback.format_exc())
        return _record(run_dir.name, "failed", time.perf_counter() - start, error=message)
    finally:
        logger.removeHandler(handler)
        handler.close()
    metrics = output.result["metrics"]
    return _record(
        run_dir.name,
        "skipped" if output.skipped else "done",
        time.perf_counter() - start,
        acc=metrics["acc"],
        forgetting=metrics["forgetting"],
        resumed_after_task=output.result.get("determinism", {}).get("resumed_after_task"),
    )


def _write_error(run_dir: Path, kind: str, message: str, trace: str) -> None:
    write_json(run_dir / ERROR_FILE, {"kind": kind, "error": message, "traceback": trace})
