"""Every registry of the suite, in the order ``--list`` shows them: the one place a new kind of
registered thing is added to the listing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cl_lora.registry import Registry

Extras = Callable[[Any], list[str]] | None


def _family_extras(family: Any) -> list[str]:
    return [", ".join(family.aliases)] if family.aliases else []


def _init_extras(method: Any) -> list[str]:
    if not method.needs:
        return []
    return [f"needs {'+'.join(method.needs)} on {'+'.join(method.calibration)}"]


def registries() -> list[tuple[str, Registry[Any], Extras]]:
    """``(title, registry, extras)`` per kind; ``extras(entry)`` adds to an entry's line."""
    from cl_lora.backbones import FAMILIES
    from cl_lora.baselines import BASELINES
    from cl_lora.calibration import STATISTICS
    from cl_lora.inits import INITS
    from cl_lora.plugins import PLUGINS
    from cl_lora.probes import PROBES
    from cl_lora.streams import STREAMS
    from cl_lora.streams.scoring import TEXT_METRICS
    from cl_lora.trackers import TRACKERS

    return [
        ("streams (--stream):", STREAMS, None),
        ("backbone families (--backbone; packaged names in brackets):", FAMILIES, _family_extras),
        ("init methods (--init):", INITS, _init_extras),
        ("baselines (--baseline):", BASELINES, None),
        ("plugins (--plugin, with any --init):", PLUGINS, None),
        ("calibration statistics (what an init's needs name):", STATISTICS, None),
        ("text metrics (how a stream scores a task's generated text):", TEXT_METRICS, None),
        ("knowledge probes (--knowledge, language models):", PROBES, _probe_extras),
        ("experiment trackers (--track):", TRACKERS, None),
    ]


def _probe_extras(probe: Any) -> list[str]:
    return [f"chance {probe.chance}"]
