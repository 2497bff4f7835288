"""The layout holds: packages import each other in one direction, every named kind lives in
one registry mechanism, every setting has a flag, and start-up loads no heavy library."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from cl_lora.config import RunConfig, flag_of
from cl_lora.registry import Registry
from cl_lora.registry_index import registries
from cl_lora.run import build_parser, config_from_command_line, listing

PACKAGE = Path(__file__).resolve().parents[1] / "cl_lora"
HEAVY = ("avalanche", "peft", "timm", "sklearn", "ray", "transformers", "datasets", "pandas")


def _unit(module: str) -> str:
    """``cl_lora.strategy.loop`` -> ``cl_lora.strategy`` (a subpackage or a top module)."""
    return ".".join(module.split(".")[:2])


def _module_level_imports(path: Path) -> set[str]:
    """cl_lora modules ``path`` imports when it is imported (``TYPE_CHECKING`` blocks and
    imports inside functions are not)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "cl_lora":  # from cl_lora import inits, streams
                found |= {f"cl_lora.{alias.name}" for alias in node.names}
            else:
                found.add(node.module)
    return found


def _package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        source = _unit(module.removesuffix(".__init__"))
        for target in _module_level_imports(path):
            top = target.split(".")[0]
            assert top not in ("baselines", "benchmarks", "tests"), f"{module} imports {target}"
            if top == "cl_lora" and _unit(target) not in (source, "cl_lora"):
                graph.setdefault(source, set()).add(_unit(target))
    return graph


def _fail_on_a_cycle(graph: dict[str, set[str]], what: str) -> None:
    """Depth-first walk of ``graph``; the first cycle found fails the test, named in full."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            cycle = path[path.index(node) :] + [node]
            pytest.fail(f"import cycle{what}: {' -> '.join(cycle)}")
        if node in done:
            return
        for target in sorted(graph.get(node, ())):
            visit(target, [*path, node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])


def test_no_import_cycle_between_packages() -> None:
    graph = _package_graph()
    _fail_on_a_cycle(graph, "")
    assert len(graph) > 1  # the walk saw imports between packages


def test_the_cycle_check_finds_a_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The walker is not vacuous: two subpackages importing each other fail it."""
    for name, other in (("a", "b"), ("b", "a")):
        (tmp_path / "cl_lora" / name).mkdir(parents=True)
        (tmp_path / "cl_lora" / name / "__init__.py").write_text(f"from cl_lora.{other} import x\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "cl_lora")
    with pytest.raises(pytest.fail.Exception, match="import cycle"):
        test_no_import_cycle_between_packages()


def _every_import(path: Path) -> set[str]:
    """cl_lora modules ``path`` imports anywhere: at module level, inside functions (a lazy
    import that dodges a cycle is still one) and under ``TYPE_CHECKING``; ``from pkg import
    name`` counts ``pkg.name`` when that is a module."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            for alias in node.names:
                found.add(f"{node.module}.{alias.name}")
    return {name for name in found if name.split(".")[0] == "cl_lora"}


def _module_graph() -> dict[str, set[str]]:
    """Module -> the modules it imports; a package's ``__init__`` is a leaf (it gathers its
    modules for others, so a module importing its own package is not a cycle)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        modules[".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)] = path
    graph = {}
    for module, path in modules.items():
        if module.endswith("__init__"):
            continue
        targets = {t if t in modules else f"{t}.__init__" for t in _every_import(path)}
        graph[module] = {t for t in targets if t in modules and t != module}
    return graph


def test_no_import_cycle_between_modules() -> None:
    """No module imports, however lazily, a module that imports it back (so none needs a
    function-level import to dodge a cycle)."""
    graph = _module_graph()
    _fail_on_a_cycle(graph, " between modules")
    assert sum(map(len, graph.values())) > 100  # the walk saw the imports


def test_the_module_cycle_check_finds_a_lazy_cycle(tmp_path: Path, monkeypatch) -> None:
    """Two modules, one importing the other inside a function, fail the module check."""
    (tmp_path / "cl_lora").mkdir()
    (tmp_path / "cl_lora" / "__init__.py").write_text("")
    (tmp_path / "cl_lora" / "a.py").write_text("from cl_lora.b import x\n" + "y = 1\n" * 120)
    (tmp_path / "cl_lora" / "b.py").write_text("def f():\n    from cl_lora.a import y\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "cl_lora")
    with pytest.raises(pytest.fail.Exception, match="cl_lora.a -> cl_lora.b -> cl_lora.a"):
        test_no_import_cycle_between_modules()


def test_list_shows_every_kind_from_one_registry_mechanism() -> None:
    text = listing()
    kinds = registries()
    assert len(kinds) == 9  # streams, backbones, inits, baselines, plugins, statistics, metrics,
    # knowledge probes, trackers
    for title, registry, _ in kinds:
        assert isinstance(registry, Registry)
        assert title in text
        for name in registry.available():
            assert f"  {name} " in text, f"{registry.kind} '{name}' missing from --list"


def test_every_setting_has_a_flag_that_reaches_the_config() -> None:
    """Adding a setting is one field: its flag, type and default come from the field."""
    parser = build_parser()
    flags = {option for action in parser._actions for option in action.option_strings}
    fields = dataclasses.fields(RunConfig)
    assert {flag_of(spec.name) for spec in fields} <= flags
    argv = ["--stream", "offline-domains", "--rank", "4", "--alpha", "8", "--rslora",
            "--targets", "query,value", "--calib", "probe,task", "--init-arg", "f=0.25",
            "--plugin", "ewc", "--plugin-arg", "ewc_lambda=5", "--tasks", "a,b",
            "--max-train-per-task", "7", "--scenario", "task", "--precision", "bf16"]  # fmt: skip
    config = config_from_command_line(parser.parse_args(argv))
    assert config == RunConfig(
        stream="offline-domains", rank=4, alpha=8.0, rslora=True, targets=("query", "value"),
        calib=("probe", "task"), init_args={"f": "0.25"}, plugins=("ewc",),
        plugin_args={"ewc_lambda": "5"}, tasks=("a", "b"), max_train_per_task=7,
        scenario="task", precision="bf16",
    )  # fmt: skip
    assert config_from_command_line(parser.parse_args([])) == RunConfig()


def test_help_and_list_load_no_heavy_library() -> None:
    """``--help`` and ``--list`` stay within reach of ``import torch`` (benchmarks time them;
    this checks why: none of the slow libraries is imported)."""
    code = (
        "import sys, cl_lora.run as r; r.build_parser().format_help(); r.listing()\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules\n"
        "               and type(sys.modules[m]).__name__ != '_LazyModule'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
