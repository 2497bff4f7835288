"""The run result file: schema, environment record, atomic writing, reading.

One run is one folder: ``result.json`` (the record the leaderboard reads) plus two human views,
``matrix.csv`` and ``heatmap.png``. All three are rendered to temporary files in the run folder
first and then moved into place with ``os.replace``, ``result.json`` last, so a folder with a
``result.json`` holds a complete run and a crash leaves either the old files or the new ones.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path, PurePath
from typing import Any, BinaryIO

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

SCHEMA_VERSION = 1
RESULT_FILE = "result.json"

_LIBRARIES = (
    "torch",
    "torchvision",
    "transformers",
    "peft",
    "avalanche-lib",
    "datasets",
    "timm",
    "numpy",
    "pandas",
    "scikit-learn",
    "scipy",
)


def environment() -> dict[str, Any]:
    """What a run needs to be reproduced: Python, platform, library versions, git commit.

    Library versions come from installed metadata (``None`` when not installed), so nothing
    heavy is imported. ``git_commit`` is the commit of the cl_lora checkout, with ``+dirty``
    when tracked files have uncommitted changes (untracked files, such as run folders, do not
    count), or ``None`` when cl_lora is not run from a git checkout.
    """
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": {name: _version(name) for name in _LIBRARIES},
        "git_commit": _git_commit(),
    }


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit(root: Path | None = None) -> str | None:
    """The commit of the checkout at ``root`` (cl_lora's by default), ``+dirty`` when tracked
    files differ from it; ``None`` when ``root`` is not the top of a git checkout."""
    root = root.resolve() if root else Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True
        )
        return done.stdout

    try:
        toplevel, commit = git("rev-parse", "--show-toplevel", "HEAD").split()
        # An installed copy inside some other repository (e.g. a venv in a checkout) is no
        # checkout of cl_lora: its commit would be someone else's.
        if Path(toplevel).resolve() != root:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no").strip()
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def to_jsonable(obj: Any) -> Any:
    """Return ``obj`` as plain JSON data: NaN/inf become ``None`` (JSON null), numpy scalars
    and arrays become Python numbers and lists, paths become strings; dicts, lists and tuples
    are converted recursively. Anything else is returned as is (``json`` rejects it loudly).
    """
    if isinstance(obj, Mapping):
        return {key: to_jsonable(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(value) for value in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, PurePath):
        return str(obj)
    return obj


def matrix_array(result: Mapping[str, Any]) -> np.ndarray:
    """The accuracy matrix of a result as a float array, NaN where not evaluated (null)."""
    return np.array(result["matrix"], dtype=float)


def write_run(run_dir: Path, result: dict[str, Any]) -> Path:
    """Write ``result`` into ``run_dir`` atomically; return the path of ``result.json``.

    ``result`` needs ``matrix`` (T x T, NaN/None where not evaluated) and ``tasks`` (T dicts
    with a ``name``); ``stream`` and ``method`` (or ``init``; dicts with a ``name``) title the
    heatmap.
    ``schema_version`` is added if absent. All three files are rendered to temporaries in
    ``run_dir`` before any is moved into place (``result.json`` last), so an error while
    rendering leaves the folder as it was; every temporary is removed on any error.
    """
    run_dir = Path(run_dir)
    data = to_jsonable({"schema_version": SCHEMA_VERSION, **result})
    if data["schema_version"] != SCHEMA_VERSION:
        raise ValueError(
            f"result has schema_version {data['schema_version']!r}; this cl_lora writes "
            f"version {SCHEMA_VERSION}"
        )
    matrix = matrix_array(data)
    names = _task_names(data, matrix)
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"

    frame = pd.DataFrame(matrix, index=[f"after {name}" for name in names], columns=names)
    run_dir.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        for name, write in (
            ("matrix.csv", lambda fh: fh.write(frame.to_csv(na_rep="").encode())),
            ("heatmap.png", lambda fh: _render_heatmap(data, matrix, names, fh)),
            (RESULT_FILE, lambda fh: fh.write(text.encode())),
        ):
            staged.append((_stage(run_dir, name, write), run_dir / name))
        for temp, final in staged:
            os.replace(temp, final)
    finally:
        for temp, _ in staged:
            temp.unlink(missing_ok=True)
    return run_dir / RESULT_FILE


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically (a reader sees the old file or the new)."""
    write_atomic(path, (json.dumps(to_jsonable(data), indent=2, allow_nan=False) + "\n").encode())


def write_atomic(path: Path, content: bytes) -> None:
    """Write ``content`` to ``path`` through a temporary file and ``os.replace``."""
    os.replace(_stage(path.parent, path.name, lambda fh: fh.write(content)), path)


def replace_folder(staging: Path, folder: Path) -> None:
    """Move the finished ``staging`` folder to ``folder`` (on the same file system), replacing
    an older one: a reader sees the old folder or the new one, never a half-written one."""
    if folder.exists():
        old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.old."))
        os.replace(folder, old / folder.name)
        os.replace(staging, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, folder)


def _task_names(data: Mapping[str, Any], matrix: np.ndarray) -> list[str]:
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"result matrix must be square T x T, got shape {matrix.shape}")
    tasks = data.get("tasks") or [{"name": f"task {j}"} for j in range(matrix.shape[0])]
    if len(tasks) != matrix.shape[0]:
        raise ValueError(f"result has {len(tasks)} tasks but a {matrix.shape[0]}-row matrix")
    return [str(task["name"]) for task in tasks]


