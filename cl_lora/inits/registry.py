"""The registry of init methods: built-ins register with :func:`register`, other packages
through the ``cl_lora.inits`` entry-point group (an :class:`InitMethod` subclass, registered
under the entry point's name with its docstring's first line as description, or a module whose
import registers its methods)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cl_lora.inits.base import InitMethod
from cl_lora.registry import Registry

ENTRY_POINT_GROUP = "cl_lora.inits"


def _adopt(name: str, loaded: Any) -> None:
    if isinstance(loaded, type) and issubclass(loaded, InitMethod) and "name" not in vars(loaded):
        register(name, (loaded.__doc__ or "").strip().splitlines()[0])(loaded)


INITS: Registry[InitMethod] = Registry("init method", ENTRY_POINT_GROUP, _adopt)


def register(name: str, description: str) -> Callable[[type[InitMethod]], type[InitMethod]]:
    """Class decorator: make an :class:`InitMethod` subclass selectable as ``--init name``."""

    def decorate(cls: type[InitMethod]) -> type[InitMethod]:
        cls.name = name
        cls.description = description
        INITS.add(name, cls())
        return cls

    return decorate
