"""The sweep as a user runs it: a grid checked up front, run locally or on Ray, safe to re-run."""

from __future__ import annotations

import json

import pytest

from cl_lora.config import RunConfig
from cl_lora.errors import BadInputError
from cl_lora.sweep import expand_grid, parse_init_spec, parse_overrides
from cl_lora.sweep.__main__ import main

FAST = ["max_train_per_task=8", "max_test_per_task=4", "epochs=1", "max_length=16", "rank=2"]


def _fast(backbone_dir: str) -> list[str]:
    return [arg for pair in [*FAST, f"backbone={backbone_dir}"] for arg in ("--set", pair)]


def test_init_spec_and_overrides_are_typed() -> None:
    assert parse_init_spec("intermediate:f=0.25,") == ("intermediate", {"f": "0.25"})
    overrides = parse_overrides(["epochs=1", "max_test_per_task=none", "targets=query,value"])
    assert overrides == {"epochs": 1, "max_test_per_task": None, "targets": ("query", "value")}
    assert parse_overrides(["rslora=true", "lr=1e-3"]) == {"rslora": True, "lr": 1e-3}
    assert parse_overrides(["plugins=replay,ewc"]) == {"plugins": ("replay", "ewc")}


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (["epoch=1"], "did you mean 'epochs'"),
        (["seed=3"], "grid axes"),
        (["epochs=one"], "--set epochs 'one': expected an integer"),
        (["rslora=maybe"], "use true or false"),
        (["lr"], "is not KEY=VALUE"),
    ],
)
def test_bad_overrides_are_one_line_errors(pairs, message) -> None:
    with pytest.raises(BadInputError, match=message):
        parse_overrides(pairs)


def test_grid_resolves_every_run_and_collapses_duplicates() -> None:
    configs = expand_grid(
        ["offline-text"], ["intermediate", "intermediate:f=0.5", "lora"], [0, 1], {"epochs": 1}
    )
    assert len(configs) == 4  # f=0.5 is intermediate's default: the same run
    assert all(isinstance(c, RunConfig) and c.epochs == 1 for c in configs)
    assert {c.init_args.get("f") for c in configs if c.init == "intermediate"} == {0.5}


def test_a_sweep_over_a_recipe(capsys) -> None:
    """``python -m cl_lora.sweep --recipe o-lora-t5 --inits lora pissa --seeds 0 1``: every run
    takes the recipe's settings (its stream, its O-LoRA lambdas where O-LoRA runs), the grid
    and --set go on top, and each run records the recipe."""
    from cl_lora import recipes

    recipe = recipes.builtin("o-lora-t5")
    configs = expand_grid(None, ["lora", "pissa"], [0, 1], {"epochs": 2}, ["o-lora"], recipe)
    assert len(configs) == 6 and {c.stream for c in configs} == {"cl-benchmark"}
    assert all(c.lr == 1e-3 and c.epochs == 2 and c.recipe == recipe.label for c in configs)
    olora = [c for c in configs if c.baseline == "o-lora"]
    assert olora and all(c.baseline_args["lambda_orth"] == 0.5 for c in olora)
    argv = ["--recipe", "o-lora-t5", "--inits", "lora", "pissa", "--seeds", "0", "1",
            "--dry-run", "--output-dir", "unused"]  # fmt: skip
    assert main(argv) == 0
    assert "4 runs" in capsys.readouterr().out


