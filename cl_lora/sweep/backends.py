"""Where a sweep's runs execute: local worker processes, or tasks on a Ray cluster.

Each backend is a generator of events, ``("start", run_id)`` when a run is handed to a worker
and ``("end", record)`` when it comes back, so the progress view is the same for both.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import torch

from cl_lora.config import RunConfig
from cl_lora.sweep.worker import execute

Event = tuple[str, Any]
BACKENDS = ("local", "ray")


def _died(run_id: str, error: BaseException) -> dict[str, Any]:
    """The record of a run whose worker process died (it could not report for itself)."""
    return {"run_id": run_id, "status": "failed", "error": f"worker died: {error!r}"}


def gpu_of_slot(slot: int) -> str | None:
    """The CUDA device a local worker slot runs on: slots take this machine's visible GPUs in
    turn (round-robin), so ``--max-parallel 4`` on 4 GPUs puts one run on each instead of
    all on ``cuda:0``. ``None`` (leave it alone) with fewer than two GPUs."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    return ids[slot % len(ids)] if len(ids) > 1 else None


def local_runs(
    runs: Mapping[str, RunConfig], output_dir: Path, max_parallel: int
) -> Iterator[Event]:
    """Up to ``max_parallel`` runs at once, each in a fresh process (no state leaks between
    runs), sharing this machine's CPU threads evenly among them and its GPUs round-robin
    (:func:`gpu_of_slot`: each running run holds a slot). A worker that dies (killed, e.g. for
    memory) fails the runs it was running and the pool it broke is replaced, so the runs still
    queued go on."""
    threads = max(1, torch.get_num_threads() // max_parallel)
    context = multiprocessing.get_context("spawn")
    queue = deque(runs.items())
    free_slots = deque(range(max_parallel))
    running: dict[Future, tuple[str, int]] = {}
    pool: ProcessPoolExecutor | None = None
    try:
        while queue or running:
            if pool is None:
                pool = ProcessPoolExecutor(max_parallel, mp_context=context, max_tasks_per_child=1)
            while queue and len(running) < max_parallel:
                run_id, config = queue.popleft()
                slot = free_slots.popleft()
                future = pool.submit(
                    execute, config.to_dict(), str(output_dir), threads, gpu_of_slot(slot)
                )
                running[future] = (run_id, slot)
                yield "start", run_id
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                run_id, slot = running.pop(future)
                free_slots.append(slot)
                try:
                    yield "end", future.result()
                except BrokenProcessPool as error:  # every run of the pool ends with it
                    pool.shutdown(wait=False)
                    pool = None
                    yield "end", _died(run_id, error)
                except Exception as error:
                    yield "end", _died(run_id, error)
    finally:
        if pool is not None:
            pool.shutdown()


def ray_runs(
    runs: Mapping[str, RunConfig],
    output_dir: Path,
    max_parallel: int,
    cpus_per_run: float,
    gpus_per_run: float | None,
) -> Iterator[Event]:
    """One Ray task per run. Connects to the cluster in ``RAY_ADDRESS`` (or one started with
    ``ray start`` on this machine), else starts a local instance. ``gpus_per_run`` None asks
    for one GPU when the cluster has any. ``output_dir`` must be shared by every node. Ray
    retries a task whose node died; the retry resumes from the run's last checkpoint.
    """
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            address=os.environ.get("RAY_ADDRESS"),
            include_dashboard=False,
            log_to_driver=False,  # each run logs to its own log.txt
            logging_level=logging.WARNING,
        )
    if gpus_per_run is None:
        gpus_per_run = 1.0 if ray.cluster_resources().get("GPU", 0) else 0.0
    task = ray.remote(execute).options(num_cpus=cpus_per_run, num_gpus=gpus_per_run)
    threads = max(1, int(cpus_per_run))
    queue = deque(runs.items())
    running: dict[Any, str] = {}
    try:
        while queue or running:
            while queue and (max_parallel <= 0 or len(running) < max_parallel):
                run_id, config = queue.popleft()
                running[task.remote(config.to_dict(), str(output_dir), threads)] = run_id
                yield "start", run_id
            (ref,), _ = ray.wait(list(running), num_returns=1)
            run_id = running.pop(ref)
            try:
                yield "end", ray.get(ref)
            except Exception as error:  # the task's worker or node died for good
                yield "end", _died(run_id, error)
    finally:
        if started_here:
            ray.shutdown()
