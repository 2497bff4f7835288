"""A language model's knowledge probes: what it keeps of its general abilities across the
stream (``--knowledge``). One registry (:data:`PROBES`, :func:`register_probe`) holds every
named probe; :mod:`.spec` parses the option; :class:`.probe_set.ProbeSet` scores several.

The built-in probes (``closed_book``, ``multiple_choice``, ``arithmetic``) register on import.
"""

from cl_lora.probes import arithmetic, closed_book, multiple_choice  # noqa: F401 (registers)
from cl_lora.probes.probe_set import ProbeSet
from cl_lora.probes.registry import PROBES, Probe, ProbeContext, ProbeKind, register_probe
from cl_lora.probes.spec import HARNESS_PREFIX, KnowledgeSpec, parse_knowledge

__all__ = [
    "HARNESS_PREFIX",
    "PROBES",
    "KnowledgeSpec",
    "Probe",
    "ProbeContext",
    "ProbeKind",
    "ProbeSet",
    "parse_knowledge",
    "register_probe",
]