def _stage(run_dir: Path, name: str, write: Callable[[BinaryIO], object]) -> Path:
    """Write a temporary file next to ``run_dir / name`` (flushed to disk); return its path."""
    fd, temp = tempfile.mkstemp(dir=run_dir, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        os.unlink(temp)
        raise
    return Path(temp)


def _render_heatmap(
    data: Mapping[str, Any], matrix: np.ndarray, names: list[str], fh: BinaryIO
) -> None:
    """Draw the run's accuracy matrix as an annotated heatmap PNG into ``fh``; beside it, when
    the run scored several knowledge probes, each probe's curve over the stream."""
    side = 2.5 + 0.7 * matrix.shape[0]
    probes = (data.get("retention") or {}).get("probes")
    fig = Figure(figsize=(side + 1.0 + (side if probes else 0), side), layout="constrained")
    axes = fig.subplots(1, 2 if probes else 1, squeeze=False)[0]
    method = _name(data.get("method")) or _name(data.get("init"))  # a baseline's, else the init
    title = " / ".join(n for n in (_name(data.get("stream")), method) if n)
    draw_matrix(fig, axes[0], matrix, names, title or "accuracy matrix")
    if probes:
        draw_probe_curves(axes[1], probes, names)
    fig.savefig(fh, format="png", dpi=100)


def draw_probe_curves(ax: Any, probes: Mapping[str, Any], names: list[str]) -> None:
    """Each knowledge probe's primary score before the stream and after each task, its chance
    level dashed in the same colour."""
    steps = ["before", *names]
    for index, (name, probe) in enumerate(probes.items()):
        colour = f"C{index % 10}"
        curve = [np.nan if v is None else v for v in probe["curve"]]
        ax.plot(range(len(curve)), curve, marker="o", color=colour, label=name)
        chance = probe.get("chance")
        if chance is not None:
            ax.axhline(float(chance), color=colour, linestyle="--", linewidth=0.8)
    ax.set_xticks(range(len(steps)), steps, rotation=45, ha="right")
    ax.set_ylabel("probe score (dashed: chance)")
    ax.set_title("general abilities after each task")
    ax.legend(fontsize=7)


MATRIX_COLORMAP = "viridis"  # an accuracy matrix's colours, in figures and on the leaderboard site


def matrix_scale(matrix: np.ndarray) -> tuple[float, float]:
    """The colour range of an accuracy matrix: 0 to 1, widened to hold every evaluated cell
    (a cell is drawn light, with dark text, from the middle of the range up)."""
    finite = matrix[np.isfinite(matrix)]
    vmin = min(0.0, float(finite.min())) if finite.size else 0.0
    vmax = max(1.0, float(finite.max())) if finite.size else 1.0
    return vmin, vmax


def draw_matrix(
    fig: Figure, ax: Any, matrix: np.ndarray, names: list[str], title: str, fontsize: int = 8
) -> None:
    """Draw an accuracy matrix on ``ax`` as an annotated heatmap with a colour bar (cells that
    were not evaluated in grey); the run's heatmap and the leaderboard's share it."""
    T = matrix.shape[0]
    vmin, vmax = matrix_scale(matrix)
    colormap = matplotlib.colormaps[MATRIX_COLORMAP].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=colormap, vmin=vmin, vmax=vmax)
    fig.colorbar(image, ax=ax, label="score")
    for i in range(T):
        for j in range(T):
            if np.isfinite(matrix[i, j]):
                dark = (matrix[i, j] - vmin) / (vmax - vmin) < 0.5
                ax.text(
                    j,
                    i,
                    f"{matrix[i, j]:.2f}",
                    ha="center",
                    va="center",
                    color="white" if dark else "black",
                    fontsize=fontsize,
                )
    ax.set_xticks(range(T), names, rotation=45, ha="right")
    ax.set_yticks(range(T), [f"after {name}" for name in names])
    ax.set_xlabel("evaluated on")
    ax.set_title(title)


