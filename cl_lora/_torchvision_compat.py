"""Let ``import torchvision`` work next to a CPU-only torch.

The only torchvision release that accepts torch 2.13.0 ships a CUDA-linked C extension. On a
CPU-only torch that extension fails to load, torchvision then registers fake kernels for
``torchvision::nms``/``qnms`` anyway, and the import dies with
``operator torchvision::nms does not exist`` -- taking transformers, timm and avalanche with it.

This module runs before anything imports torchvision. It acts only when the extension really
cannot be loaded: it then defines the two missing operator schemas (no kernels), so the import
succeeds and torchvision's pure-Python parts work. Detection ops (``nms`` itself) stay
unavailable, and cl-lora never calls them.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library: torch.library.Library | None = None  # kept alive: dropping it removes the schemas


def _extension_loads(spec: importlib.machinery.ModuleSpec) -> bool:
    for location in spec.submodule_search_locations or []:
        for candidate in Path(location).glob("_C*.so"):
            try:
                torch.ops.load_library(str(candidate))
                return True
            except (OSError, RuntimeError):
                return False
    return True  # no compiled extension to speak of: nothing to repair


def install() -> None:
    """Define torchvision's missing op schemas if (and only if) its extension cannot load."""
    global _library
    if _library is not None or "torchvision" in sys.modules:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or _extension_loads(spec):
        return
    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS.values():
        _library.define(schema)


install()
