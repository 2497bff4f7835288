"""One run over many processes: data parallel, on accelerate's process state.

A run launched by ``accelerate launch`` or ``torchrun`` (``WORLD_SIZE`` > 1 in the environment)
joins the process group through accelerate's :class:`~accelerate.PartialState` (gloo on the CPU,
NCCL on CUDA, one GPU per process) and splits each batch over the processes. What makes the
numbers independent of the process count:

- every process iterates the *same* global batches (one seeded order); each takes a contiguous
  share of every micro-batch (:func:`share`), so ``--batch-size`` stays the effective batch;
- each share's loss is weighted by its share of the whole step's loss terms, and gradients are
  summed over processes before the step, so a step equals the one-process step;
- evaluation predictions are gathered back in example order;
- everything else (calibration, inits, merges, plugin state, probes) is computed by every
  process on the same data, and each task's adapters are broadcast from process 0 and the
  replicas checked (:func:`check_replicas`), so a divergence stops the run instead of skewing it.

Every process holds the whole model, unless accelerate's FSDP config asks for FSDP2: then the
backbone's frozen weights are sharded (:mod:`cl_lora.sharding`) and the rest works as above.

Gradients are summed by these functions at the optimizer step (in buckets) instead of wrapping
the model in DDP: the trainable set changes every task and plugins add loss terms outside the
forward, which DDP's reducer would have to be rebuilt around each time. DeepSpeed configs are
refused (:func:`start`).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from cl_lora import sharding
from cl_lora.errors import BadInputError, RunFailure

T = TypeVar("T")
BUCKET_ELEMENTS = 1 << 26  # gradients summed in pieces of at most 256 MB of float32


@dataclass(frozen=True)
class Processes:
    """This process's place in the run: ``rank`` of ``world`` (``local_rank`` on its node)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None
    fsdp: sharding.ShardingConfig | None = None  # FSDP2: the backbone's weights sharded

    @property
    def main(self) -> bool:
        """Whether this process writes the run's files and logs."""
        return self.rank == 0

    @property
    def many(self) -> bool:
        return self.world > 1

    def record(self) -> dict[str, Any]:
        return {
            "world_size": self.world,
            "backend": self.backend,
            "sharding": None if self.fsdp is None else "fsdp2",
            "weights_read_by": _weights_read_by,
            "communication_s": communication_seconds(),
        }


_current = Processes()
_communication_s = 0.0  # spent in this module's collective operations
_weights_read_by: list[int] | None = None  # the processes that read the backbone's weights


def note_weights_read(read: bool) -> list[bool]:
    """Per process, whether it read the backbone's weights from their files (``read``: this
    process's answer), recorded for ``result.json``: every process does, except under FSDP2
    with accelerate's ``cpu_ram_efficient_loading`` (process 0 reads, then sends them)."""
    global _weights_read_by
    answers = gather_in_order(read)
    _weights_read_by = [rank for rank, answer in enumerate(answers) if answer]
    return answers


def communication_seconds() -> float:
    """Seconds this process has spent exchanging data with the others (waiting included: a
    process that finished its share first waits for the slowest here)."""
    return _communication_s


def _communicating(function: Callable[..., T]) -> Callable[..., T]:
    """Count ``function``'s wall time as communication (CUDA work finished on both ends, so
    that queued kernels are not counted as exchange)."""

    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> T:
        global _communication_s
        if not _current.many:
            return function(*args, **kwargs)
        cuda = _current.backend == "nccl"
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            if cuda:
                torch.cuda.synchronize()
            _communication_s += time.perf_counter() - start

    return timed


def launched_world() -> int:
    """The process count a launcher (torchrun, accelerate launch) set, 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    """This process's rank as the launcher set it (0 without one): known before the group is
    joined, so logging can be set up first."""
    return int(os.environ.get("RANK", "0"))


def start(device: str) -> Processes:
    """Join the launcher's process group (once) for a run on ``device`` and return this
    process's place; a plain ``python -m`` run is one process and joins nothing."""
    global _current
    if launched_world() == 1 or _current.many:
        return _current
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true"):
        raise BadInputError(
            "DeepSpeed is not supported: launch with a data-parallel config, or an FSDP config "
            "with fsdp_version: 2 to shard a backbone that does not fit one device"
        )
    shards = sharding.requested()
    if device.startswith("cuda:"):
        raise BadInputError(
            f"--device {device} names one GPU, but {launched_world()} processes were launched: "
            "use --device cuda (each process takes its own GPU)"
        )
    from accelerate import PartialState

    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    _current = Processes(
        rank=state.process_index,
        world=state.num_processes,
        local_rank=state.local_process_index,
        backend=state.backend,
        fsdp=shards,
    )
    return _current


def current() -> Processes:
    """This process's place (one process until :func:`start` joined a group)."""
    return _current


def sharded() -> bool:
    """Whether the backbone's weights are sharded over the processes (FSDP2): then every
    process must run the same forwards (:mod:`cl_lora.sharding`)."""
    return _current.many and _current.fsdp is not None


def run_device(device: torch.device) -> torch.device:
    """``device`` for this process: its own GPU (by local rank) in a multi-process CUDA run."""
    if _current.many and device.type == "cuda":
        return torch.device("cuda", _current.local_rank)
    return device


def share(items: Sequence[T], processes: Processes | None = None) -> Sequence[T]:
    """This process's contiguous share of a global batch (the first ``len % world`` processes
    take one more), so that the shares, gathered in rank order, are the batch in order."""
    p = processes or _current
    size, extra = divmod(len(items), p.world)
    begin = p.rank * size + min(p.rank, extra)
    return items[begin : begin + size + (p.rank < extra)]


