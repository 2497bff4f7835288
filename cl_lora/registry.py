"""A name -> entry registry with close-match errors: the one mechanism for every named kind.

Streams, backbone families, init methods, baselines, plugins and calibration statistics each
keep one :class:`Registry`; an entry is whatever that kind needs, with at least a ``name`` and a
one-line ``description`` (and optionally typed ``arguments``), so ``--list`` can show every kind
the same way::

    FAMILIES: Registry[Family] = Registry("backbone family")
    FAMILIES.add("causal-lm", family)
    FAMILIES.get("causal-lm")          # unknown names: one-line BadInputError with suggestions

A registry given an ``entry_points`` group also loads other installed packages' entries the
first time it is read: an entry point names a module whose import registers its entries, or an
object that the registry's ``adopt`` turns into an entry under the entry point's name.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any, Generic, Protocol, TypeVar

from cl_lora.arguments import defaults_text
from cl_lora.errors import unknown_name


class Named(Protocol):
    name: str
    description: str


T = TypeVar("T", bound=Named)


class Registry(Generic[T]):
    """Entries of one kind (``kind`` names it in error messages), by unique name."""

    def __init__(
        self,
        kind: str,
        entry_points: str | None = None,
        adopt: Callable[[str, Any], None] | None = None,
    ) -> None:
        self.kind = kind
        self.entry_point_group = entry_points
        self._adopt = adopt
        self._entries: dict[str, T] = {}
        self._discovered = entry_points is None

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` as ``name``; a different entry under a taken name is an error."""
        if name in self._entries and not _same(self._entries[name], entry):
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        """The entry called ``name``; unknown names get close-match suggestions."""
        self._discover()
        if name not in self._entries:
            raise unknown_name(self.kind, name, list(self._entries))
        return self._entries[name]

    def available(self) -> list[str]:
        """Every registered name, sorted."""
        self._discover()
        return sorted(self._entries)

    def listing(self, extras: Callable[[T], list[str]] | None = None) -> list[str]:
        """One line per entry for ``--list``: name, description, ``[arguments; extras]``."""
        lines = []
        for entry in self:
            parts = [defaults_text(getattr(entry, "arguments", {}))]
            parts += extras(entry) if extras else []
            shown = "; ".join(part for part in parts if part)
            lines.append(
                f"  {entry.name:<19} {entry.description}" + (f"  [{shown}]" if shown else "")
            )
        return lines

    def __iter__(self) -> Iterator[T]:
        return iter(self._entries[name] for name in self.available())

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._entries

    def _discover(self) -> None:
        """Load the entry-point group once (a broken plugin warns, the built-ins still work)."""
        if self._discovered:
            return
        self._discovered = True
        for entry_point in entry_points(group=self.entry_point_group):
            try:
                loaded = entry_point.load()
            except Exception as error:  # a broken plugin must not take the built-ins down
                warnings.warn(
                    f"{self.kind} plugin '{entry_point.name}' ({entry_point.value}) failed to "
                    f"load: {error}",
                    stacklevel=3,
                )
                continue
            if not isinstance(loaded, ModuleType) and self._adopt is not None:
                self._adopt(entry_point.name, loaded)


def _same(old: Any, new: Any) -> bool:
    """Re-registering the same thing (a module imported twice) is not a conflict."""
    if old is new or old == new:
        return True
    return type(old) is type(new) and getattr(old, "__dict__", None) == getattr(new, "__dict__", 0)
