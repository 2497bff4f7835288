"""Classes composed on first use: a registered strategy or plugin is written as a small mixin
over a heavy library class (Avalanche's template or plugin), and ``compose`` builds
``class Mixin(Base)`` when a run needs it. Registering and listing (``--list``) then never
import that library."""

from __future__ import annotations

import functools
import importlib


@functools.cache
def compose(mixin: type, base: type) -> type:
    """``mixin`` applied over ``base`` (the same class object on every call)."""
    namespace = {
        "__module__": mixin.__module__,
        "__qualname__": mixin.__qualname__,
        "__doc__": mixin.__doc__,
    }
    return type(mixin.__name__, (mixin, base), namespace)


def load_object(path: str) -> object:
    """``"package.module:Name"`` -> that object (imported now)."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)
