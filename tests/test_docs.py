"""The README and the docs pages stay true.

- **The site builds** with ``mkdocs build --strict`` (``mkdocs.yml``): a broken link or anchor
  between pages, a page left out of the nav or a nav entry without its page is a warning, and
  any warning fails the build.
- **Every command parses.** Each ``python -m cl_lora.<module>`` or ``python -m benchmarks.<x>``
  command, on a line of a fenced shell block (continued lines joined) or as an inline code span
  of its own, is split like a shell (``#`` comments dropped, a leading ``VAR=value`` dropped, a
  redirection or pipe ends it) and given to that module's own parser (``build_parser()``, or
  ``_parser()`` in the benchmarks that name it so); nothing runs. A complete command (no
  ``...`` in it) goes further: a ``cl_lora.run`` command's settings are resolved as a run
  resolves them (stream, init, baseline, plugin and recipe names, their arguments; not for
  ``--list``, nor for ``--config FILE``, a file the docs make), and a ``cl_lora.sweep`` command
  checks its grid with ``--dry-run``. Placeholders: a standalone ``...`` elides part of a
  command and is dropped, except right after an option that takes a value, where it is that
  value (``--data-dir ...``); words such as ``<id>``, ``RUNS`` or ``HEAD_IP`` are plain values
  to a parser, so they stay.
- **Every repository path exists**: an inline code span that is a path under ``results/``,
  ``cl_lora/``, ``benchmarks/``, ``scripts/``, ``tests/`` or ``docs/``, and such a word in a
  command. Not checked: patterns (with ``<``, ``{``, ``*`` or ``...``), what runs write into a
  folder that ``.gitignore`` names (``results/runs``), and the other projects' scripts in
  ``OTHER_PROJECTS``. The README's links to repository files exist.
"""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPOSITORY / "README.md", *sorted((REPOSITORY / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
SHELL = {"", "bash", "sh", "shell", "console"}
COMMAND = re.compile(r"^(?:\w+=\S*\s+)*python -m ((?:cl_lora|benchmarks)(?:\.\w+)*)(?:\s|$)")
PATH = re.compile(r"(?:results|cl_lora|benchmarks|scripts|tests|docs)/\S*")
PATTERN = ("<", "{", "*", "...")
# paths in other projects' repositories that the docs cite (O-LoRA's and TRACE's scripts)
OTHER_PROJECTS = {"scripts/long.sh", "scripts/train_lora.sh"}
SHELL_OPERATORS = {">", ">>", "<", "|", "||", "&&", ";", "&", "2>", "2>&1"}


def shell_text(document: Path) -> tuple[list[str], str]:
    """The lines of ``document``'s fenced shell blocks (continued lines joined), and its text
    outside fenced blocks."""
    text = document.read_text(encoding="utf-8")
    lines = []
    for language, block in FENCE.findall(text):
        if language in SHELL:
            lines += re.sub(r"\\\n\s*", " ", block).splitlines()
    return lines, FENCE.sub("", text)


def code_spans(prose: str) -> list[str]:
    """The inline code spans of ``prose``, a span that wraps lines joined by one space."""
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]


def documented_commands() -> list[tuple[str, str]]:
    """(document name, command) for every command the README and the docs give."""
    commands = []
    for document in DOCUMENTS:
        lines, prose = shell_text(document)
        for line in [*lines, *code_spans(prose)]:
            if COMMAND.match(line.strip()):
                commands.append((document.name, line.strip()))
    return commands


def words(command: str) -> tuple[str, list[str]]:
    """The module and the arguments of ``command``, split as a shell splits it."""
    tokens = shlex.split(command, comments=True)  # an operator stands apart: `... > file`
    while "=" in tokens[0] and not tokens[0].startswith("-"):
        tokens.pop(0)  # VAR=value
    assert tokens[:2] == ["python", "-m"], command
    end = next((i for i, t in enumerate(tokens) if t in SHELL_OPERATORS), len(tokens))
    return tokens[2], tokens[3:end]


def parser_of(module_name: str):
    module = importlib.import_module(module_name)
    if not hasattr(module, "build_parser") and not hasattr(module, "_parser"):
        module = importlib.import_module(f"{module_name}.__main__")  # a package: its __main__
    build = getattr(module, "build_parser", None) or module._parser
    return module, build()


def without_elisions(parser, args: list[str]) -> list[str]:
    """``args`` with each standalone ``...`` dropped, unless it is an option's value."""
    kept = []
    for i, word in enumerate(args):
        action = parser._option_string_actions.get(args[i - 1]) if i else None
        if word != "..." or (action is not None and action.nargs != 0):
            kept.append(word)
    return kept


def test_docs_site_builds_strictly(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = built.stdout + built.stderr
    assert built.returncode == 0 and "WARNING" not in output, output
    assert (tmp_path / "index.html").exists()


def test_every_documented_command_parses(tmp_path: Path, capsys) -> None:
    commands = documented_commands()
    modules = {words(command)[0] for _, command in commands}
    assert {"cl_lora.run", "cl_lora.sweep", "cl_lora.leaderboard"} <= modules, modules
    failures = []
    for document, command in commands:
        module_name, args = words(command)
        try:
            module, parser = parser_of(module_name)
            complete = not any("..." in word for word in args)
            args = without_elisions(parser, args)
            parsed = parser.parse_args(args)
            if not complete:
                continue
            if module_name == "cl_lora.run" and not parsed.list and parsed.config is None:
                from cl_lora.experiment import resolve_config

                resolve_config(module.config_from_command_line(parsed))
            if module_name == "cl_lora.sweep":
                code = module.main([*args, "--dry-run", "--output-dir", str(tmp_path / "sweep")])
                assert code == 0, capsys.readouterr().err.strip()
        except (Exception, SystemExit) as error:
            failures.append(f"{document}: {command}\n    {type(error).__name__}: {error}")
    capsys.readouterr()
    assert not failures, "\n".join(failures)


def ignored_folders() -> list[str]:
    lines = (REPOSITORY / ".gitignore").read_text().splitlines()
    return [line for line in lines if line.endswith("/") and not line.startswith("#")]


def test_every_documented_repository_path_exists() -> None:
    outputs = ignored_folders()
    missing, checked = [], 0
    for document in DOCUMENTS:
        lines, prose = shell_text(document)
        named = [s for s in code_spans(prose) if PATH.fullmatch(s)]
        named += [w for line in lines for w in line.split() if PATH.fullmatch(w)]
        for path in named:
            if any(mark in path for mark in PATTERN) or path in OTHER_PROJECTS:
                continue
            if any(f"{path.rstrip('/')}/".startswith(folder) for folder in outputs):
                continue
            checked += 1
            if not (REPOSITORY / path).exists():
                missing.append(f"{document.name}: {path}")
        if document.name == "README.md":
            for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", prose):
                if "://" not in target and not (REPOSITORY / target).exists():
                    missing.append(f"README.md: link {target}")
    assert checked > 50, checked
    assert not missing, "\n".join(missing)
