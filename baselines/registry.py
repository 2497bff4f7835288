"""The registry of baselines (``--baseline NAME``) and of continual-learning plugins
(``--plugin NAME``), with their arguments and one-line descriptions for ``--list``.

A baseline is a strategy class: a small variation on :class:`cl_lora.strategy.LoRAStrategy`
that overrides one of its hooks (which heads train, how the encoder is prepared per task, which
statistics the init reads, the loss). A plugin is an Avalanche plugin factory that composes with
the suite's own life cycle: a fresh LoRA per task, initialized by any ``--init`` method.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from avalanche.core import SupervisedPlugin

from cl_lora.errors import BadInputError, unknown_name
from cl_lora.inits import Argument
from cl_lora.inits.base import resolve_arguments
from cl_lora.strategy import LoRAStrategy

#: How ``R`` is filled when a baseline does not say otherwise.
SEQUENTIAL_MATRIX = "every task is evaluated after each task is trained (rows 0..T-1)"


@dataclass(frozen=True)
class Baseline:
    """A selectable baseline strategy.

    ``uses_init``: whether the baseline attaches a LoRA initialized by ``--init`` (otherwise
    ``--init``, ``--init-arg`` and ``--calib`` are rejected and the result records no init).
    ``strategy`` is built with the suite's strategy arguments plus the resolved ``arguments``
    as keywords.
    """

    name: str
    description: str
    strategy: type[LoRAStrategy]
    uses_init: bool = True
    arguments: Mapping[str, Argument] = field(default_factory=dict)
    matrix: str = SEQUENTIAL_MATRIX
    #: problem kind -> why the baseline means nothing there (it refuses such streams)
    refuses: Mapping[str, str] = field(default_factory=dict)

    def check_problem(self, problem: str) -> None:
        """One line of bad input when the baseline has no meaning for ``problem``."""
        if problem in self.refuses:
            raise BadInputError(
                f"--baseline {self.name} does not apply to {problem} streams: "
                f"{self.refuses[problem]}"
            )

    def resolve_args(self, args: Mapping[str, Any]) -> dict[str, Any]:
        return resolve_arguments(f"baseline '{self.name}'", self.arguments, args)


@dataclass(frozen=True)
class Plugin:
    """A continual-learning plugin: ``factory(**resolved_args)`` builds a fresh instance."""

    name: str
    description: str
    factory: Callable[..., SupervisedPlugin]
    arguments: Mapping[str, Argument] = field(default_factory=dict)

    def resolve_args(self, args: Mapping[str, Any]) -> dict[str, Any]:
        return resolve_arguments(f"plugin '{self.name}'", self.arguments, args)

    def build(self, args: Mapping[str, Any]) -> SupervisedPlugin:
        return self.factory(**self.resolve_args(args))


_BASELINES: dict[str, Baseline] = {}
_PLUGINS: dict[str, Plugin] = {}


def register(
    name: str,
    description: str,
    *,
    uses_init: bool = True,
    arguments: Mapping[str, Argument] | None = None,
    matrix: str = SEQUENTIAL_MATRIX,
    refuses: Mapping[str, str] | None = None,
) -> Callable[[type[LoRAStrategy]], type[LoRAStrategy]]:
    """Class decorator: make a strategy class selectable as ``--baseline name``."""

    def decorate(cls: type[LoRAStrategy]) -> type[LoRAStrategy]:
        if name in _BASELINES and _BASELINES[name].strategy is not cls:
            raise ValueError(f"baseline '{name}' is already registered")
        _BASELINES[name] = Baseline(
            name, description, cls, uses_init, arguments or {}, matrix, refuses or {}
        )
        return cls

    return decorate


def register_plugin(
    name: str,
    description: str,
    factory: Callable[..., SupervisedPlugin],
    arguments: Mapping[str, Argument] | None = None,
) -> None:
    """Make ``factory`` selectable as ``--plugin name``.

    Argument names must be unique across plugins: ``--plugin-arg KEY=VALUE`` goes to the one
    plugin that declares ``KEY``.
    """
    arguments = arguments or {}
    for other in _PLUGINS.values():
        if other.name != name and set(other.arguments) & set(arguments):
            raise ValueError(f"plugin '{name}' reuses an argument name of plugin '{other.name}'")
    _PLUGINS[name] = Plugin(name, description, factory, arguments)


def available() -> list[str]:
    """Names of all baselines."""
    return sorted(_BASELINES)


def get(name: str) -> Baseline:
    """The baseline called ``name``; unknown names get close-match suggestions."""
    return _lookup("baseline", _BASELINES, name)


def available_plugins() -> list[str]:
    """Names of all plugins."""
    return sorted(_PLUGINS)


def get_plugin(name: str) -> Plugin:
    """The plugin called ``name``; unknown names get close-match suggestions."""
    return _lookup("plugin", _PLUGINS, name)


def _lookup(kind: str, registry: Mapping[str, Any], name: str) -> Any:
    if name not in registry:
        raise unknown_name(kind, name, list(registry))
    return registry[name]


def split_plugin_args(
    plugins: tuple[str, ...], args: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """``--plugin-arg`` pairs routed to the chosen plugin that declares each key, resolved
    (defaults filled in, types coerced). A key no chosen plugin takes is bad input."""
    chosen = [get_plugin(name) for name in plugins]
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
