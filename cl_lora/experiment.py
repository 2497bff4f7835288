"""One run, end to end: config -> stream + backbone -> strategy -> matrix -> metrics -> result.

The CLI in :mod:`cl_lora.run` only parses arguments and prints; everything a test needs to reach
lives here.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cl_lora import distributed, sharding, streams
from cl_lora.backbones import Backbone, Family, LoadOptions, family_for
from cl_lora.backbones.base import weights_fingerprint
from cl_lora.config import DEFAULT_MAX_LENGTH, RunConfig, resolve_device
from cl_lora.errors import LossNotFinite
from cl_lora.export import ADAPTERS, AdapterSaver
from cl_lora.lora import LoRASettings
from cl_lora.lr_search import SEARCH_FILE, search_learning_rate
from cl_lora.method import Method, check_per_task, resolve
from cl_lora.metrics import summarize
from cl_lora.probes.harness import check_knowledge
from cl_lora.probes.spec import parse_knowledge
from cl_lora.problems import Problem, build_problem
from cl_lora.problems.text_to_text import check_answer_by
from cl_lora.results import SCHEMA_VERSION, environment, load_run, new_run_id, write_run
from cl_lora.strategy import LoRAStrategy, StreamOutcome, run_stream
from cl_lora.strategy.retention import knowledge_probe_for
from cl_lora.trackers import RunTrackers

CHECKPOINT = "checkpoint.safetensors"
log = logging.getLogger("cl_lora")


@dataclass
class RunOutput:
    """Where the run was written and what it found."""

    run_dir: Path
    result: dict[str, Any]
    skipped: bool = False  # resumed a run that had already finished: nothing ran


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_backbone(config: RunConfig, stream: streams.Stream) -> tuple[Family, str]:
    """The run's backbone family and name (``--backbone``, else the stream's, else the family's
    default). Assets a family builds once (the offline MNIST ViT) are built here, with progress
    output, before the run seeds its generators."""
    family = family_for(config.backbone or stream.backbone, stream.knowledge)
    name = config.backbone or stream.backbone or family.default
    if family.prepare is not None:
        family.prepare(name, log.info)
    return family, name


def load_backbone(
    family: Family, name: str, config: RunConfig, device: torch.device, fingerprint: bool = False
) -> Backbone:
    """``name`` loaded by ``family`` with the run's token budget, weight precision (bf16
    weights for bf16 runs on CUDA) and gradient checkpointing; with ``fingerprint``, its
    weights hashed into ``source["fingerprint"]``; then sharded over the processes when the
    launch asks for FSDP2."""
    bf16_weights = config.precision == "bf16" and device.type == "cuda"
    processes = distributed.current()
    # FSDP2's cpu_ram_efficient_loading: process 0 alone reads the weights, then sends them
    ram_efficient = distributed.sharded() and processes.fsdp.ram_efficient_loading
    options = LoadOptions(
        max_length=config.max_length,
        dtype=torch.bfloat16 if bf16_weights else torch.float32,
        gradient_checkpointing=config.gradient_checkpointing,
        weights=processes.main or not ram_efficient,
    )
    backbone = family.load(name, options)
    # per process: whether it read the weights (a family may read them all the same)
    read = distributed.note_weights_read(not sharding.is_empty(backbone.encoder))
    if fingerprint:  # of the whole weights, before any sharding
        mine = weights_fingerprint(backbone.encoder) if read[processes.rank] else None
        backbone.source["fingerprint"] = distributed.gather_in_order(mine)[0]
    if distributed.sharded():
        sent = not all(read)  # process 0 sends its weights to those that did not read them
        # process 0's whole weights, kept through the sharding that replaces them
        whole = dict(backbone.encoder.named_parameters()) if sent and processes.main else None
        sharding.shard(backbone.encoder, processes.fsdp, device, processes.world)
        if sent:
            loaded = read[processes.rank]
            distributed.fill_from_first_process(backbone.encoder, whole, device, loaded)
    return backbone


def problem_for(stream: streams.Stream, backbone: Backbone, config: RunConfig) -> Problem:
    """The problem that learns ``stream`` on ``backbone`` with ``config``'s token budget,
    prompt truncation, generation length and loss averaging."""
    return build_problem(
        stream,
        backbone,
        config.max_length,
        config.prompt_keep,
        config.max_new_tokens,
        config.loss_average,
        config.answer_by,
    )


def _result(
    method: Method,
    calibration: dict[str, Any],
    run_id: str,
    stream: streams.Stream,
    problem: Problem,
    backbone: Backbone,
    lora: LoRASettings,
    targets: list[str],
    outcome: StreamOutcome,
    device: torch.device,
    wall_s: float,
    retention: dict[str, Any],
    training: list[dict[str, Any]],
) -> dict[str, Any]:
    config, init = method.config, method.init
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config.to_dict(),
        "stream": {
            "name": stream.name,
            "scenario": stream.scenario,
            "modality": stream.modality,
            "shared_head": stream.shared_head,
            **({"provenance": stream.provenance} if stream.provenance else {}),
        },
        "problem": problem.record(),
        "tasks": [
            {
                "name": task.name,
                "metric": task.metric,
                "num_labels": task.num_labels,
                "train_size": len(task.train),
                "test_size": len(task.test),
                "chance": task.chance,
            }
            for task in stream.tasks
        ],
        "method": method.record(),
        "init": None  # a baseline without a LoRA init (frozen, seq-ft, inflora)
        if init is None
        else {
            "name": init.name,
            "description": init.description,
            "args": config.init_args,  # resolved with the method
            "needs": list(init.needs),
            "calibration": calibration,
        },
        "seed": config.seed,
        "backbone": {**backbone.source, "family": backbone.family},
        "lora": {
            "rank": lora.rank,
            "alpha": lora.alpha,
            "rslora": lora.rslora,
            "targets": targets,
        },
        "matrix": outcome.matrix,
        "before": outcome.before,
        "scores": outcome.scores,
        "metrics": summarize(
            outcome.matrix, outcome.before, [len(task.test) for task in stream.tasks]
        ),
        "retention": retention,
        "timings": {**outcome.timings, "total_s": wall_s},
        "trainable_params": outcome.trainable_params,
        "training": training,
        "device": str(device),
        "precision": config.precision,
        "environment": environment(),
    }


def resolve_method(config: RunConfig) -> Method:
    """``config``'s stream checked and its method (init, baseline, plugins) resolved.

    Cheap (no data or weights are loaded), so a sweep can reject a typo before any run
    starts. The resolved config is what the run id hashes, so "f=.25" and "f=0.25" are one run.
    """
    parse_knowledge(config.knowledge)
    max_length = config.max_length or streams.recipe(config.stream).get(
        "max_length", DEFAULT_MAX_LENGTH
    )
    return resolve(dataclasses.replace(config, max_length=max_length))


def resolve_config(config: RunConfig) -> RunConfig:
    """``config`` with every name checked and every argument typed and complete."""
    return resolve_method(config).config


def run_id_of(config: RunConfig) -> str:
    """The folder name of ``config``'s run (the config must be resolved)."""
    return new_run_id(config.identity())


