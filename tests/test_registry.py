"""The one registry mechanism: names, close-match errors, listings and entry-point discovery."""

from __future__ import annotations

import types
from dataclasses import dataclass, field

import pytest

from cl_lora import registry as registry_module
from cl_lora.arguments import Argument
from cl_lora.errors import BadInputError
from cl_lora.registry import Registry


@dataclass(frozen=True)
class Thing:
    name: str
    description: str
    arguments: dict = field(default_factory=dict)


class FakeEntryPoint:
    def __init__(self, name: str, load) -> None:
        self.name, self.value, self.load = name, f"pkg:{name}", load


def test_names_errors_and_listing() -> None:
    things: Registry[Thing] = Registry("thing")
    first = things.add("alpha", Thing("alpha", "the first", {"k": Argument(int, 3, "k")}))
    things.add("alpha", first)  # the same entry again (a module imported twice): fine
    with pytest.raises(ValueError, match="already registered"):
        things.add("alpha", Thing("alpha", "another"))
    with pytest.raises(BadInputError, match="unknown thing 'alpah': did you mean 'alpha'"):
        things.get("alpah")
    assert things.listing() == ["  alpha               the first  [k=3]"]
    assert "alpha" in things and things.available() == ["alpha"]


def test_entry_points_load_modules_and_adopt_objects(monkeypatch) -> None:
    things: Registry[Thing] = Registry(
        "thing", "test.things", adopt=lambda name, obj: things.add(name, Thing(name, obj))
    )

    def load_module():  # a plugin module whose import registers its entries
        things.add("from-module", Thing("from-module", "registered on import"))
        return types.ModuleType("plugin_module")

    def broken():
        raise ImportError("missing dependency")

    points = [
        FakeEntryPoint("from-module", load_module),
        FakeEntryPoint("broken", broken),
        FakeEntryPoint("adopted", lambda: "an object the registry adopts"),
    ]
    monkeypatch.setattr(
        registry_module, "entry_points", lambda group: points if group == "test.things" else []
    )
    with pytest.warns(UserWarning, match="thing plugin 'broken'.*missing dependency"):
        names = things.available()
    assert names == ["adopted", "from-module"]
    assert things.get("adopted").description == "an object the registry adopts"