def _name(part: Any) -> str | None:
    """The name of a stream/init entry, given as a dict with ``name`` or as a plain string."""
    if isinstance(part, Mapping):
        part = part.get("name")
    return None if part is None else str(part)


def load_run(path: Path | str) -> dict[str, Any]:
    """Read a run's ``result.json`` (``path`` is the file or its run folder).

    Returns the dict as stored (null where a value is undefined; ``matrix_array`` gives the
    matrix with NaN). Raises ``ValueError`` if the file's schema version is not one this
    cl_lora reads.
    """
    path = Path(path)
    if path.is_dir():
        path = path / RESULT_FILE
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != SCHEMA_VERSION:
        raise ValueError(
            f"{path}: schema_version {version!r} is not supported (this cl_lora reads "
            f"{SCHEMA_VERSION}); re-run it or use the cl_lora version that wrote it"
        )
    return data


def trained_lr(result: Mapping[str, Any]) -> float | None:
    """The adapter learning rate a run's stream trained at, as every reader should show it:
    ``lr_trained``; in files written before that field, the searched rate
    (``lr_search.chosen``) or else ``config.lr``. ``config.lr`` alone is not it: it keeps
    the default when the rate was searched, because it is what the run id hashes."""
    if result.get("lr_trained") is not None:
        return float(result["lr_trained"])
    chosen = (result.get("lr_search") or {}).get("chosen")
    if chosen is not None:
        return float(chosen)
    lr = (result.get("config") or {}).get("lr")
    return None if lr is None else float(lr)


def method_label(config: Mapping[str, Any]) -> str:
    """What a run trains, in one word: its baseline or init method, then its plugins joined
    with ``+`` (``lora``, ``seq-ft``, ``pissa+replay``)."""
    base = _name(config.get("baseline")) or _name(config.get("init")) or "none"
    return "+".join([base, *(config.get("plugins") or [])])


def new_run_id(config: Mapping[str, Any]) -> str:
    """A short id that is the same for the same resolved config: the run's folder name.

    ``<stream>-<method>-s<seed>-<hash>``, the method being :func:`method_label` (the init for
    the suite's own method), the hash being the first 8 hex digits of the SHA-256 of the
    config's canonical JSON (sorted keys, no whitespace), so a sweep can tell which configs
    already ran. ``stream`` and ``init`` may be names or dicts with a ``name``.
    """
    missing = [key for key in ("stream", "init", "seed") if key not in config]
    if missing:  # init must be there even when None (a baseline without an init method)
        raise ValueError(f"config needs 'stream', 'init' and 'seed'; {missing} is missing")
    stream, seed = _name(config["stream"]), config["seed"]
    canonical = json.dumps(
        to_jsonable(config), sort_keys=True, separators=(",", ":"), allow_nan=False
    )
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:8]
    return "-".join(_slug(part) for part in (stream, method_label(config), f"s{seed}", digest))


def _slug(text: str | None) -> str:
    """``text`` made safe for a folder name (anything but letters, digits, ``._-`` -> ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text))
