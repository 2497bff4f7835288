"""Checkpoints that let a run continue after its last finished task, as if never stopped.

A checkpoint holds everything the remaining tasks depend on: the model object itself (merged
backbone, live adapter, every head -- pickled whole, so strategies that keep several adapters
resume too), the state of the strategy's learning plugins (replay buffers, EWC importances,
Avalanche's clock), the strategy's own per-task bookkeeping, the loop's outcome so far, and
every random-number generator, and the retention probe's head (fitted on the pretrained
model, which a resumed run no longer has). Optimizers are rebuilt for each task, so none is saved.

Avalanche's own ``save_checkpoint`` pickles the whole strategy with dill; that fails on our
strategy (it reaches globals dill cannot pickle) and would copy every dataset into each file,
so we save just the parts above.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from avalanche.training.plugins import EvaluationPlugin

from cl_lora.strategy.outcome import StreamOutcome
from cl_lora.strategy.plugins import TaskScorePlugin
from cl_lora.strategy.retention import RetentionProbe
from cl_lora.strategy.template import LoRAStrategy

FORMAT_VERSION = 1
_STATELESS = (EvaluationPlugin, TaskScorePlugin)  # loggers and per-eval scratch: not saved


def rng_states() -> dict[str, Any]:
    """The state of every global generator a run draws from."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        "numpy": np.random.get_state(),
        "random": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    np.random.set_state(states["numpy"])
    random.setstate(states["random"])


def save_checkpoint(
    path: Path,
    strategy: LoRAStrategy,
    outcome: StreamOutcome,
    finished_task: int,
    probe: RetentionProbe | None = None,
) -> None:
    """Write the checkpoint after ``finished_task``, replacing the previous one atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(
        {
            "format_version": FORMAT_VERSION,
            "finished_task": finished_task,
            "model": strategy.model,
            "plugins": [None if isinstance(p, _STATELESS) else vars(p) for p in strategy.plugins],
            "strategy": strategy.checkpoint_state(),
            "outcome": outcome,
            "probe": probe.checkpoint_state() if probe is not None else None,
            "rng": rng_states(),
        },
        tmp,
    )
    os.replace(tmp, path)


def load_checkpoint(
    path: Path, strategy: LoRAStrategy, probe: RetentionProbe | None = None
) -> tuple[StreamOutcome, int]:
    """Restore ``strategy`` and ``probe`` (built from the same config) to the checkpoint's
    state; the probe keeps the head fitted on the pretrained model.

    Returns the outcome so far and the index of the last finished task.
    """
    state = torch.load(path, map_location=strategy.device, weights_only=False)
    if state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} was written by another cl_lora version; delete it to restart")
    strategy.model = state["model"]
    for live, saved in zip(strategy.plugins, state["plugins"], strict=True):
        if saved is not None:
            vars(live).update(saved)
    strategy.restore_checkpoint_state(state["strategy"])
    if probe is not None:
        probe.restore_checkpoint_state(state["probe"])
    set_rng_states(state["rng"])
    return state["outcome"], state["finished_task"]