def test_grid_takes_baselines_next_to_inits() -> None:
    configs = expand_grid(["offline-text"], ["lora"], [0], None, ["frozen", "o-lora:lambda_orth=1"])
    assert [(c.init, c.baseline) for c in configs] == [
        ("lora", None),
        (None, "frozen"),
        ("lora", "o-lora"),
    ]
    assert configs[2].baseline_args["lambda_orth"] == 1.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--baselines", "frozn"], "did you mean 'frozen'"),
        (["--inits", "lora", "pisa"], "did you mean 'pissa'"),
        (["--streams", "ofline-text"], "did you mean 'offline-text'"),
        (["--inits", "intermediate:g=1"], "does not take g"),
        (["--max-parallel", "-1"], "--max-parallel"),
        (["--backend", "slurm"], "invalid choice"),
    ],
)
def test_bad_grid_fails_before_any_run(argv, message, tmp_path, capsys) -> None:
    assert main([*argv, "--output-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "runs").exists()


def test_local_sweep_records_failures_and_skips_finished_runs(
    tiny_backbone_dir, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # glue-seq has no data here: that run fails
    argv = [
        "--streams", "offline-text", "glue-seq",
        "--inits", "lora", "pissa",
        "--max-parallel", "2",
        *_fast(tiny_backbone_dir),
        "--output-dir", str(tmp_path),
    ]  # fmt: skip
    assert main(argv) == 1  # the failures do not stop the offline-text runs
    out = capsys.readouterr().out
    (manifest,) = tmp_path.glob("sweep-*.json")
    runs = json.loads(manifest.read_text())["runs"]
    assert [r["status"] for r in runs] == ["done", "done", "failed", "failed"]
    assert "--data-dir" in runs[2]["error"]
    error = json.loads((tmp_path / runs[2]["run_id"] / "error.json").read_text())
    assert error["kind"] == "bad input"
    assert len(list(tmp_path.rglob("result.json"))) == 2
    assert "[1/4 done" in out and "FAILED" in out
    assert "[5/5] tweet-sentiment done" in (tmp_path / runs[0]["run_id"] / "log.txt").read_text()

    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "2 finished (skipped)" in out
    statuses = [r["status"] for r in json.loads(manifest.read_text())["runs"]]
    assert statuses == ["skipped", "skipped", "failed", "failed"]


def test_ray_sweep_on_a_local_two_cpu_instance(tiny_backbone_dir, tmp_path, capsys) -> None:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        argv = [
            "--streams", "offline-text",
            "--inits", "lora", "olora",
            "--backend", "ray",
            *_fast(tiny_backbone_dir),
            "--output-dir", str(tmp_path),
        ]  # fmt: skip
        assert main(argv) == 0
        runs = json.loads(next(tmp_path.glob("sweep-*.json")).read_text())["runs"]
        assert [r["status"] for r in runs] == ["done", "done"]
        for run in runs:
            result = json.loads((tmp_path / run["run_id"] / "result.json").read_text())
            assert result["determinism"]["torch_threads"] == 1  # one CPU per run
        assert main(argv) == 0
        assert "2 finished (skipped)" in capsys.readouterr().out
    finally:
        ray.shutdown()


def test_local_sweep_puts_parallel_runs_on_the_gpus_in_turn(monkeypatch, tmp_path) -> None:
    """Each running run holds a worker slot; slots take the visible GPUs round-robin (with one
    GPU or none the device is left alone)."""
    from concurrent.futures import Future

    from cl_lora.sweep import backends

    submitted = []

    class InlinePool:  # runs nothing: records which GPU each run would get
        def __init__(self, *args, **kwargs) -> None:
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> bool:
            return False

        def shutdown(self, wait: bool = True) -> None:
            pass

        def submit(self, function, config, output_dir, threads, gpu) -> Future:
            submitted.append(gpu)
            future = Future()
            future.set_result({"run_id": len(submitted), "status": "done"})
            return future

    monkeypatch.setattr(backends, "ProcessPoolExecutor", InlinePool)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    runs = {f"run{i}": RunConfig(seed=i) for i in range(7)}
    events = list(backends.local_runs(runs, tmp_path, max_parallel=3))
    assert [kind for kind, _ in events].count("end") == 7
    assert sorted(submitted[:3]) == ["4", "5", "6"] and set(submitted) == {"4", "5", "6"}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert backends.gpu_of_slot(3) is None


def test_a_dead_worker_fails_its_run_and_the_queued_runs_go_on(monkeypatch, tmp_path) -> None:
    """A worker process that dies breaks its pool: its run is recorded as failed, the pool is
    replaced and the runs still queued run (before, the sweep stopped with a traceback)."""
    from dying_worker import dies_on_seed_1

    from cl_lora.sweep import backends

    # submitted by name: each spawned worker imports its module to run it
    monkeypatch.setattr(backends, "execute", dies_on_seed_1)
    runs = {f"run{i}": RunConfig(seed=i) for i in range(4)}
    ends = [payload for kind, payload in backends.local_runs(runs, tmp_path, 1) if kind == "end"]
    assert [(end["run_id"], end["status"]) for end in ends] == [
        ("seed0", "done"), ("run1", "failed"), ("seed2", "done"), ("seed3", "done")
    ]  # fmt: skip
    assert "worker died" in ends[1]["error"]