def finished_result(run_dir: Path) -> dict[str, Any] | None:
    """The result of a run that finished in ``run_dir``, or None if it has not."""
    try:
        return load_run(run_dir)
    except (OSError, ValueError):
        return None


def _determinism(config: RunConfig, device: torch.device) -> dict[str, Any]:
    """What a reader needs to judge whether re-running this config gives this matrix."""
    return {
        "seed": config.seed,
        "device": str(device),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "torch_threads": torch.get_num_threads(),
    }


def _use_deterministic_algorithms(on: bool) -> None:
    """Deterministic kernels on request; cuBLAS needs its workspace fixed before CUDA starts."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.benchmark = False


def _progress(
    stream: streams.Stream, trackers: RunTrackers | None = None, probe: Any = None
) -> Callable[[int, StreamOutcome], None]:
    """A log line per finished task: a summary that survives ``--quiet`` and log files; the
    matrix row and the knowledge scores to the run's trackers, if any."""

    def report(task: int, outcome: StreamOutcome) -> None:
        if trackers is not None:
            curves = getattr(probe, "curves", None) or {"retention": outcome.retention}
            scores = {name: curve[-1] for name, curve in curves.items() if curve}
            names = [t.name for t in stream.tasks]
            trackers.task_done(task, names, outcome.matrix[task].tolist(), scores)
        row = outcome.matrix[task, : task + 1]
        scored = row[np.isfinite(row)]  # joint scores nothing before its last task
        mean = f"{scored.mean():.3f}" if scored.size else "- (not evaluated yet)"
        log.info(
            "[%d/%d] %s done: train %.1fs, mean score so far %s",
            task + 1,
            len(stream.tasks),
            stream.tasks[task].name,
            outcome.timings["train_s"][-1],
            mean,
        )

    return report


