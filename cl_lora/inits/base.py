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

from cl_lora.cli import parse_bool
from cl_lora.errors import BadInputError


@dataclass(frozen=True)
class Argument:
    """One ``--init-arg KEY=VALUE`` a method accepts (``choices``: the values allowed, if only
    a few are)."""

    type: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None


def resolve_arguments(
    owner: str, arguments: Mapping[str, Argument], args: Mapping[str, Any]
) -> dict[str, Any]:
    """``args`` with every declared argument's default filled in and values coerced to the
    declared types; unknown keys and uncoercible values are :class:`BadInputError` naming
    ``owner`` (e.g. ``"init 'pissa'"``, ``"baseline 'o-lora'"``)."""
    unknown = sorted(set(args) - set(arguments))
    if unknown:
        accepted = ", ".join(sorted(arguments)) or "no arguments"
        raise BadInputError(f"{owner} does not take {', '.join(unknown)}: it accepts {accepted}")
    resolved = {}
    for key, spec in arguments.items():
        value = args.get(key, spec.default)
        if spec.type is bool and isinstance(value, str):
            value = parse_bool(value, f"{owner} argument {key}")
        if value is not None and not isinstance(value, spec.type):
            try:
                value = spec.type(value)
            except (TypeError, ValueError):
                raise BadInputError(
                    f"{owner} argument {key}={value!r} is not a {spec.type.__name__}: {spec.help}"
                ) from None
        if spec.choices is not None and value not in spec.choices:
            allowed = ", ".join(map(str, spec.choices))
            raise BadInputError(f"{owner} argument {key}={value!r}: choose one of {allowed}")
        resolved[key] = value
    return resolved


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
