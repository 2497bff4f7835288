"""The registry of init methods: built-ins register with a decorator, other packages through
the ``cl_lora.inits`` entry-point group (discovered on first lookup)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from importlib.metadata import entry_points

from cl_lora.errors import unknown_name
from cl_lora.inits.base import InitMethod

ENTRY_POINT_GROUP = "cl_lora.inits"
_REGISTRY: dict[str, InitMethod] = {}
_entry_points_loaded = False


def register(name: str, description: str) -> Callable[[type[InitMethod]], type[InitMethod]]:
    """Class decorator: make an :class:`InitMethod` subclass selectable as ``--init name``."""

    def decorate(cls: type[InitMethod]) -> type[InitMethod]:
        if name in _REGISTRY and type(_REGISTRY[name]) is not cls:
            raise ValueError(f"init method '{name}' is already registered")
        cls.name = name
        cls.description = description
        _REGISTRY[name] = cls()
        return cls

    return decorate


def _load_entry_points() -> None:
    """Import every installed plugin once.

    An entry point names either an :class:`InitMethod` subclass, registered under the entry
    point's name with its docstring's first line as description, or a module whose import
    registers its methods with :func:`register`.
    """
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = entry_point.load()
        except Exception as error:  # a broken plugin must not take the built-ins down with it
            warnings.warn(
                f"init plugin '{entry_point.name}' ({entry_point.value}) failed to load: {error}",
                stacklevel=2,
            )
            continue
        is_method = isinstance(loaded, type) and issubclass(loaded, InitMethod)
        if is_method and "name" not in vars(loaded):  # not registered by a decorator yet
            register(entry_point.name, (loaded.__doc__ or "").strip().splitlines()[0])(loaded)


def available() -> list[str]:
    """Names of all registered init methods, built-in and plugins."""
    _load_entry_points()
    return sorted(_REGISTRY)


def get(name: str) -> InitMethod:
    """The init method called ``name``; unknown names get close-match suggestions."""
    _load_entry_points()
    if name not in _REGISTRY:
        raise unknown_name("init method", name, list(_REGISTRY))
    return _REGISTRY[name]
