"""Plain data and tensors in one safetensors file: a checkpoint that loading cannot execute.

``torch.load(weights_only=False)`` runs whatever a pickle says, so resuming from a run folder on
a shared disk would run any code written there. Here a state is nested plain data (``None``,
bool, int, float, str, list, tuple, set, dict) with tensors and NumPy arrays as leaves: the
tensors go into the file's tensor table, the rest into its JSON metadata with a reference per
tensor. A SHA-256 of every tensor's bytes, kept in the metadata, makes a changed or truncated
file fail on load with one line instead of resuming from wrong numbers.

Written with ``safetensors`` (PyTorch's ecosystem format for weights) rather than a format of
our own; only the encoding of the non-tensor part is ours.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "cl-lora-state/1"


class DamagedStateError(Exception):
    """The file is not a complete, unchanged state written by :func:`save_state`."""


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """``value`` as JSON-ready data; its tensors move into ``tensors`` under numbered keys."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):  # uint32 (NumPy's RNG state) travels as int64
        key = f"t{len(tensors)}"
        wide = value.astype(np.int64) if value.dtype == np.uint32 else value.copy()
        tensors[key] = torch.from_numpy(np.ascontiguousarray(wide))
        return {"__ndarray__": key, "dtype": str(value.dtype)}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if isinstance(value, set | frozenset):
        return {"__set__": [_encode(v, tensors) for v in sorted(value)]}
    if isinstance(value, dict):
        return {"__dict__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    raise TypeError(f"cannot store a {type(value).__name__} (plain data and tensors only)")


def _decode(value: Any, tensors: dict[str, torch.Tensor], device: torch.device | str) -> Any:
    def decode(inner: Any) -> Any:
        return _decode(inner, tensors, device)

    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]].to(device)
    if "__ndarray__" in value:
        return tensors[value["__ndarray__"]].numpy().astype(value["dtype"])
    if "__tuple__" in value:
        return tuple(decode(v) for v in value["__tuple__"])
    if "__set__" in value:
        return {decode(v) for v in value["__set__"]}
    return {decode(k): decode(v) for k, v in value["__dict__"]}


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key]
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def save_state(path: Path, state: Any) -> int:
    """Write ``state`` to ``path`` atomically (a temporary file, then a rename); returns the
    number of bytes written. Raises ``TypeError`` naming the first value that is not plain
    data or a tensor (nothing is written then)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    encoded = _encode(state, tensors)
    metadata = {"format": FORMAT, "state": json.dumps(encoded), "sha256": _digest(tensors)}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path.stat().st_size


def load_state(path: Path, device: torch.device | str = "cpu") -> Any:
    """The state :func:`save_state` wrote to ``path``, tensors on ``device``.

    Raises :class:`DamagedStateError` (one line) for a file that is truncated, changed after it
    was written, or not such a state.
    """
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DamagedStateError(f"{path} cannot be read ({reason})") from None
    if metadata.get("format") != FORMAT:
        raise DamagedStateError(f"{path} is not a cl-lora state (format {metadata.get('format')})")
    if metadata.get("sha256") != _digest(tensors):
        raise DamagedStateError(f"{path} does not match its checksum (changed or damaged)")
    try:
        encoded = json.loads(metadata["state"])
    except (KeyError, json.JSONDecodeError) as error:
        raise DamagedStateError(f"{path} has an unreadable state ({error})") from None
    return _decode(encoded, tensors, device)
