"""``--knowledge``: which probes a language-model run scores.

A comma-separated list of registered probe names (``nq-open,mmlu,piqa``), optionally ending in
lm-evaluation-harness tasks: from the first item that starts with ``lm-eval:`` on, every item is
a harness task (``nq-open,mmlu,lm-eval:triviaqa,webqs``). Leaving it out, or ``nq-open`` alone,
is the default probe, NQ-open.
"""

from __future__ import annotations

from dataclasses import dataclass

from cl_lora.errors import BadInputError
from cl_lora.probes.registry import PROBES

HARNESS_PREFIX = "lm-eval:"


@dataclass(frozen=True)
class KnowledgeSpec:
    """Registered probes and harness tasks, each in the order given."""

    probes: tuple[str, ...]
    harness: tuple[str, ...]


def parse_knowledge(spec: str | None) -> KnowledgeSpec | None:
    """The probes ``spec`` names (``None``: the default NQ-open probe alone); an unknown probe
    or an empty list is one line naming the choices."""
    if spec is None or spec.strip() == "nq-open":
        return None
    items = [item.strip() for item in spec.split(",") if item.strip()]
    probes: list[str] = []
    harness: list[str] = []
    for index, item in enumerate(items):
        if item.startswith(HARNESS_PREFIX):
            rest = [item, *items[index + 1 :]]
            harness = [task.removeprefix(HARNESS_PREFIX) for task in rest]
            break
        PROBES.get(item)  # unknown: a one-line error with close matches
        probes.append(item)
    if not probes and not any(harness):
        raise BadInputError(
            f"--knowledge '{spec}' names no probe: give probe names "
            f"({', '.join(PROBES.available())}) and/or lm-eval:TASK[,TASK...]"
        )
    if len(set(probes)) != len(probes):
        raise BadInputError(f"--knowledge '{spec}' names a probe twice: name each once")
    return KnowledgeSpec(tuple(probes), tuple(task for task in harness if task))
