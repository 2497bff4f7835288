"""cl_lora.results: round trip, human views, atomic writing, run ids, environment record."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cl_lora import results


def make_result(matrix=None):
    return {
        "stream": {"name": "offline-text"},
        "init": {"name": "pissa", "args": {"r": 4}},
        "seed": 0,
        "tasks": [{"name": "sst"}, {"name": "spam"}],
        "matrix": [[0.9, math.nan], [0.8, 0.7]] if matrix is None else matrix,
        "b": np.array([np.nan, 0.5]),
        "timings": {"train_s": np.float32(1.5), "steps": np.int64(10)},
        "data_dir": Path("/data/x"),
    }


def test_write_and_load_round_trip(tmp_path):
    path = results.write_run(tmp_path / "run", make_result())
    assert path == tmp_path / "run" / "result.json"
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "heatmap.png",
        "matrix.csv",
        "result.json",
    ]

    raw = json.loads(path.read_text())
    assert raw["matrix"] == [[0.9, None], [0.8, 0.7]]
    assert raw["b"] == [None, 0.5]
    assert raw["schema_version"] == results.SCHEMA_VERSION
    assert raw["data_dir"] == "/data/x"
    assert raw["timings"] == {"train_s": 1.5, "steps": 10}

    loaded = results.load_run(path.parent)
    assert loaded == raw
    R = results.matrix_array(loaded)
    assert math.isnan(R[0, 1])
    np.testing.assert_allclose(R[1], [0.8, 0.7])

    csv = pd.read_csv(path.parent / "matrix.csv", index_col=0)
    assert list(csv.columns) == ["sst", "spam"]
    assert list(csv.index) == ["after sst", "after spam"]
    assert math.isnan(csv.loc["after sst", "spam"])
    assert csv.loc["after spam", "sst"] == pytest.approx(0.8)

    png = (path.parent / "heatmap.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000


def test_failed_write_keeps_old_files_and_leaves_no_temporaries(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    results.write_run(run_dir, make_result())
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(results, "_render_heatmap", broken)
    with pytest.raises(RuntimeError):
        results.write_run(run_dir, make_result([[0.1, 0.2], [0.3, 0.4]]))
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before

    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError):
        results.write_run(fresh, make_result())
    assert list(fresh.iterdir()) == []


def test_write_rejects_inconsistent_matrix_before_writing(tmp_path):
    bad = make_result([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]])  # 3 rows, 2 tasks
    with pytest.raises(ValueError, match="tasks"):
        results.write_run(tmp_path / "run", bad)
    assert not (tmp_path / "run").exists()


def test_load_rejects_unknown_schema_version(tmp_path):
    path = tmp_path / "result.json"
    path.write_text(json.dumps({"schema_version": 99, "matrix": []}))
    with pytest.raises(ValueError, match="schema_version 99"):
        results.load_run(path)


def test_to_jsonable():
    value = {"a": (np.float64("inf"), -math.inf, np.bool_(True)), "p": Path("x"), "n": None}
    assert results.to_jsonable(value) == {"a": [None, None, True], "p": "x", "n": None}
    assert results.to_jsonable(np.array([[1, 2]], dtype=np.int32)) == [[1, 2]]


def test_new_run_id_is_stable_and_distinguishes_configs():
    config = {"stream": "offline-text", "init": {"name": "pissa", "f": 0.5}, "seed": 3, "lr": 1e-3}
    run_id = results.new_run_id(config)
    assert re.fullmatch(r"offline-text-pissa-s3-[0-9a-f]{8}", run_id)
    reordered = {
        "lr": 1e-3,
        "seed": 3,
        "init": {"f": 0.5, "name": "pissa"},
        "stream": "offline-text",
    }
    assert results.new_run_id(reordered) == run_id
    assert results.new_run_id({**config, "lr": 2e-3}) != run_id
    with pytest.raises(ValueError, match="seed"):
        results.new_run_id({"stream": "s", "init": "i"})


def test_environment():
    env = results.environment()
    assert {"python", "platform", "libraries", "git_commit"} <= set(env)
    assert env["libraries"]["numpy"] == np.__version__
    assert "torch" in env["libraries"] and "avalanche-lib" in env["libraries"]
    commit = env["git_commit"]
    assert commit is None or re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", commit)
    json.dumps(env)


def test_git_commit_is_dirty_exactly_when_tracked_files_changed(tmp_path):
    """In a throw-away checkout: clean -> the bare commit; an untracked file -> still clean;
    a tracked file modified (staged or not) -> ``+dirty``; committed again -> clean; a folder
    inside a checkout but not its top -> ``None``."""
    import subprocess

    def git(*args: str) -> str:
        identity = ["-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
        done = subprocess.run(["git", "-C", str(tmp_path), *identity, *args], check=True,
                              capture_output=True, text=True)  # fmt: skip
        return done.stdout.strip()

    git("init", "-q")
    (tmp_path / "tracked.py").write_text("x = 1\n")
    git("add", "tracked.py")
    git("commit", "-q", "-m", "first")
    head = git("rev-parse", "HEAD")
    assert results._git_commit(tmp_path) == head
    (tmp_path / "run-folder").mkdir()
    (tmp_path / "run-folder" / "result.json").write_text("{}")
    assert results._git_commit(tmp_path) == head  # untracked files do not count
    (tmp_path / "tracked.py").write_text("x = 2\n")
    assert results._git_commit(tmp_path) == head + "+dirty"
    git("add", "tracked.py")
    assert results._git_commit(tmp_path) == head + "+dirty"  # staged is still uncommitted
    git("commit", "-q", "-m", "second")
    assert results._git_commit(tmp_path) == git("rev-parse", "HEAD") != head
    assert results._git_commit(tmp_path / "run-folder") is None  # not the checkout's top


def test_heatmap_is_titled_by_the_method_not_only_its_init(tmp_path, monkeypatch):
    """An O-LoRA run (init lora) is titled o-lora, not lora."""
    titles = []
    monkeypatch.setattr(
        results, "draw_matrix", lambda fig, ax, m, names, title: titles.append(title)
    )
    result = {**make_result(), "method": {"name": "o-lora"}, "init": {"name": "lora"}}
    results.write_run(tmp_path / "run", result)
    assert titles[-1].endswith("/ o-lora")


def test_saving_adapters_leaves_the_run_id_and_the_setup_alone():
    """--save-adapters changes what a run writes, not what it trains: the same run id (so a
    sweep or --resume finds the run), and the leaderboard averages the two as one setup."""
    from cl_lora.config import UNHASHED_SETTINGS, RunConfig
    from cl_lora.experiment import run_id_of

    plain = RunConfig(seed=2, lr=1e-3)
    saving = RunConfig(seed=2, lr=1e-3, save_adapters=True, save_task_adapters=True)
    assert UNHASHED_SETTINGS == {"save_adapters", "save_task_adapters"}
    assert run_id_of(saving) == run_id_of(plain)
    assert run_id_of(RunConfig(seed=2, lr=2e-3)) != run_id_of(plain)  # hashed settings still count
