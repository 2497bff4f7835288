"""One run, end to end: config -> stream + backbone -> strategy -> matrix -> metrics -> result.

The CLI in :mod:`cl_lora.run` only parses arguments and prints; everything a test needs to reach
lives here.
"""

from __future__ import annotations

import dataclasses
import logging
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

from cl_lora import inits, streams
from cl_lora.backbones import (
    MINILM,
    MNIST_VIT,
    VIT_DEFAULT,
    Backbone,
    ContinualClassifier,
    load_text_backbone,
    load_vit_backbone,
)
from cl_lora.config import RunConfig, resolve_device
from cl_lora.errors import BadInputError
from cl_lora.lora import LoRASettings
from cl_lora.metrics import summarize
from cl_lora.results import SCHEMA_VERSION, environment, new_run_id, write_run
from cl_lora.strategy import LoRAStrategy, StreamOutcome, run_stream
from cl_lora.strategy.retention import RetentionProbe

CHECKPOINT = "checkpoint.pt"
DEFAULT_BACKBONES = {"text": MINILM, "vision": VIT_DEFAULT}  # unless the stream names its own
log = logging.getLogger("cl_lora")


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


def prepare_backbone(name: str) -> None:
    """Build what a backbone needs once: the offline MNIST ViT is pretrained (with progress
    output) the first time it is asked for, then read from the cache."""
    if name == MNIST_VIT:
        from cl_lora.pretrain_mnist import ensure_mnist_vit

        ensure_mnist_vit(progress=log.info)


def load_backbone(name: str, modality: str, max_length: int) -> Backbone:
    """The backbone ``name`` for a stream of ``modality`` (a timm model for vision)."""
    if modality == "vision":
        return load_vit_backbone(name)
    return load_text_backbone(name, max_length=max_length)


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
    config: RunConfig,
    calibration: dict[str, Any],
    run_id: str,
    stream: streams.Stream,
    backbone_source: dict[str, Any],
    lora: LoRASettings,
    targets: list[str],
    outcome: StreamOutcome,
    device: torch.device,
    wall_s: float,
    retention: dict[str, Any],
) -> dict[str, Any]:
    init = inits.get(config.init)
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
        "init": {
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
        "retention": retention,
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
    init = inits.get(config.init)
    # typed and complete arguments (rejects unknown ones before any work): they go into the
    # run id and the result, so "f=.25" and "f=0.25" are the same run
    config = dataclasses.replace(config, init_args=init.resolve_args(config.init_args))
    stream = streams.build(
        config.stream,
        streams.StreamOptions(
            data_dir=Path(config.data_dir) if config.data_dir else None,
            max_train_per_task=config.max_train_per_task,
            max_test_per_task=config.max_test_per_task,
            scenario=config.scenario,
        ),
    )
    # the defaults this run resolves to are part of its id and its record
    config = dataclasses.replace(
        config,
        backbone=config.backbone or stream.backbone or DEFAULT_BACKBONES[stream.modality],
        scenario=stream.scenario,
    )
    prepare_backbone(config.backbone)
    seed_everything(config.seed)
    backbone = load_backbone(config.backbone, stream.modality, config.max_length)
    targets = _targets(config, backbone.target_modules)
    _check_rank(config.rank, backbone.encoder, targets)
    lora = LoRASettings(rank=config.rank, alpha=config.alpha, rslora=config.rslora)
    run_id = new_run_id(config.to_dict())
    run_dir = output_dir / run_id
    run_dir.mkdir(parents=True, exist_ok=True)

    strategy = LoRAStrategy(
        model=ContinualClassifier(
            backbone, shared_head=stream.shared_head, class_incremental=stream.scenario == "class"
        ),
        backbone=backbone,
        stream=stream,
        init=init,
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
        evaluator=make_evaluator(verbose),
    )
    probe = RetentionProbe.for_backbone(
        streams.knowledge_probe(stream.modality),
        backbone,
        batch_size=config.eval_batch_size,
        max_fit=config.max_train_per_task,
        max_test=config.max_test_per_task,
    )
    outcome = run_stream(strategy, checkpoint=run_dir / CHECKPOINT, probe=probe)
    calibration = {
        "sources": list(strategy.calibrator.sources) if init.needs else [],
        "per_task": strategy.calibrator.reports,
    }
    result = _result(
        config,
        calibration,
        run_id,
        stream,
        backbone.source,
        lora,
        targets,
        outcome,
        device,
        time.perf_counter() - start,
        probe.record(outcome.retention),
    )
    write_run(run_dir, result)
    return RunOutput(run_dir=run_dir, result=result)
