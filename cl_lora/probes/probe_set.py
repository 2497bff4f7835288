"""Several knowledge probes scored together (``--knowledge nq-open,mmlu,piqa``).

The run loop sees one probe: the first probe's score is the run's retention curve (as with a
single probe, so a run's ``retention`` entry reads the same whatever else is probed); every
probe keeps its own curve, recorded under ``retention["probes"]``. ``general_ability`` is
TRACE's Delta R^G: the mean over probes of the change of each primary score from before the
stream to after its last task (negative: ability lost).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn

from cl_lora.probes.registry import Probe


class ProbeSet:
    """Probes by name, scored in order; see the module docstring."""

    def __init__(self, probes: dict[str, Probe]) -> None:
        self.probes = probes
        self.curves: dict[str, list[float]] = {name: [] for name in probes}

    def _score_all(self, model: nn.Module, first: bool) -> float:
        for name, probe in self.probes.items():
            self.curves[name].append(probe.start(model) if first else probe.score(model))
        return self.curves[next(iter(self.probes))][-1]

    def start(self, model: nn.Module) -> float:
        return self._score_all(model, first=True)

    def score(self, model: nn.Module) -> float:
        return self._score_all(model, first=False)

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "curves": {name: list(curve) for name, curve in self.curves.items()},
            "probes": {name: probe.checkpoint_state() for name, probe in self.probes.items()},
        }

    def restore_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.curves = {name: list(curve) for name, curve in state["curves"].items()}
        for name, probe in self.probes.items():
            probe.restore_checkpoint_state(state["probes"][name])

    def record(self, curve: Sequence[float]) -> dict[str, Any]:
        records = {name: probe.record(self.curves[name]) for name, probe in self.probes.items()}
        first = next(iter(records.values()))
        changes = [
            r["curve"][-1] - r["curve"][0]
            for r in records.values()
            if len(r["curve"]) >= 2 and None not in (r["curve"][0], r["curve"][-1])
        ]
        return {
            **first,
            "probes": records,
            "general_ability": {
                "delta": float(np.mean(changes)) if len(changes) == len(records) else None,
                "probes": list(records),
            },
        }
