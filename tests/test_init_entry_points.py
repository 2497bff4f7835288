"""A third-party init method, shipped by a separate package through the ``cl_lora.inits``
entry-point group, is listed by ``--list`` and runs with ``--init``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

INITS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "inits.md"


def readme_example() -> str:
    """The plugin module that docs/inits.md's "Add your own init method" section shows."""
    text = INITS_PAGE.read_text(encoding="utf-8")
    block = text.split("<!-- plugin-example -->")[1].split("<!-- /plugin-example -->")[0]
    return block.split("```python")[1].split("```")[0]


def make_plugin_distribution(root: Path) -> Path:
    """An installed-layout distribution (module + dist-info with entry points) under ``root``."""
    root.mkdir()
    (root / "shifted_pissa.py").write_text(readme_example())
    dist_info = root / "shifted_pissa-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: shifted-pissa\nVersion: 0.1\n"
    )
    (dist_info / "entry_points.txt").write_text(
        "[cl_lora.inits]\nshifted-pissa = shifted_pissa:ShiftedPiSSA\n"
    )
    return root


def run_cli(args: list[str], plugin_root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(plugin_root)}
    return subprocess.run(
        [sys.executable, "-m", "cl_lora.run", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_entry_point_plugin_is_listed_and_runs(tmp_path: Path) -> None:
    root = make_plugin_distribution(tmp_path / "site")
    listed = run_cli(["--list"], root)
    assert listed.returncode == 0, listed.stderr
    assert "shifted-pissa" in listed.stdout and "shift=1" in listed.stdout

    out = tmp_path / "runs"
    argv = ["--init", "shifted-pissa", "--init-arg", "shift=2", "--stream", "offline-domains"]
    argv += ["--max-train-per-task", "8", "--max-test-per-task", "8", "--quiet"]
    ran = run_cli([*argv, "--output-dir", str(out)], root)
    assert ran.returncode == 0, ran.stderr
    (result_file,) = out.rglob("result.json")
    result = json.loads(result_file.read_text())
    assert result["init"]["name"] == "shifted-pissa"
    assert result["init"]["args"] == {"shift": 2}
