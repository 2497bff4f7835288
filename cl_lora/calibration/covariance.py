"""Input covariances ``C = X^T X`` of adapted layers, collected with forward pre-hooks.

Layers that read the very same input tensor (q/k/v of one attention block; gate/up of a gated
MLP) share one covariance: it is accumulated once and handed to each of them, which saves both
the matmuls and the memory of the duplicates (and the init methods then decompose it once, see
:func:`cl_lora.inits.factors.decompose_input`). Padding tokens are left out via the batch's mask.

``normalize`` scales each sequence's inputs by the absolute value of its largest entry before
they enter ``C``, as LoRA-Null's reference code does (HungerPWAY/LoRA-Null,
``adapterlib/act_aware_utils.py``: ``input / torch.max(input).abs()`` per calibration sequence),
so every sequence weighs about the same whatever its activation scale.

Memory: one float32 ``d_in x d_in`` matrix per distinct input, for every adapted layer at once
(LLaMA-7B: ``3 x 4096^2 + 11008^2`` floats, 0.69 GB, per decoder layer). When that exceeds the
run's budget, :func:`covariance_passes` splits the layers into passes over the same
calibration data, each holding its layers' matrices only; every matrix sums the same inputs in
the same order, so the statistics are the same whatever the number of passes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from cl_lora.calibration.registry import CalibrationData, Collected, register_statistic


class CovarianceCollector:
    """Context manager: while active, every forward pass adds its layer inputs to ``C``.

    Set :attr:`mask` to the batch's ``(batch, tokens)`` attention mask before each forward pass
    so padded positions are skipped (inputs of another shape are used whole).
    """

    def __init__(
        self, encoder: nn.Module, layer_names: Sequence[str], normalize: bool = False
    ) -> None:
        self.encoder = encoder
        self.normalize = normalize
        self.layer_names = list(layer_names)
        self.group_of: dict[str, int] = {}
        self.sums: list[torch.Tensor] = []
        self.mask: torch.Tensor | None = None
        self._batch: list[tuple[torch.Tensor, int]] = []  # this pass's inputs and their groups
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> CovarianceCollector:
        for name in self.layer_names:
            module = self.encoder.get_submodule(name)
            self._handles.append(module.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._batch.clear()

    def start_batch(self, mask: torch.Tensor | None) -> None:
        """Call before each forward pass."""
        self.mask = mask
        self._batch.clear()

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        masked = self.mask is not None and x.dim() == 3 and x.shape[:2] == self.mask.shape
        if self.normalize and x.dim() == 3:  # per sequence: divide by |its largest entry|
            keep = self.mask.bool()[..., None] if masked else torch.ones_like(x, dtype=torch.bool)
            largest = x.masked_fill(~keep, float("-inf")).amax(dim=(1, 2), keepdim=True)
            x = x / largest.abs().clamp_min(torch.finfo(x.dtype).tiny)
        if masked:
            return x[self.mask.bool()]
        return x.reshape(-1, x.shape[-1])

    def _hook(self, name: str):
        def pre_hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            for seen, group in self._batch:
                if seen is x:  # a sibling layer already added this very tensor
                    self.group_of.setdefault(name, group)
                    return
            rows = self._rows(x.detach()).float()
            group = self.group_of.get(name)
            if group is None:
                group = self.group_of[name] = len(self.sums)
                self.sums.append(torch.zeros(rows.shape[1], rows.shape[1], device=rows.device))
            self.sums[group] += rows.T @ rows
            self._batch.append((x, group))

        return pre_hook

    def covariances(self) -> dict[str, torch.Tensor]:
        """Each layer's ``C`` (layers of one group share the same tensor object)."""
        return {name: self.sums[group] for name, group in self.group_of.items()}

    def nbytes(self) -> int:
        """Memory held: one matrix per distinct input."""
        return sum(c.numel() * c.element_size() for c in self.sums)

    def nbytes_per_module(self) -> int:
        """Memory one matrix per module would hold, for comparison."""
        return sum(
            self.sums[g].numel() * self.sums[g].element_size() for g in self.group_of.values()
        )


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device`` now (CPU: the system's free memory). On CUDA the blocks
    PyTorch's allocator has cached but not handed out count as free: the driver sees them as
    used, yet the statistics can use them (after a task's training they are most of it)."""
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + cached
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def covariance_passes(encoder: nn.Module, names: Sequence[str], budget: int) -> list[list[str]]:
    """``names`` (in module order) split into consecutive passes whose covariances fit in
    ``budget`` bytes, counting one float32 ``d_in x d_in`` matrix per layer (an upper bound:
    layers that share an input hold one). Layers under one parent module (q/k/v/o of an
    attention block) stay in one pass, so an input they share is still collected once; a
    parent larger than the budget is a pass of its own."""
    modules = dict(encoder.named_modules())
    families: list[list[str]] = []
    for name in names:
        parent = name.rpartition(".")[0]
        if families and families[-1][0].rpartition(".")[0] == parent:
            families[-1].append(name)
        else:
            families.append([name])
    passes: list[list[str]] = []
    held = 0
    for family in families:
        size = sum(4 * modules[name].weight.shape[1] ** 2 for name in family)
        if not passes or held + size > budget:
            passes.append([])
            held = 0
        passes[-1] += family
        held += size
    return passes


def collect_input_covariances(
    model: nn.Module,
    layer_names: Sequence[str],
    batches: Iterable[dict[str, torch.Tensor]],
    normalize: bool = False,
) -> CovarianceCollector:
    """Forward ``batches`` through ``model.features`` (no gradients) and collect ``C``."""
    collector = CovarianceCollector(model.encoder, layer_names, normalize)
    with collector, torch.no_grad():
        for inputs in batches:
            collector.start_batch(inputs.get("attention_mask"))
            model.features(inputs)
    return collector


@register_statistic("input_cov", "C = X^T X of each distinct layer input, on the --calib sources")
def input_covariance_statistic(
    data: CalibrationData, model: nn.Module, task_id: int, generator: torch.Generator
) -> Collected:
    batches, used = data.input_batches(task_id)
    normalize = data.resolved_args().get("normalize", False)
    collector = collect_input_covariances(model, data.target_modules, batches, normalize)
    return collector.covariances(), {
        "input_cov_examples": used,
        "input_cov_normalized": normalize,
        "input_cov_bytes": collector.nbytes(),
        "input_cov_bytes_one_per_module": collector.nbytes_per_module(),
    }
