"""One run, end to end: config -> stream + backbone -> strategy -> matrix -> metrics -> result.

The CLI in :mod:`cl_lora.run` only parses arguments and prints; everything a test needs to reach
lives here.
"""

from __future__ import annotations

import random
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from avalanche.logging import InteractiveLogger
from avalanche.training.plugins import EvaluationPlugin

from baselines.method import Method, resolve
from cl_lora import inits, streams
from cl_lora.backbones import ContinualClassifier, load_text_backbone
from cl_lora.config import RunConfig, resolve_device
from cl_lora.errors import BadInputError
from cl_lora.lora import LoRASettings
from cl_lora.metrics import summarize
from cl_lora.results import SCHEMA_VERSION, environment, new_run_id, write_run
from cl_lora.strategy import StreamOutcome, run_stream

CHECKPOINT = "checkpoint.pt"


@dataclass
class RunOutput:
    """Where the run was written and what it found."""

    run_dir: Path
    result: dict[str, Any]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _targets(config: RunConfig, default: list[str]) -> list[str]:
    """The user's ``--targets`` (module-name suffixes) or the backbone's default layers."""
    if config.targets is None:
        return default
    chosen = [name for name in default if any(name.endswith(t) for t in config.targets)]
    if not chosen:
        raise BadInputError(
            f"--targets {','.join(config.targets)} matches no linear layer of the backbone: "
            f"use suffixes such as query,value or dense"
        )
    return chosen


def _check_rank(rank: int, encoder: torch.nn.Module, targets: list[str]) -> None:
    """Fail before any work when a target layer is too small for ``rank``."""
    modules = dict(encoder.named_modules())
    smallest = min(min(modules[name].weight.shape) for name in targets)
    if rank > smallest:
        raise BadInputError(
            f"rank {rank} does not fit the smallest adapted layer ({smallest} wide): "
            f"choose --rank between 1 and {smallest}"
        )


def _result(
    method: Method,
    calibration: dict[str, Any],
    run_id: str,
    stream: streams.Stream,
    backbone_source: dict[str, Any],
    lora: LoRASettings,
    targets: list[str],
    outcome: StreamOutcome,
    device: torch.device,
    wall_s: float,
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
        },
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
            "args": init.resolve_args(config.init_args),
            "needs": list(init.needs),
            "calibration": calibration,
        },
        "seed": config.seed,
        "backbone": backbone_source,
        "lora": {
            "rank": lora.rank,
            "alpha": lora.alpha,
            "rslora": lora.rslora,
            "targets": targets,
        },
        "matrix": outcome.matrix,
        "before": outcome.before,
        "scores": outcome.scores,
        "metrics": summarize(outcome.matrix, outcome.before),
        "timings": {**outcome.timings, "total_s": wall_s},
        "trainable_params": outcome.trainable_params,
        "device": str(device),
        "precision": config.precision,
        "environment": environment(),
    }


def make_evaluator(verbose: bool) -> EvaluationPlugin:
    """Avalanche's interactive progress bars, or silence (without its no-logger warning)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified")
        return EvaluationPlugin(loggers=[InteractiveLogger()] if verbose else [])


def run_experiment(config: RunConfig, output_dir: Path, verbose: bool = True) -> RunOutput:
    """Run ``config`` and write ``<output_dir>/<run-id>/result.json``; bad input fails early."""
    start = time.perf_counter()
    device = resolve_device(config.device)
    # the method (init, baseline, plugins) with typed and complete arguments (rejects unknown
    # ones before any work): they go into the run id and the result, so "f=.25" and "f=0.25"
    # are the same run
    method = resolve(config)
    config = method.config
    stream = streams.build(
        config.stream,
        streams.StreamOptions(
            data_dir=Path(config.data_dir) if config.data_dir else None,
            max_train_per_task=config.max_train_per_task,
            max_test_per_task=config.max_test_per_task,
        ),
    )
    seed_everything(config.seed)
    backbone = load_text_backbone(config.backbone, max_length=config.max_length)
    targets = _targets(config, backbone.target_modules)
    _check_rank(config.rank, backbone.encoder, targets)
    lora = LoRASettings(rank=config.rank, alpha=config.alpha, rslora=config.rslora)
    run_id = new_run_id(config.to_dict())
    run_dir = output_dir / run_id
    run_dir.mkdir(parents=True, exist_ok=True)

    strategy = method.strategy(
        model=ContinualClassifier(backbone, shared_head=stream.shared_head),
        backbone=backbone,
        stream=stream,
        init=method.init or inits.get("lora"),  # baselines without an init never call it
        init_args=config.init_args,
        lora=lora,
        target_modules=targets,
        lr=config.lr,
        head_lr=config.head_lr,
        weight_decay=config.weight_decay,
        warmup_ratio=config.warmup_ratio,
        seed=config.seed,
        precision=config.precision,
        calib_sources=config.calib,
        calib_size=config.calib_size,
        train_mb_size=config.batch_size,
        train_epochs=config.epochs,
        eval_mb_size=config.eval_batch_size,
        device=device,
        plugins=method.plugins(),
        evaluator=make_evaluator(verbose),
        **method.strategy_args,
    )
    outcome = run_stream(strategy, checkpoint=run_dir / CHECKPOINT)
    calibration = {
        "sources": list(strategy.calibrator.sources) if strategy.init.needs else [],
        "per_task": strategy.calibrator.reports,
    }
    result = _result(
        method,
        calibration,
        run_id,
        stream,
        backbone.source,
        lora,
        targets,
        outcome,
        device,
        time.perf_counter() - start,
    )
    write_run(run_dir, result)
    return RunOutput(run_dir=run_dir, result=result)
