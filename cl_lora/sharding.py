"""FSDP2 for a backbone that does not fit one device: its frozen weights sharded over the
processes, the adapters whole on every process.

A LoRA run trains only small adapters, so only the base weights need sharding. Each sharding
unit (a decoder layer, by default the model's ``_no_split_modules``) is wrapped by torch's
``fully_shard``: its weights live as shards (1/N per process), are gathered for its forward and
backward and freed after. The adapters PEFT adds later stay whole (replicated) on every process
and their gradients are summed at the optimizer step as in the data-parallel run
(:func:`cl_lora.distributed.sum_gradients`). The few places that read or write a base weight go
through :func:`full_weight` (an init's decomposition, LoRA-Dash's directions) and
:func:`write_weight` (the per-task merge, a resumed run's replay).

It is turned on by accelerate's FSDP config (``distributed_type: FSDP``, ``fsdp_version: 2``),
read through accelerate's own :class:`~accelerate.utils.FullyShardedDataParallelPlugin`. The
model is sharded here rather than by ``accelerate.Accelerator.prepare``: prepare wraps a model
whose trainable parameters are known once, where the suite adds a new adapter every task.

Every process must run the same forwards in the same order (each one gathers weights with the
others), so under sharding an empty share of a batch runs a stand-in row whose loss counts 0,
shares handed to :func:`cl_lora.distributed.map_shared` are padded to equal length, and
generation keeps every process stepping until all are done (transformers' ``synced_gpus``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from cl_lora.errors import BadInputError

#: The environment accelerate's launcher sets for an FSDP2 config (what a torchrun launch sets by
#: hand to shard the same way).
FSDP2_VARIABLES = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}


@dataclass(frozen=True)
class ShardingConfig:
    """What accelerate's FSDP config asks for: the module classes sharded as units (``None``:
    the model's ``_no_split_modules``)."""

    units: tuple[str, ...] | None = None
    # cpu_ram_efficient_loading: process 0 alone reads the weights and sends them to the others
    ram_efficient_loading: bool = False


def requested() -> ShardingConfig | None:
    """The FSDP2 settings of the launch (``None`` without an FSDP config); settings the suite
    cannot honour are refused in one line."""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() not in ("1", "true"):
        return None
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()
    policy = os.environ.get("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP")
    refusals = [
        (plugin.fsdp_version != 2, "FSDP1 is not supported: set fsdp_version: 2 (FSDP2)"),
        (
            plugin.reshard_after_forward is not True,
            "fsdp_reshard_after_forward: false is not supported (a merge writes the shards, "
            "which must be the weights' only copy): set it to true",
        ),
        (
            type(plugin.cpu_offload).__name__ == "CPUOffloadPolicy",
            "fsdp_offload_params: true is not supported: shard over more processes instead",
        ),
        (
            plugin.activation_checkpointing,
            "fsdp_activation_checkpointing is not supported: pass --gradient-checkpointing (the "
            "backbone's own activation checkpointing, which works with sharded weights)",
        ),
        (
            policy != "TRANSFORMER_BASED_WRAP",
            f"fsdp_auto_wrap_policy: {policy} is not supported: use TRANSFORMER_BASED_WRAP "
            "(one decoder layer per unit)",
        ),
    ]
    for refused, message in refusals:
        if refused:
            raise BadInputError(message)
    # read here too when the policy is left out (TRANSFORMER_BASED_WRAP is this module's
    # default; accelerate reads the classes only when the policy is named)
    names = plugin.transformer_cls_names_to_wrap or os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP")
    if isinstance(names, str):
        names = [name.strip() for name in names.split(",") if name.strip()]
    return ShardingConfig(
        units=tuple(names) if names else None,
        ram_efficient_loading=bool(plugin.cpu_ram_efficient_loading),
    )


def shard(model: nn.Module, config: ShardingConfig, device: torch.device, world: int) -> int:
    """Shard ``model``'s weights over the ``world`` processes in place: every unit module,
    then the rest with the root. Returns the number of units."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    names = set(config.units or getattr(model, "_no_split_modules", None) or ())
    units = [module for module in model.modules() if type(module).__name__ in names]
    if not units:
        raise BadInputError(
            f"FSDP: no module of {type(model).__name__} is a {', '.join(sorted(names)) or 'unit'}"
            ": set fsdp_transformer_layer_cls_to_wrap to the class of its repeated blocks "
            "(a decoder layer; timm's ViT: Block)"
        )
    mesh = init_device_mesh(device.type, (world,))
    for unit in units:
        fully_shard(unit, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    return len(units)


def is_sharded(weight: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(weight, DTensor)


def full_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` whole: gathered from every process's shard when sharded (each process calls
    this, in the same order), else ``weight`` itself."""
    return weight.full_tensor() if is_sharded(weight) else weight


@torch.no_grad()
def write_weight(weight: torch.Tensor, value: torch.Tensor) -> None:
    """Write the whole ``value`` (the same on every process) into ``weight``: into this
    process's shard when sharded (no communication), else in place."""
    if not is_sharded(weight):
        weight.copy_(value)
        return
    from torch.distributed.tensor import distribute_tensor

    mine = distribute_tensor(value, weight.device_mesh, weight.placements, src_data_rank=None)
    weight.to_local().copy_(mine.to_local())


def is_empty(model: nn.Module) -> bool:
    """Whether ``model`` was built without its weights (on the ``meta`` device)."""
    return any(p.is_meta for p in model.parameters())