def _adapter_saver(
    config: RunConfig, strategy: LoRAStrategy, run_dir: Path
) -> Callable[[int], object] | None:
    """With ``--save-adapters``: what writes the run's PEFT adapters after each task."""
    if not config.save_adapters:
        return None
    return AdapterSaver(strategy, run_dir / ADAPTERS, own=config.save_task_adapters).save


def run_experiment(
    config: RunConfig,
    output_dir: Path,
    verbose: bool = True,
    resume: bool = False,
    track: Sequence[str] = (),
) -> RunOutput:
    """Run ``config`` and write ``<output_dir>/<run-id>/result.json``; bad input fails early.

    With ``resume``, a run that already finished is returned as it is (nothing runs), and one
    that stopped part-way continues from the checkpoint of its last finished task. ``track``
    names the experiment trackers the run also logs to (``--track``).
    """
    start = time.perf_counter()
    method = resolve_method(config)
    config = method.config
    run_id = run_id_of(config)
    run_dir = output_dir / run_id
    if resume and (done := finished_result(run_dir)) is not None:
        return RunOutput(run_dir=run_dir, result=done, skipped=True)
    processes = distributed.start(config.device)
    device = distributed.run_device(resolve_device(config.device))
    _use_deterministic_algorithms(config.deterministic)
    stream = streams.build(
        config.stream,
        streams.StreamOptions(
            data_dir=Path(config.data_dir) if config.data_dir else None,
            max_train_per_task=config.max_train_per_task,
            max_test_per_task=config.max_test_per_task,
            scenario=config.scenario,
            order=config.order,
            tasks=config.tasks,
        ),
    )
    method.check_problem(stream.problem)
    if distributed.sharded():
        method.check_sharding()
    check_per_task(config, stream)
    knowledge = parse_knowledge(config.knowledge)
    check_knowledge(knowledge, stream.problem, config.lm_eval_include)
    check_answer_by(stream, config.answer_by)
    # the stream's defaults this run resolves to (recorded under "backbone" and "stream";
    # "config" stays as given, None meaning "the stream's default", and is what the id hashes)
    family, name = prepare_backbone(config, stream)
    config = dataclasses.replace(config, backbone=name, scenario=stream.scenario)
    lr = config.lr
    if config.lr_search:  # before the run's own backbone: one copy in memory at a time
        lr_search = search_learning_rate(
            config.lr_search,
            stream,
            lambda candidate, search: _validation_score(
                method, config, family, name, search, device, candidate
            ),
            cache=run_dir / SEARCH_FILE,
            extend=config.lr_extend or 0,
        )
        lr = lr_search.chosen
    seed_everything(config.seed)
    backbone = load_backbone(family, name, config, device, fingerprint=True)
    problem = problem_for(stream, backbone, config)
    main = processes.main  # the one process that writes files and logs to trackers
    trackers = RunTrackers(track, run_id, config.to_dict(), run_dir) if track and main else None
    plugins = [trackers.plugin()] if trackers else []
    strategy = method.build_strategy(
        problem, stream, device, lr=lr, verbose=verbose, plugins=plugins
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = run_dir / CHECKPOINT
    probe = knowledge_probe_for(
        stream,
        problem,
        batch_size=config.eval_batch_size,
        max_fit=config.max_train_per_task,
        max_test=config.max_test_per_task,
        knowledge=knowledge,
        probe_size=config.probe_size,
        lm_eval_include=config.lm_eval_include,
    )
    outcome = run_stream(
        strategy,
        checkpoint=checkpoint,
        on_task_end=_progress(stream, trackers, probe),
        resume=resume,
        probe=probe,
        save_task=_adapter_saver(config, strategy, run_dir),
    )
    calibration = {
        "sources": list(strategy.calibrator.sources) if strategy.init.needs else [],
        "per_task": strategy.calibrator.reports,
    }
    result = _result(
        method,
        calibration,
        run_id,
        stream,
        problem,
        backbone,
        strategy.lora,
        list(strategy.target_modules),
        outcome,
        device,
        time.perf_counter() - start,
        probe.record(outcome.retention),
        [strategy.training_records.get(i) for i in range(len(stream.tasks))],
    )
    # the adapter rate the stream trained at (config.lr keeps what the run id hashes, the
    # default when the rate was searched; --per-task rates are in "training")
    result["lr_trained"] = lr
    if config.lr_search:
        result["lr_search"] = lr_search.record()
    if trackers is not None:
        trackers.finish({**result["metrics"], "lr_trained": lr})
    result["determinism"] = {
        **_determinism(config, device),
        "resumed_after_task": outcome.resumed_after,
        "checkpoint_bytes": outcome.checkpoint_bytes,  # after each task
    }
    result["processes"] = _processes_record(processes, config)
    distributed.barrier()  # every process done with the checkpoint before it goes
    if main:
        write_run(run_dir, result)
        checkpoint.unlink(missing_ok=True)  # result.json now marks the run finished
        (run_dir / SEARCH_FILE).unlink(missing_ok=True)  # kept in result.json
    return RunOutput(run_dir=run_dir, result=result)


def _processes_record(processes: distributed.Processes, config: RunConfig) -> dict[str, Any]:
    """How the run's batches were split: ``--batch-size`` is the effective batch of one
    optimizer step = per-process batch x processes x accumulation (the last process's share
    may be one smaller when the micro-batch does not divide evenly)."""
    micro = config.batch_size // config.grad_accumulation
    return {
        **processes.record(),
        "effective_batch": config.batch_size,
        "grad_accumulation": config.grad_accumulation,
        "per_process_batch": -(-micro // processes.world),
        "per_process_eval_batch": -(-config.eval_batch_size // processes.world),
    }


def _validation_score(
    method: Method,
    config: RunConfig,
    family: Family,
    name: str,
    search: streams.Stream,
    device: torch.device,
    lr: float,
) -> float:
    """Train ``search`` (fit data) on a fresh copy of the backbone at ``lr``, seeded as the run
    is; the mean validation score of its tasks after the last one. A rate at which training
    diverges (the loss turns NaN or infinite) scores NaN, which never wins: the run goes on."""
    seed_everything(config.seed)
    backbone = load_backbone(family, name, config, device)
    problem = problem_for(search, backbone, config)
    strategy = method.build_strategy(problem, search, device, lr=lr)
    try:
        return float(np.nanmean(run_stream(strategy).matrix[-1]))
    except LossNotFinite as diverged:
        log.info("lr search: lr %g diverged (%s); scored NaN", lr, diverged)
        return math.nan
