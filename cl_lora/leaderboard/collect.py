"""Read every ``result.json`` under a folder into one table of runs (one row per run).

Only result files are read. A file that cannot be used — unreadable JSON, another
schema version, missing fields, a matrix that does not fit its task list, or a task list that
differs from the other runs of the same stream — is skipped with a warning that names it, so
one bad folder never hides the rest.

Runs are grouped by (stream, scenario, backbone, method): the method is the baseline or init
with its arguments and plugins. A run whose other settings (rank, epochs, budget, ...) differ
from those of most runs of its stream gets them appended to its method name (``lora
[rank=16]``), so runs with different settings are never averaged together. The same holds for
the backbone's weights: a run whose weights fingerprint (``backbone.fingerprint``, a hash of the
weights as loaded) differs from the most common one of its stream gets ``[weights=<hash>]``;
files from before fingerprints were recorded match any.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cl_lora.config import ADDED_SETTINGS, UNHASHED_SETTINGS, without_added_arguments
from cl_lora.metrics import summarize
from cl_lora.results import RESULT_FILE, load_run, matrix_array, trained_lr

GROUP = ["stream", "scenario", "backbone", "method"]
_MATRIX_METRICS = ["acc", "acc_pooled", "avg_incremental_acc", "bwt", "forgetting", "learning_acc"]
METRICS = [*_MATRIX_METRICS, "retention_drop", "general_ability", "trainable_params", "wall_s"]
#: Metrics only some runs have (several knowledge probes): shown where a stream's runs do.
OPTIONAL_METRICS = {"general_ability"}

# Config fields that name the method (they make up the method's name) or the group, and
# fields that do not change what is trained (where it ran, where the data lies).
_METHOD_FIELDS = {"init", "init_args", "baseline", "baseline_args", "plugins", "plugin_args"}
_NOT_SETUP = _METHOD_FIELDS | {"stream", "scenario", "backbone", "seed", "device", "data_dir"}
_NOT_SETUP |= {"gradient_checkpointing"}  # recomputes activations: the same training
_NOT_SETUP |= UNHASHED_SETTINGS  # what a run writes besides its results
_REQUIRED = ("config", "stream", "tasks", "matrix", "seed", "backbone", "timings")
_ABSENT = object()
_EXTRA = ["matrix", "tasks", "retention", "loglik_drop", "init", "init_args", "lr", "setup"]


@dataclass
class Runs:
    """The usable runs (``table``: one row per run) and the files skipped, with why."""

    table: pd.DataFrame
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def collect_runs(runs_dir: Path) -> Runs:
    """Every usable run under ``runs_dir`` (searched recursively), in path order.

    ``table`` has the :data:`GROUP` columns, ``seed``, ``run_id``, ``path``, every metric of
    :data:`METRICS`, ``lr`` (the adapter rate the run trained at, searched or not:
    :func:`~cl_lora.results.trained_lr`), and for plotting ``matrix`` (array), ``tasks``
    (names), ``retention`` (curve, or None), ``init``/``init_args``.
    """
    rows: list[dict[str, Any]] = []
    skipped: list[tuple[Path, str]] = []
    for path in sorted(Path(runs_dir).rglob(RESULT_FILE)):
        try:
            rows.append(_row(path, load_run(path)))
        except (ValueError, KeyError, TypeError, json.JSONDecodeError, OSError) as error:
            skipped.append((path, _reason(error)))
    rows, mismatched = _drop_mismatched_tasks(rows)
    skipped += mismatched
    _name_setups(rows)
    _name_weights(rows)
    table = pd.DataFrame(rows, columns=[*GROUP, "seed", "run_id", "path", *METRICS, *_EXTRA])
    return Runs(table.drop(columns="setup"), sorted(skipped))


def _reason(error: Exception) -> str:
    if isinstance(error, KeyError):
        return f"missing field {error}"
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _row(path: Path, result: Mapping[str, Any]) -> dict[str, Any]:
    missing = [key for key in _REQUIRED if key not in result]
    if missing:
        raise ValueError(f"incomplete result: missing {', '.join(missing)}")
    config, stream = result["config"], result["stream"]
    matrix = matrix_array(result)
    tasks = [str(task["name"]) for task in result["tasks"]]
    if matrix.ndim != 2 or matrix.shape != (len(tasks), len(tasks)):
        raise ValueError(f"matrix of shape {matrix.shape} does not fit its {len(tasks)} tasks")
    if np.all(np.isnan(matrix[-1])):
        raise ValueError("incomplete result: the last row of the matrix is empty")
    before = result.get("before")
    sizes = [task.get("test_size") for task in result["tasks"]]
    metrics = summarize(
        matrix,
        None if before is None else np.array(before, dtype=float),
        None if None in sizes else sizes,
    )
    retention = result.get("retention") or {}  # files from before the probe have none
    curve = retention.get("curve")
    trainable = result.get("trainable_params") or []
    return {
        "stream": stream["name"],
        "scenario": stream.get("scenario"),
        "backbone": result["backbone"]["name"],
        "method": method_name(config),
        "seed": int(result["seed"]),
        "run_id": result.get("run_id", path.parent.name),
        "path": path,
        **{key: metrics[key] for key in _MATRIX_METRICS},
        "retention_drop": retention.get("drop"),
        # TRACE's Delta R^G: the mean change of the knowledge probes (several --knowledge)
        "general_ability": (retention.get("general_ability") or {}).get("delta"),
        "trainable_params": max(trainable) if trainable else None,
        "wall_s": result["timings"].get("total_s"),
        "matrix": matrix,
        "tasks": tasks,
        "retention": None if curve is None else np.array(curve, dtype=float),
        "loglik_drop": (retention.get("gold_loglik") or {}).get("drop"),  # language models
        "init": config.get("init"),
        "init_args": config.get("init_args") or {},
        "lr": trained_lr(result),  # as trained: the searched rate when searched
        "fingerprint": result["backbone"].get("fingerprint"),
        "setup": {
            key: value
            for key, value in config.items()
            if key not in _NOT_SETUP and ADDED_SETTINGS.get(key, _ABSENT) != value
        },  # settings added later count only when set: earlier files do not have them
    }


def method_name(config: Mapping[str, Any]) -> str:
    """The method a run trains, with its arguments: ``lora``, ``intermediate(f=0.25)``,
    ``o-lora(lambda_orth=0.5,lambda_l2=0.0)``, ``seq-lora(init=pissa)``,
    ``lora+replay(mem_size=200)`` (plugin arguments last). Unset (None) arguments are left
    out."""
    baseline = config.get("baseline")
    args = dict(config.get("baseline_args") or {}) if baseline else {}
    init_args = without_added_arguments(config.get("init_args") or {})
    if not baseline or config.get("init") not in (None, "lora") or init_args:
        if baseline:
            args["init"] = config.get("init")
        args.update(init_args)
    label = (baseline or config.get("init") or "none") + _args(args)
    plugins = config.get("plugins") or []
    return "+".join([label, *plugins]) + (_args(config.get("plugin_args") or {}) if plugins else "")


def _args(args: Mapping[str, Any]) -> str:
    shown = [f"{key}={value}" for key, value in args.items() if value is not None]
    return f"({','.join(shown)})" if shown else ""


def _drop_mismatched_tasks(
    rows: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[tuple[Path, str]]]:
    """Keep, per (stream, scenario, backbone), the runs whose task list is the most common."""
    common = _most_common_per_stream(rows, lambda row: tuple(row["tasks"]))
    kept, skipped = [], []
    for row in rows:
        usual = common[_stream_key(row)]
        if tuple(row["tasks"]) == usual:
            kept.append(row)
        else:
            reason = (
                f"incompatible: tasks {row['tasks']} differ from the other {row['stream']} "
                f"runs' {list(usual)}"
            )
            skipped.append((row["path"], reason))
    return kept, skipped


def _name_setups(rows: list[dict[str, Any]]) -> None:
    """Append to each run's method the settings in which it differs from most runs of its
    (stream, scenario, backbone)."""
    usual = {
        key: json.loads(text) for key, text in _most_common_per_stream(rows, _setup_text).items()
    }
    for row in rows:
        common = usual[_stream_key(row)]
        names = sorted(set(row["setup"]) | set(common))  # a setting only one side has differs
        differs = [
            f"{name}={_plain(row['setup'].get(name))}"
            for name in names
            if _plain(common.get(name)) != _plain(row["setup"].get(name))
        ]
        if differs:
            row["method"] += f" [{', '.join(differs)}]"


def _name_weights(rows: list[dict[str, Any]]) -> None:
    """Append ``[weights=<hash>]`` to the method of each run whose backbone fingerprint differs
    from the most common fingerprint of its (stream, scenario, backbone); runs without one (older
    files) are left as they are."""
    known = [row for row in rows if row["fingerprint"]]
    usual = _most_common_per_stream(known, lambda row: row["fingerprint"])
    for row in known:
        if row["fingerprint"] != usual[_stream_key(row)]:
            row["method"] += f" [weights={row['fingerprint'][:8]}]"


def _setup_text(row: Mapping[str, Any]) -> str:
    return json.dumps(row["setup"], sort_keys=True, default=str)


def _plain(value: Any) -> Any:
    """Lists and tuples compare equal (JSON has only lists)."""
    return list(value) if isinstance(value, tuple) else value


def _stream_key(row: Mapping[str, Any]) -> tuple:
    return row["stream"], row["scenario"], row["backbone"]


def _most_common_per_stream(
    rows: list[dict[str, Any]], value: Callable[[Mapping[str, Any]], Hashable]
) -> dict[tuple, Hashable]:
    """Per (stream, scenario, backbone), the most common ``value(row)`` (ties: the first seen,
    and rows come in path order, so the choice is stable)."""
    counts: dict[tuple, Counter] = {}
    for row in rows:
        counts.setdefault(_stream_key(row), Counter())[value(row)] += 1
    return {key: counter.most_common(1)[0][0] for key, counter in counts.items()}