@_communicating
def sum_over_processes(value: float) -> float:
    """``value`` summed over all processes."""
    if not _current.many:
        return value
    from accelerate.utils import reduce

    return float(reduce(torch.tensor([value], dtype=torch.float64, device=_device()), "sum"))


@_communicating
def gather_in_order(item: Any) -> list[Any]:
    """Every process's ``item`` (picklable), in rank order, on every process."""
    if not _current.many:
        return [item]
    from accelerate.utils import gather_object

    return gather_object([item])


def map_shared(items: Sequence[T], work: Callable[[Sequence[T]], list[Any]]) -> list[Any]:
    """``work(items)`` with the items split over the processes: each process runs ``work`` on
    its share (:func:`share`) and every process gets all results, in the items' order. Under
    FSDP2 the shares are padded to one length (results of the padding dropped), so that every
    process runs as many forwards."""
    if not _current.many:
        return work(items)
    mine = share(items)
    if _current.fsdp is not None and items:  # every process runs the same forwards
        longest = -(-len(items) // _current.world)
        padding = [(mine or items)[-1]] * (longest - len(mine))
        results = work([*mine, *padding])[: len(mine)]
    else:
        results = work(mine) if mine else []
    return [result for part in gather_in_order(results) for result in part]


@_communicating
def sum_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Sum the parameters' gradients over processes, in place (a missing gradient counts as
    zero: a process whose share of the step was empty still takes part)."""
    if not _current.many:
        return
    import torch.distributed as dist

    params = list(parameters)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    for bucket in _buckets(params):
        flat = torch.cat([p.grad.reshape(-1) for p in bucket])
        dist.all_reduce(flat)
        offset = 0
        for p in bucket:
            p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
            offset += p.numel()


@_communicating
def broadcast_tensors(tensors: Iterable[torch.Tensor]) -> None:
    """Overwrite ``tensors`` with process 0's values, in place."""
    if not _current.many:
        return
    import torch.distributed as dist

    device = _device()
    for tensor in tensors:
        sent = tensor.data.to(device).contiguous()  # NCCL sends only CUDA tensors
        dist.broadcast(sent, src=0)
        if sent.data_ptr() != tensor.data.data_ptr():
            tensor.data.copy_(sent)


def fill_from_first_process(
    model: torch.nn.Module,
    whole: dict[str, torch.Tensor] | None,
    device: torch.device,
    loaded: bool,
) -> None:
    """Give every process's sharded ``model`` process 0's weights and buffers (each process
    calls this): FSDP2's ``cpu_ram_efficient_loading``, where process 0 alone reads the weights
    and the others build the architecture on the meta device, so that they never hold the whole
    model in CPU memory. ``whole``: process 0's weights before sharding (else ``None``);
    ``loaded``: whether this process loaded them (else its model is allocated here first).
    Weights are sent one at a time, each process keeping its shard."""
    if not loaded:
        model.to_empty(device=device)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if whole is not None:  # process 0: its weights as loaded, its buffers as they are
            full = whole.get(name, tensor).detach().to(device).contiguous()
        else:
            full = torch.empty(tensor.shape, dtype=tensor.dtype, device=device)
        broadcast_tensors([full])
        sharding.write_weight(tensor, full)


def broadcast_rng() -> None:
    """Give every process process 0's CPU random state (data order, replay sampling), which
    per-process work of different sizes (dropout on unequal shares) can have moved apart."""
    if not _current.many:
        return
    state = gather_in_order(torch.get_rng_state() if _current.main else None)[0]
    torch.set_rng_state(state)


def check_replicas(model: torch.nn.Module, when: str) -> None:
    """Stop the run if any parameter differs between processes (compared through exact
    per-tensor sums): replicas that drifted apart would train different models. Sharded
    weights (FSDP2) are not replicas and are left out."""
    if not _current.many:
        return
    names, sums = [], []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if sharding.is_sharded(p):
                continue
            names.append(name)
            sums.append(p.detach().sum(dtype=torch.float64).item())  # no float64 copy
    first, *others = gather_in_order(sums)
    for rank, values in enumerate(others, start=1):
        for name, a, b in zip(names, first, values, strict=True):
            if a != b:
                raise RunFailure(
                    f"process {rank}'s model differs from process 0's {when} ({name}: sum "
                    f"{b!r} vs {a!r}): report this with the command"
                )


@_communicating
def barrier() -> None:
    """Wait for every process (before one process's file is read by the others)."""
    if _current.many:
        import torch.distributed as dist

        dist.barrier()


def _device() -> torch.device:
    return (
        torch.device("cuda", _current.local_rank)
        if _current.backend == "nccl"
        else torch.device("cpu")
    )


def _buckets(params: list[torch.nn.Parameter]) -> Iterable[list[torch.nn.Parameter]]:
    """The parameters in groups of one dtype and device, each at most ``BUCKET_ELEMENTS``."""
    bucket: list[torch.nn.Parameter] = []
    size = 0
    for p in params:
        if bucket and (
            size + p.numel() > BUCKET_ELEMENTS
            or (p.grad.dtype, p.grad.device) != (bucket[0].grad.dtype, bucket[0].grad.device)
        ):
            yield bucket
            bucket, size = [], 0
        bucket.append(p)
        size += p.numel()
    if bucket:
        yield bucket
