"""The registry of a language model's knowledge probes (``--knowledge NAME[,NAME...]``).

A probe measures, before the first task and after each, something the model could do before
the stream and should keep: closed-book question answering, multiple-choice knowledge and
commonsense, arithmetic. Each entry builds the probe for a run from a :class:`ProbeContext`;
other packages add probes through the ``cl_lora.probes`` entry-point group (a module that
registers them on import)::

    @register_probe("my-probe", "what it measures", chance="0.25")
    def my_probe(context: ProbeContext) -> Probe:
        ...
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from cl_lora.registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from cl_lora.problems import TextToText
    from cl_lora.streams import Stream


class Probe(Protocol):
    """What the run loop calls: a score before the first task (:meth:`start`) and after each
    (:meth:`score`), state for a resumed run, and the probe's ``result.json`` entry."""

    def start(self, model: nn.Module) -> float: ...

    def score(self, model: nn.Module) -> float: ...

    def checkpoint_state(self) -> dict[str, Any]: ...

    def restore_checkpoint_state(self, state: dict[str, Any]) -> None: ...

    def record(self, curve: Sequence[float]) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ProbeContext:
    """What a probe is built from: the run's problem (tokenizer, model kind), its stream (a
    probe leaves out its rows that occur in the stream), the number of examples it scores and
    the evaluation batch size."""

    problem: TextToText
    stream: Stream
    size: int
    batch_size: int


@dataclass(frozen=True)
class ProbeKind:
    """A registered probe: ``build`` makes it for a run; ``chance`` is its chance score."""

    name: str
    description: str
    chance: str
    build: Callable[[ProbeContext], Probe]


PROBES: Registry[ProbeKind] = Registry("knowledge probe", "cl_lora.probes")


def register_probe(
    name: str, description: str, *, chance: str
) -> Callable[[Callable[[ProbeContext], Probe]], Callable[[ProbeContext], Probe]]:
    """Decorator: make a probe builder selectable as ``--knowledge name``."""

    def decorate(build: Callable[[ProbeContext], Probe]) -> Callable[[ProbeContext], Probe]:
        PROBES.add(name, ProbeKind(name, description, chance, build))
        return build

    return decorate
