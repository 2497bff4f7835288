"""Checkpoints that let a run continue after its last finished task, as if never stopped.

A checkpoint holds what changed since the pretrained model, not the model: the LoRA history
(each task's initial and final factors and folded terms, :mod:`cl_lora.deltas`), replayed on the
pretrained weights at resume; whole tensors only for encoder weights that train directly
(sequential fine-tuning) and for the small parts outside the encoder (heads, bookkeeping
buffers). Around it: the state of the strategy's learning plugins (replay memory as row ids, EWC
importances, Avalanche's clock), the strategy's per-task bookkeeping, the loop's outcome so far,
the retention probe's fitted head, and every random-number generator. Optimizers are rebuilt
for each task, so none is saved.

The file is a safetensors file with JSON metadata (:mod:`cl_lora.safe_state`): loading it reads
numbers and never executes anything, and a changed or truncated file fails with one line.
Avalanche's own ``save_checkpoint`` pickles the whole strategy with dill (which also copies every
dataset into each file), so we save just the parts above.

A plugin is saved through its ``checkpoint_state()`` / ``restore_checkpoint_state(state,
strategy, experiences)`` when it has them, else through its attributes, which must then be plain
data and tensors.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from avalanche.training.plugins import EvaluationPlugin
from torch import nn

from cl_lora.deltas import replay
from cl_lora.errors import BadInputError
from cl_lora.probes import Probe
from cl_lora.safe_state import DamagedStateError, load_state, save_state
from cl_lora.strategy.outcome import StreamOutcome
from cl_lora.strategy.plugins import TaskScorePlugin
from cl_lora.strategy.retention import RetentionProbe
from cl_lora.strategy.template import LoRAStrategy

FORMAT_VERSION = 3  # 3: merges W + s (B A - B0 A0) in float32 (bf16 inits); EWC keeps F, G, H
_STATELESS = (EvaluationPlugin, TaskScorePlugin)  # loggers and per-eval scratch: not saved
_LORA_FACTORS = ("lora_A", "lora_B")


def rng_states() -> dict[str, Any]:
    """The state of every global generator a run draws from."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        "numpy": np.random.get_state(),
        "random": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"].cpu())
    if states["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state.cpu() for state in states["cuda"]])
    np.random.set_state(states["numpy"])
    random.setstate(states["random"])


# -- the model: what changed since the pretrained one ---------------------------------------------
def _trained_encoder_tensors(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """Encoder weights that train directly (not LoRA factors) and every encoder buffer but the
    adapters' pending terms (:class:`cl_lora.lora.PendingDelta`)."""
    tensors = {
        name: param
        for name, param in encoder.named_parameters()
        if param.requires_grad and not any(part in name for part in _LORA_FACTORS)
    }
    buffers = {n: b for n, b in encoder.named_buffers() if "lora_pending" not in n}
    return tensors | buffers  # a pending init term is in the LoRA history: replayed, not stored


def model_state(strategy: LoRAStrategy) -> dict[str, Any]:
    model = strategy.model
    outside = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    return {
        "pretrained": strategy.backbone.source.get("fingerprint"),
        "lora_history": strategy.history.state(model.encoder),
        "encoder": _trained_encoder_tensors(model.encoder),
        "outside_encoder": outside,
        "frozen": [
            n
            for n, p in model.named_parameters()
            if not n.startswith("encoder.") and not p.requires_grad
        ],
        "known_task_labels": getattr(model, "known_train_tasks_labels", None),
    }


def restore_model(strategy: LoRAStrategy, state: dict[str, Any]) -> None:
    """Rebuild the checkpointed model on ``strategy``'s freshly loaded pretrained one, moved
    to the run's device first: the checkpoint's tensors are loaded there, and a replay gives
    the run's bits only through the run's kernels (a 7B replay on the CPU would also crawl)."""
    model = strategy.model
    pretrained = strategy.backbone.source.get("fingerprint")
    if None not in (pretrained, state["pretrained"]) and pretrained != state["pretrained"]:
        raise BadInputError(
            f"the checkpoint was written on other pretrained weights (fingerprint "
            f"{state['pretrained']}, now {pretrained}): delete it to restart the run"
        )
    model.to(strategy.device)  # replay on the run's device: its kernels, its bits
    replay(model, state["lora_history"], strategy.lora, strategy.target_modules)
    strategy.history.restore(state["lora_history"])
    current = _trained_encoder_tensors(model.encoder)
    with torch.no_grad():
        for name, tensor in state["encoder"].items():
            current[name].copy_(tensor)
    for name, tensor in state["outside_encoder"].items():  # heads.<key>.weight: out x in
        if name.startswith("heads.") and name.endswith(".weight"):
            out_features, in_features = tensor.shape
            key = name.removeprefix("heads.").removesuffix(".weight")
            model.heads[key] = torch.nn.utils.skip_init(nn.Linear, in_features, out_features)
    for name, tensor in state["outside_encoder"].items():
        if "." not in name and not hasattr(model, name):  # a buffer made on first use
            model.register_buffer(name, tensor.clone())
    model.load_state_dict(state["outside_encoder"], strict=False)
    frozen = set(state["frozen"])
    for name, param in model.named_parameters():
        if name in frozen:
            param.requires_grad_(False)
    if state["known_task_labels"] is not None:
        model.known_train_tasks_labels = set(state["known_task_labels"])
    model.to(strategy.device)  # the heads made above


# -- plugins ----------------------------------------------------------------------------------
def plugin_state(plugin: Any) -> Any:
    if isinstance(plugin, _STATELESS):
        return None
    if hasattr(plugin, "checkpoint_state"):
        return plugin.checkpoint_state()
    return dict(vars(plugin))


def restore_plugin(plugin: Any, state: Any, strategy: LoRAStrategy, experiences: Sequence) -> None:
    if state is None:
        return
    if hasattr(plugin, "restore_checkpoint_state"):
        plugin.restore_checkpoint_state(state, strategy, experiences)
    else:
        vars(plugin).update(state)


# -- the whole checkpoint ---------------------------------------------------------------------
def save_checkpoint(
    path: Path,
    strategy: LoRAStrategy,
    outcome: StreamOutcome,
    finished_task: int,
    probe: RetentionProbe | Probe | None = None,
) -> int:
    """Write the checkpoint after ``finished_task``, replacing the previous one atomically;
    returns its size in bytes. ``TypeError`` when a plugin's state is not plain data and
    tensors (nothing is written then)."""
    return save_state(
        path,
        {
            "format_version": FORMAT_VERSION,
            "finished_task": finished_task,
            "model": model_state(strategy),
            "plugins": [plugin_state(plugin) for plugin in strategy.plugins],
            "strategy": strategy.checkpoint_state(),
            "outcome": asdict(outcome),
            "probe": probe.checkpoint_state() if probe is not None else None,
            "rng": rng_states(),
        },
    )


def load_checkpoint(
    path: Path,
    strategy: LoRAStrategy,
    experiences: Sequence,
    probe: RetentionProbe | Probe | None = None,
) -> tuple[StreamOutcome, int]:
    """Restore ``strategy`` (built from the same config, pretrained model) and ``probe`` to the
    checkpoint's state; ``experiences`` are the stream's training experiences (a replay memory
    is stored as rows of them). The probe keeps the head fitted on the pretrained model.

    Returns the outcome so far and the index of the last finished task.
    """
    try:
        state = load_state(path, strategy.device)
    except DamagedStateError as error:
        raise BadInputError(f"{error}: delete it to restart the run from its first task") from None
    if state.get("format_version") != FORMAT_VERSION:
        raise BadInputError(f"{path} was written by another cl_lora version; delete it to restart")
    restore_model(strategy, state["model"])
    for plugin, saved in zip(strategy.plugins, state["plugins"], strict=True):
        restore_plugin(plugin, saved, strategy, experiences)
    strategy.restore_checkpoint_state(state["strategy"])
    if probe is not None:
        probe.restore_checkpoint_state(state["probe"])
    set_rng_states(state["rng"])
    return StreamOutcome(**state["outcome"]), state["finished_task"]
