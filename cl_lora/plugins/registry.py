"""The registry of continual-learning plugins (``--plugin NAME``), with their arguments and
one-line descriptions for ``--list``; other packages add plugins through the
``cl_lora.plugins`` entry-point group (a module that registers them on import).

A plugin composes with the suite's own life cycle: a fresh LoRA per task, initialized by any
``--init`` method. It is written as a mixin over the Avalanche plugin it adapts (named by
``extends``, e.g. ``avalanche.training.plugins:LwFPlugin``); :meth:`Plugin.build` composes the
two when a run needs one, so registering and listing plugins never imports Avalanche. The
plugin's arguments are its constructor's keywords.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cl_lora.arguments import Argument, resolve_arguments
from cl_lora.compose import compose, load_object
from cl_lora.errors import BadInputError
from cl_lora.registry import Registry

if TYPE_CHECKING:
    from avalanche.core import SupervisedPlugin


@dataclass(frozen=True)
class Plugin:
    """A continual-learning plugin: ``mixin`` over the Avalanche class ``extends`` names."""

    name: str
    description: str
    mixin: type
    extends: str
    arguments: Mapping[str, Argument] = field(default_factory=dict)

    @property
    def plugin_class(self) -> type[SupervisedPlugin]:
        return compose(self.mixin, load_object(self.extends))

    def resolve_args(self, args: Mapping[str, Any]) -> dict[str, Any]:
        return resolve_arguments(f"plugin '{self.name}'", self.arguments, args)

    def build(self, args: Mapping[str, Any]) -> SupervisedPlugin:
        """A fresh instance (plugins hold per-run state)."""
        return self.plugin_class(**self.resolve_args(args))


PLUGINS: Registry[Plugin] = Registry("plugin", "cl_lora.plugins")


def register_plugin(
    name: str,
    description: str,
    *,
    extends: str,
    arguments: Mapping[str, Argument] | None = None,
) -> Callable[[type], type]:
    """Class decorator: make a plugin mixin over ``extends`` selectable as ``--plugin name``.

    Argument names must be unique across plugins: ``--plugin-arg KEY=VALUE`` goes to the one
    plugin that declares ``KEY``.
    """
    arguments = arguments or {}

    def decorate(mixin: type) -> type:
        for other in PLUGINS:
            if other.name != name and set(other.arguments) & set(arguments):
                raise ValueError(
                    f"plugin '{name}' reuses an argument name of plugin '{other.name}'"
                )
        PLUGINS.add(name, Plugin(name, description, mixin, extends, arguments))
        return mixin

    return decorate


def split_plugin_args(
    plugins: tuple[str, ...], args: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """``--plugin-arg`` pairs routed to the chosen plugin that declares each key, resolved
    (defaults filled in, types coerced). A key no chosen plugin takes is bad input."""
    chosen = [PLUGINS.get(name) for name in plugins]
    routed: dict[str, dict[str, Any]] = {plugin.name: {} for plugin in chosen}
    for key, value in args.items():
        owner = next((p for p in chosen if key in p.arguments), None)
        if owner is None:
            accepted = ", ".join(sorted(k for p in chosen for k in p.arguments)) or "nothing"
            raise BadInputError(
                f"--plugin-arg {key} is taken by none of the chosen plugins "
                f"({', '.join(plugins) or 'no --plugin given'}): they accept {accepted}"
            )
        routed[owner.name][key] = value
    return {plugin.name: plugin.resolve_args(routed[plugin.name]) for plugin in chosen}
