"""A name -> entry registry with close-match errors: the one mechanism for named kinds.

FAMILIES: Registry[Family] = Registry("backbone family")
FAMILIES.add("causal-lm", family)
FAMILIES.get("causal-lm")          # unknown names: one-line BadInputError with suggestions
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from cl_lora.errors import unknown_name

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of one kind (``kind`` names it in error messages), by unique name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise unknown_name(self.kind, name, self.available())
        return self._entries[name]

    def available(self) -> list[str]:
        return sorted(self._entries)

    def __iter__(self) -> Iterator[T]:
        return iter(self._entries[name] for name in self.available())

    def __contains__(self, name: object) -> bool:
        return name in self._entries
