"""The registry of baselines (``--baseline NAME``), with their arguments and one-line
descriptions for ``--list``; other packages add baselines through the ``cl_lora.baselines``
entry-point group (a module that registers them on import).

A baseline is a small variation on :class:`cl_lora.strategy.LoRAStrategy` that overrides one
of its hooks (which heads train, how the encoder is prepared per task, which statistics the init
reads, the loss), written as a mixin class: :attr:`Baseline.strategy` composes it over
``LoRAStrategy`` when a run needs it, so registering and listing baselines never imports
Avalanche. Inside a mixin, ``super()`` reaches ``LoRAStrategy``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cl_lora.arguments import Argument, resolve_arguments
from cl_lora.compose import compose
from cl_lora.errors import BadInputError
from cl_lora.registry import Registry

if TYPE_CHECKING:
    from cl_lora.strategy import LoRAStrategy

#: How ``R`` is filled when a baseline does not say otherwise.
SEQUENTIAL_MATRIX = "every task is evaluated after each task is trained (rows 0..T-1)"


@dataclass(frozen=True)
class Baseline:
    """A selectable baseline strategy.

    ``uses_init``: whether the baseline attaches a LoRA initialized by ``--init`` (otherwise
    ``--init``, ``--init-arg`` and ``--calib`` are rejected and the result records no init).
    :attr:`strategy` is built with the suite's strategy arguments plus the resolved
    ``arguments`` as keywords.
    """

    name: str
    description: str
    mixin: type
    uses_init: bool = True
    arguments: Mapping[str, Argument] = field(default_factory=dict)
    matrix: str = SEQUENTIAL_MATRIX
    #: problem kind -> why the baseline means nothing there (it refuses such streams)
    refuses: Mapping[str, str] = field(default_factory=dict)
    #: why the baseline leaves no LoRA adapter to save (``--save-adapters`` refuses it)
    no_adapter: str | None = None

    @property
    def strategy(self) -> type[LoRAStrategy]:
        """The strategy class: the baseline's mixin over ``LoRAStrategy``."""
        from cl_lora.strategy import LoRAStrategy

        return compose(self.mixin, LoRAStrategy)

    def check_problem(self, problem: str) -> None:
        """One line of bad input when the baseline has no meaning for ``problem``."""
        if problem in self.refuses:
            raise BadInputError(
                f"--baseline {self.name} does not apply to {problem} streams: "
                f"{self.refuses[problem]}"
            )

    def resolve_args(self, args: Mapping[str, Any]) -> dict[str, Any]:
        return resolve_arguments(f"baseline '{self.name}'", self.arguments, args)


BASELINES: Registry[Baseline] = Registry("baseline", "cl_lora.baselines")


def register(
    name: str,
    description: str,
    *,
    uses_init: bool = True,
    arguments: Mapping[str, Argument] | None = None,
    matrix: str = SEQUENTIAL_MATRIX,
    refuses: Mapping[str, str] | None = None,
    no_adapter: str | None = None,
) -> Callable[[type], type]:
    """Class decorator: make a strategy mixin selectable as ``--baseline name``."""

    def decorate(cls: type) -> type:
        BASELINES.add(
            name,
            Baseline(
                name,
                description,
                cls,
                uses_init,
                arguments or {},
                matrix,
                refuses or {},
                no_adapter,
            ),
        )
        return cls

    return decorate
