"""The init contract: one ``out x in`` weight in, LoRA factors and residual out (see
docs/ARCHITECTURE.md).

LoRA computes ``y = W x + s * B A x``. An init method returns ``A`` (``r x in``), ``B``
(``out x r``), the ``residual`` that becomes the layer's frozen base weight, and which factors
train, such that ``residual + s * B @ A == W``: right after init the model computes the same
function as before. Methods are pure functions of the weight plus the statistics they declare
in ``needs`` (e.g. ``"input_cov"``, ``"grad"``), so the strategy collects only those.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from cl_lora.arguments import Argument, resolve_arguments
from cl_lora.errors import BadInputError


@dataclass(frozen=True)
class LoRAFactors:
    """What an init returns for one layer."""

    A: torch.Tensor
    B: torch.Tensor
    residual: torch.Tensor
    trainable: frozenset[str] = field(default_factory=lambda: frozenset({"A", "B"}))


class InitMethod(ABC):
    """Base class of every init method; subclasses implement :meth:`factors`.

    ``name`` and ``description`` are set by :func:`cl_lora.inits.register`. ``needs`` lists
    the statistics the method reads from ``stats`` (``"input_cov"``, ``"grad"``,
    ``"warmup_delta"``; a method needing ``"warmup_delta"`` takes a ``warmup_steps`` argument);
    ``calibration`` is the default data of its input covariances (``"probe"``: inputs standing
    for pretrained knowledge, ``"task"``: the current task, ``"memory"``: earlier tasks);
    ``arguments`` are the keyword arguments it takes; ``training_plugin`` names a strategy
    plugin that acts during training (LoRA-Dash), whose arguments are the method's.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ()
    calibration: ClassVar[tuple[str, ...]] = ("task",)
    arguments: ClassVar[dict[str, Argument]] = {}
    training_plugin: ClassVar[str | None] = None

    def __call__(
        self,
        weight: torch.Tensor,
        *,
        rank: int,
        scale: float,
        stats: Mapping[str, torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
        **args: Any,
    ) -> LoRAFactors:
        """Initialize LoRA for one ``out x in`` weight; see the module docstring."""
        out_features, in_features = weight.shape
        if not 0 < rank <= min(out_features, in_features):
            raise BadInputError(
                f"rank {rank} does not fit a {out_features}x{in_features} layer: "
                f"choose --rank between 1 and {min(out_features, in_features)}"
            )
        stats = dict(stats or {})
        missing = [need for need in self.needs if need not in stats]
        if missing:
            raise ValueError(f"init '{self.name}' needs statistics {missing} that were not given")
        resolved = self.resolve_args(args)
        with torch.no_grad():
            return self.factors(
                weight.detach().float(),
                rank=rank,
                scale=scale,
                stats=stats,
                generator=generator,
                **resolved,
            )

    def resolve_args(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults filled in and values coerced to their declared types; unknown keys rejected."""
        return resolve_arguments(f"init '{self.name}'", self.arguments, args)

    @abstractmethod
    def factors(
        self,
        weight: torch.Tensor,
        *,
        rank: int,
        scale: float,
        stats: Mapping[str, torch.Tensor],
        generator: torch.Generator | None,
        **args: Any,
    ) -> LoRAFactors:
        """The method itself, on a float32 weight with validated arguments."""
