"""Recipes: a published setup's run settings as a small YAML file, not as code.

A recipe sets any :class:`~cl_lora.config.RunConfig` field by its name (``lr: 1.0e-3``,
``lr_scheduler: constant``, ``per_task: {mnli: {epochs: 2}}``) and may add three sections:

- ``baselines: {NAME: {...}}``: settings that apply only when that baseline runs (O-LoRA's
  lambdas: ``baseline_args`` and per-task ``per_task`` entries);
- ``orders: {N: {...}}``: settings that apply only with ``--order N`` (O-LoRA's long stream
  trains other tasks with other settings than its 4-task orders); an order's section may have
  its own ``baselines``;
- ``description`` and ``source`` (the script and commit it copies), shown by ``--list``.

The built-in recipes are the ``*.yaml`` files of this folder (``--recipe NAME``); a user's file
of the same form is ``--config FILE``. Precedence: defaults < recipe (its top level, then the
run's order section, then its baseline sections) < command-line flags. Dict settings
(``baseline_args``, ``per_task``, ...) merge key by key, everything else is replaced.
A key that is not a setting, or a value of the wrong type, is one line naming the key (and the
close match). The run records the recipe as ``NAME@sha256:<16 hex digits>`` of the file's
bytes (``RunConfig.recipe``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cl_lora.cli import parse_bool
from cl_lora.config import RunConfig, declared_type, parse_setting
from cl_lora.errors import BadInputError, did_you_mean, unknown_name

FOLDER = Path(__file__).parent
SECTIONS = ("baselines", "orders")  # keys of a recipe that hold further settings
ABOUT = ("description", "source")  # keys that describe a recipe
_FIELDS = [spec.name for spec in dataclasses.fields(RunConfig) if spec.metadata["flag"]]


@dataclass(frozen=True)
class Recipe:
    """One recipe file, parsed and checked: its typed settings and sections."""

    name: str
    path: Path
    sha256: str
    description: str
    source: str
    settings: dict[str, Any]
    baselines: dict[str, dict[str, Any]]
    orders: dict[int, dict[str, Any]]

    @property
    def label(self) -> str:
        """What a run records in ``RunConfig.recipe``."""
        return f"{self.name}@sha256:{self.sha256[:16]}"

    def settings_for(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The run settings: this recipe's for the run's order and baseline, then ``given``
        (the command line's) on top."""
        values = dict(self.settings)
        order = given.get("order", values.get("order"))
        section = self.orders.get(order, {})
        values = _layer(values, {k: v for k, v in section.items() if k != "baselines"})
        baseline = given.get("baseline", values.get("baseline"))
        for sections in (self.baselines, section.get("baselines", {})):
            values = _layer(values, sections.get(baseline, {}))
        return _layer(values, given) | {"recipe": self.label}

    def config(self, given: Mapping[str, Any]) -> RunConfig:
        """The :class:`RunConfig` of this recipe with ``given`` on top."""
        return RunConfig(**self.settings_for(given))


