"""LoRA initialization methods as plugins (the contract and the math: docs/ARCHITECTURE.md).

``get(name)`` returns a callable ``init(weight, rank=r, scale=s, stats=..., **args)`` that
gives :class:`LoRAFactors`; ``register(name, description)`` adds a method; packages add
methods through the ``cl_lora.inits`` entry-point group.
"""

from cl_lora.arguments import Argument
from cl_lora.inits import (  # noqa: F401  (built-ins register on import)
    corda,
    eva,
    intermediate,
    lora,
    lora_dash,
    lora_ga,
    lora_null,
    mica,
    olora,
)
from cl_lora.inits.base import InitMethod, LoRAFactors
from cl_lora.inits.registry import ENTRY_POINT_GROUP, INITS, register

get = INITS.get
available = INITS.available

__all__ = [
    "ENTRY_POINT_GROUP",
    "INITS",
    "Argument",
    "InitMethod",
    "LoRAFactors",
    "available",
    "get",
    "register",
]