def _layer(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: dict settings merge key by key (``per_task`` one level deeper),
    everything else is replaced."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            inner = dict(merged[key])
            for name, item in value.items():
                nested = isinstance(item, Mapping) and isinstance(inner.get(name), Mapping)
                inner[name] = {**inner[name], **item} if nested else item
            merged[key] = inner
        else:
            merged[key] = value
    return merged


def available() -> dict[str, Path]:
    """Built-in recipe name -> file."""
    return {path.stem: path for path in sorted(FOLDER.glob("*.yaml"))}


def builtin(name: str) -> Recipe:
    """The built-in recipe ``name`` (``--recipe``); an unknown name is one line with the close
    ones."""
    files = available()
    if name not in files:
        raise unknown_name("recipe", name, sorted(files))
    return load(files[name], name)


def load(path: Path, name: str | None = None) -> Recipe:
    """The recipe in ``path`` (a built-in file or a user's ``--config``), checked."""
    import yaml  # a dependency of transformers; loaded only when a recipe is read

    path = Path(path).expanduser()
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise BadInputError(f"--config {path}: cannot read it ({error.strerror})") from None
    try:
        data = yaml.safe_load(raw) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise BadInputError(f"{path} is not valid YAML{where}: fix the file") from None
    if not isinstance(data, Mapping):
        raise BadInputError(f"{path}: a recipe is a mapping of settings (key: value per line)")
    where = str(path)
    orders = data.get("orders") or {}
    if not isinstance(orders, Mapping) or not all(isinstance(k, int) for k in orders):
        raise BadInputError(f"{where}: orders maps order numbers to settings, e.g. 6: {{...}}")
    return Recipe(
        name=name or path.stem,
        path=path,
        sha256=hashlib.sha256(raw).hexdigest(),
        description=str(data.get("description", "")),
        source=str(data.get("source", "")),
        settings=_settings(data, where, allowed=(*SECTIONS, *ABOUT)),
        baselines=_baselines(data.get("baselines") or {}, where),
        orders={
            order: {
                **_settings(section, f"{where}: orders: {order}", allowed=("baselines",)),
                "baselines": _baselines(
                    (section or {}).get("baselines") or {}, f"{where}: orders: {order}"
                ),
            }
            for order, section in orders.items()
        },
    )


def _baselines(sections: Any, where: str) -> dict[str, dict[str, Any]]:
    from cl_lora.baselines import BASELINES

    if not isinstance(sections, Mapping):
        raise BadInputError(f"{where}: baselines maps a baseline name to its settings")
    for name in sections:
        BASELINES.get(name)  # an unknown baseline is one line with the close ones
    return {
        name: _settings(section, f"{where}: baselines: {name}")
        for name, section in sections.items()
    }


def _settings(data: Any, where: str, allowed: tuple[str, ...] = ()) -> dict[str, Any]:
    """The run settings of one mapping of a recipe, typed; other keys (``allowed`` aside) are
    one line with the close match."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise BadInputError(f"{where}: expected a mapping of settings (key: value per line)")
    settings = {}
    for key, value in data.items():
        if key in allowed:
            continue
        if key not in _FIELDS:
            hint = did_you_mean(str(key), [*_FIELDS, *allowed], n=1)
            raise BadInputError(f"{where}: '{key}' is not a run setting: {hint}".rstrip(": "))
        settings[key] = typed_setting(key, value, f"{where}: {key}")
    return settings


def typed_setting(name: str, value: Any, option: str) -> Any:
    """A recipe's ``value`` for setting ``name`` as the setting's type (YAML reads ``1e-3`` as
    text and lists as lists); a wrong type is one line naming ``option``."""
    declared, optional = declared_type(name)
    kind = typing.get_origin(declared) or declared
    if value is None:
        if optional:
            return None
        raise BadInputError(f"{option}: may not be empty")
    if kind is dict:
        if not isinstance(value, Mapping):
            raise BadInputError(f"{option}: expected a mapping, got {value!r}")
        return dict(value)
    if kind is tuple:
        if isinstance(value, list | tuple):
            value = ",".join(str(item) for item in value)
        return parse_setting(name, str(value), option)
    if kind is bool:
        return value if isinstance(value, bool) else parse_bool(str(value), option)
    if isinstance(value, bool) or isinstance(value, Mapping | list):
        raise BadInputError(f"{option}: expected {kind.__name__}, got {value!r}")
    return parse_setting(name, str(value), option)


def to_yaml(config: RunConfig, header: str = "") -> str:
    """``config`` as a recipe file that ``--config`` reads back to the same run: every
    setting, per-task entries in stream order (positions, then names)."""
    import yaml

    data = {key: value for key, value in config.to_dict().items() if key in _FIELDS}
    data["per_task"] = dict(
        sorted(data["per_task"].items(), key=lambda item: (not item[0].isdigit(), _rank(item[0])))
    )
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
    return header + text


def _rank(key: str) -> int | str:
    return int(key) if key.isdigit() else key
