"""One run over two processes (``torch.distributed.run``, gloo on the CPU) learns what one
process does with the same effective batch, and its replicas never drift apart.

The toy-stream tests run tests/multiprocess_stream.py, which records per process the rows each
optimizer step trained on, the adapters after each init, every weight after each task and the
predictions of each evaluation batch. The end-to-end tests run ``python -m cl_lora.run``
itself under the launcher, on a tiny Llama (no dropout: dropout masks are drawn per process,
so a model with dropout agrees only in distribution).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from llm_fixtures import tiny_llama_dir
from safetensors.numpy import load_file

from cl_lora import distributed, inits
from cl_lora.baselines import BASELINES
from cl_lora.plugins import PLUGINS
from cl_lora.sharding import FSDP2_VARIABLES

SCRIPT = Path(__file__).with_name("multiprocess_stream.py")
LAUNCH = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node"]


def _environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SCRIPT.parent.parent)}


FSDP2 = FSDP2_VARIABLES  # what ``accelerate launch`` sets for an FSDP2 config


def _toy(
    out: Path, processes: int, runs: list[dict], variables: dict | None = None
) -> list[list[dict]]:
    """``runs`` trained in one launch of ``processes`` processes (with environment
    ``variables``): per run, each process's record (see tests/multiprocess_stream.py)."""
    out.mkdir(parents=True)
    done = subprocess.run(
        [*LAUNCH, str(processes), str(SCRIPT), str(out), json.dumps(runs)],
        capture_output=True,
        text=True,
        env={**_environment(), **(variables or {})},
        cwd=SCRIPT.parent,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [
        [json.loads((out / f"run{i}-rank{r}.json").read_text()) for r in range(processes)]
        for i in range(len(runs))
    ]


def _near(a, b, relative: float = 1e-3) -> bool:
    """Equal up to round-off grown over a run's steps: the largest difference a thousandth of
    the largest value (two tiny-Llama tasks at lr 1e-2 differ by up to 1e-4 of it)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return np.abs(a - b).max() <= relative * np.abs(b).max()


def _close(a, b) -> bool:
    """Equal up to float round-off: the shares sum their gradients in another order, and a
    task's init reads the weights the earlier tasks' steps left."""
    return np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=1e-4, atol=1e-6)


def test_a_batch_is_shared_in_contiguous_parts_that_cover_it_in_order() -> None:
    items = list(range(7))
    parts = [distributed.share(items, distributed.Processes(rank=r, world=3)) for r in range(3)]
    assert parts == [[0, 1, 2], [3, 4], [5, 6]]
    one = [distributed.share([9], distributed.Processes(rank=r, world=2)) for r in range(2)]
    assert one == [[9], []]  # the second process's share is empty: it still takes part


#: every init, baseline and plugin (lora-null and pissa in the two runs that share steps oddly)
INITS = sorted(set(inits.available()) - {"lora-null", "pissa"})
RUNS = {
    # 24 rows a task: steps of 23 and 1 rows (the second process's last share is empty);
    # 8 test rows in evaluation batches of 7 and 1
    "lora-null": {"init": "lora-null", "batch_size": 23, "eval_batch_size": 7},
    # accumulation: 12 rows a step as 3 micro-batches of 4, each shared 2 + 2
    "pissa-accumulated-replay": {
        "init": "pissa",
        "batch_size": 12,
        "grad_accumulation": 3,
        "plugins": {"replay": {"mem_size": 20}},
    },
    **{init: {"init": init} for init in INITS},
    **{name: {"baseline": name} for name in BASELINES.available()},
    **{name: {"plugins": {name: {}}} for name in sorted(set(PLUGINS.available()) - {"replay"})},
}


#: what FSDP2 runs: all but the methods it refuses (Method.check_sharding)
SHARDED_RUNS = [name for name in RUNS if name not in ("lora-ga", "seq-ft", "ewc")]


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory) -> dict[tuple[str, str], tuple[dict, dict, dict]]:
    """Per (launch, run of :data:`RUNS`): the one-process record and the two processes'
    records, launched data parallel and with the weights sharded (FSDP2)."""
    out = tmp_path_factory.mktemp("toy")
    (alone,) = zip(*_toy(out / "one", 1, list(RUNS.values())), strict=True)
    one = dict(zip(RUNS, alone, strict=True))
    pairs = _toy(out / "two", 2, list(RUNS.values()))
    sharded = _toy(out / "fsdp2", 2, [RUNS[name] for name in SHARDED_RUNS], FSDP2)
    return {
        **{("ddp", name): (one[name], *pair) for name, pair in zip(RUNS, pairs, strict=True)},
        **{("fsdp2", n): (one[n], *pair) for n, pair in zip(SHARDED_RUNS, sharded, strict=True)},
    }


@pytest.mark.parametrize(
    ("launch", "name"), [("ddp", name) for name in RUNS] + [("fsdp2", n) for n in SHARDED_RUNS]
)
def test_two_processes_train_on_shares_of_the_batch_and_end_where_one_process_does(
    launch: str, name: str, toy_runs
) -> None:
    alone, first, second = toy_runs[launch, name]
    # FSDP2: each process holds half of the backbone's weights (data parallel: all of them)
    expected_share = 0.5 if launch == "fsdp2" else 1.0
    assert first["local_share"] == pytest.approx(expected_share, abs=0.01)
    assert second["local_share"] == pytest.approx(expected_share, abs=0.01)

    # every optimizer step: the two shares together are exactly the one process's batch, and
    # neither process trained on the whole of it
    assert len(first["steps"]) == len(second["steps"]) == len(alone["steps"])
    for whole, a, b in zip(alone["steps"], first["steps"], second["steps"], strict=True):
        assert Counter(map(tuple, a + b)) == Counter(map(tuple, whole))
        assert len(a) < len(whole) or not b
    # an empty share: under FSDP2 that process runs a stand-in (loss counted 0) instead
    if name == "lora-null":
        assert second["stand_ins"] == (2 if launch == "fsdp2" else 0)  # one per task
        assert first["stand_ins"] == alone["stand_ins"] == 0
    # the same adapters right after each init on both processes (broadcast from process 0)
    # and the same weights after every task; the first task's equal to the one-process run's
    # up to round-off (later ones inherit it: LoRA-Null's null-space eigenvectors turn a 2e-6
    # weight difference into 7e-5 in the next task's factors, so only predictions compare)
    for task in range(len(alone["factors"])):
        for layer in alone["factors"][task]:
            assert first["factors"][task][layer] == second["factors"][task][layer]
        for layer in alone["weights"][task]:
            assert first["weights"][task][layer] == second["weights"][task][layer], layer
    for layer, (A, B) in alone["factors"][0].items():
        assert _close(first["factors"][0][layer][0], A) and _close(first["factors"][0][layer][1], B)
    for layer, weight in alone["weights"][0].items():
        assert _close(first["weights"][0][layer], weight), layer
    # the base weights after the first task's merge (written into the shards under FSDP2)
    for task in range(len(alone["bases"])):
        assert first["bases"][task] == second["bases"][task]
    for layer, weight in (alone["bases"][1:2] or [{}])[0].items():
        assert _close(first["bases"][1][layer], weight), layer
    # sharded evaluation: every process holds the whole batch's predictions, in order
    assert first["predictions"] == second["predictions"] == alone["predictions"]
    assert first["matrix"] == alone["matrix"]


def test_every_process_starts_each_task_from_the_first_process_adapters(tmp_path: Path) -> None:
    """Processes that would draw different initial factors (another seed each) train from
    process 0's: broadcast at each init, then checked equal across replicas."""
    ((alone,),) = _toy(tmp_path / "one", 1, [{"init": "lora", "seed": 0}])
    ((first, second),) = _toy(tmp_path / "two", 2, [{"init": "lora", "seed_per_rank": True}])
    for task in range(2):
        for name, factors in alone["factors"][task].items():
            assert first["factors"][task][name] == second["factors"][task][name] == factors
    assert alone["factors"][0] != alone["factors"][1]  # a fresh draw per task


def test_a_failure_in_one_process_ends_the_run_with_its_one_line(tmp_path: Path) -> None:
    out = tmp_path / "failed"
    out.mkdir()
    runs = [{"init": "lora", "fail_on_rank": 1}]
    done = subprocess.run(
        [*LAUNCH, "2", str(SCRIPT), str(out), json.dumps(runs)],
        capture_output=True,
        text=True,
        env=_environment(),
        cwd=SCRIPT.parent,
        timeout=300,  # process 0 waits in the step's gradient sum until the launcher ends it
    )
    assert done.returncode != 0
    failures = [line for line in done.stderr.splitlines() if "run failed" in line]
    assert failures == ["process 1: run failed: injected failure on this process"]
    assert not list(out.glob("*.json"))


# -- the command line, end to end -------------------------------------------------------------
def _cli(
    processes: int, argv: list[str], variables: dict | None = None, **kwargs
) -> subprocess.Popen:
    launch = [*LAUNCH, str(processes)] if processes > 1 else [sys.executable]
    return subprocess.Popen(
        [*launch, "-m", "cl_lora.run", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**_environment(), **(variables or {})},
        **kwargs,
    )


def _finished(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    return out


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> str:
    return tiny_llama_dir(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def launched(llama: str, tmp_path_factory) -> Callable[[str], tuple[Path, str]]:
    """The tiny-Llama command line (``_run_args``) launched once per kind, "one" (one
    process), "ddp" (two) or "fsdp2" (two, weights sharded), and shared by the tests that read
    it: its output folder and what it printed."""
    launches: dict[str, tuple[Path, str]] = {}

    def launch(kind: str) -> tuple[Path, str]:
        if kind not in launches:
            processes, variables = {"one": (1, None), "ddp": (2, None), "fsdp2": (2, FSDP2)}[kind]
            out = tmp_path_factory.mktemp(kind)
            launches[kind] = out, _finished(_cli(processes, _run_args(llama, out), variables))
        return launches[kind]

    return launch


def _run_args(llama: str, out: Path) -> list[str]:
    return [
        "--stream", "offline-instruct", "--tasks", "movie-sentiment,sms-spam",
        "--backbone", llama, "--init", "pissa", "--lr", "1e-2", "--epochs", "1",
        "--max-train-per-task", "13", "--max-test-per-task", "5",
        "--batch-size", "4", "--eval-batch-size", "4", "--save-adapters", "--quiet",
        "--output-dir", str(out),
    ]  # fmt: skip


def _result(out: Path) -> tuple[dict, dict[str, dict]]:
    (path,) = out.glob("*/result.json")
    adapters = {
        folder.name: load_file(folder / "adapter_model.safetensors")
        for folder in sorted((path.parent / "adapters").glob("after-*"))
    }
    return json.loads(path.read_text()), adapters


def test_the_command_run_by_the_launcher_gives_the_one_process_result(launched) -> None:
    (alone, _), (both, printed) = launched("one"), launched("ddp")
    assert printed.count("result: ") == 1  # one process reports
    one, one_adapters = _result(alone)
    two, two_adapters = _result(both)
    assert one["run_id"] == two["run_id"]  # the process count is not part of the run
    assert two["processes"].pop("communication_s") > 0
    assert one["processes"]["communication_s"] == 0
    assert two["processes"] == {
        "world_size": 2,
        "backend": "gloo",
        "sharding": None,
        "weights_read_by": [0, 1],
        "effective_batch": 4,
        "grad_accumulation": 1,
        "per_process_batch": 2,
        "per_process_eval_batch": 2,
    }
    assert (one["processes"]["world_size"], one["processes"]["weights_read_by"]) == (1, [0])
    assert one["matrix"] == two["matrix"]
    curve = one["retention"]["gold_loglik"]["curve"]  # the NQ probe, sharded too
    assert _near(two["retention"]["gold_loglik"]["curve"], curve)
    assert curve[0] != curve[-1]  # training moved it: the comparison has something to see
    assert one_adapters.keys() == two_adapters.keys() and len(one_adapters) == 2
    for task, tensors in one_adapters.items():
        for name, tensor in tensors.items():
            assert _near(two_adapters[task][name], tensor), (task, name)


ACCELERATE_CONFIG = Path(__file__).parent.parent / "docs" / "accelerate" / "fsdp2.yaml"


@pytest.mark.parametrize(
    ("launch", "sharding"),
    [(["--multi_gpu"], None), (["--config_file", str(ACCELERATE_CONFIG)], "fsdp2")],
    ids=["data-parallel", "fsdp2-config"],
)
def test_accelerate_launch_runs_it_on_two_processes_too(
    launch: list[str], sharding: str | None, llama: str, launched, tmp_path: Path
) -> None:
    """accelerate's launcher (its ``launch`` command, called in-process after cl_lora's
    torchvision shim: the ``accelerate`` script itself imports torchvision first, which fails
    next to this set-up's CPU-only torch) sets up the same two-process run, data parallel or
    with the documented FSDP2 config (the weights sharded)."""
    code = (
        "import sys, cl_lora\n"
        "from accelerate.commands.accelerate_cli import main\n"
        f"sys.argv = ['accelerate', 'launch', *{launch!r}, '--num_processes', '2',"
        " '-m', 'cl_lora.run', *sys.argv[1:]]\n"
        "main()"
    )
    launch = subprocess.Popen(
        [sys.executable, "-c", code, *_run_args(llama, tmp_path / "two"), "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_environment(),
    )
    _finished(launch)
    one, _ = _result(launched("one")[0])
    two, _ = _result(tmp_path / "two")
    assert (two["processes"]["world_size"], two["processes"]["backend"]) == (2, "gloo")
    assert two["processes"]["sharding"] == sharding
    # the documented config reads the weights on process 0 only (cpu_ram_efficient_loading)
    assert two["processes"]["weights_read_by"] == ([0] if sharding else [0, 1])
    assert two["matrix"] == one["matrix"]
    assert _near(two["retention"]["gold_loglik"]["curve"], one["retention"]["gold_loglik"]["curve"])


def _kill_all(pid: int) -> None:
    """SIGKILL the launcher and its workers (which the launcher may start in sessions of
    their own, out of reach of a process-group kill)."""
    import psutil

    launcher = psutil.Process(pid)
    for process in [*launcher.children(recursive=True), launcher]:
        process.send_signal(signal.SIGKILL)


@pytest.mark.parametrize("variables", [None, FSDP2], ids=["data-parallel", "fsdp2"])
def test_a_killed_launch_resumes_to_the_unbroken_result(
    variables: dict | None, llama: str, launched, tmp_path: Path
) -> None:
    """Also with sharded weights: the resumed run replays the finished task's merge into the
    shards."""
    unbroken_out, _ = launched("fsdp2" if variables else "ddp")
    broken = tmp_path / "broken"
    launch = _cli(2, _run_args(llama, broken), variables)
    for line in launch.stderr:  # the task lines survive --quiet
        if line.startswith("[1/2]"):
            _kill_all(launch.pid)
            break
    launch.wait(timeout=60)
    assert not list(broken.glob("*/result.json"))
    assert list(broken.glob("*/checkpoint.safetensors"))
    printed = _finished(_cli(2, [*_run_args(llama, broken), "--resume"], variables))
    assert "result: " in printed
    resumed, resumed_adapters = _result(broken)
    unbroken, unbroken_adapters = _result(unbroken_out)
    assert resumed["determinism"]["resumed_after_task"] == 0
    assert resumed["matrix"] == unbroken["matrix"]
    assert resumed["retention"] == unbroken["retention"]
    for task, tensors in unbroken_adapters.items():
        for name, tensor in tensors.items():
            assert np.array_equal(resumed_adapters[task][name], tensor), (task, name)


# -- what a launch cannot do: one line before any work ------------------------------------------
@pytest.mark.parametrize(
    ("variables", "device", "message"),
    [
        ({"ACCELERATE_USE_FSDP": "true"}, "cpu", "FSDP1 is not supported: set fsdp_version: 2"),
        (
            {**FSDP2, "FSDP_RESHARD_AFTER_FORWARD": "false"},
            "cpu",
            "fsdp_reshard_after_forward: false is not supported",
        ),
        ({**FSDP2, "FSDP_OFFLOAD_PARAMS": "true"}, "cpu", "fsdp_offload_params: true is not"),
        (
            {**FSDP2, "FSDP_ACTIVATION_CHECKPOINTING": "true"},
            "cpu",
            "fsdp_activation_checkpointing is not supported: pass --gradient-checkpointing",
        ),
        (
            {**FSDP2, "FSDP_AUTO_WRAP_POLICY": "SIZE_BASED_WRAP"},
            "cpu",
            "fsdp_auto_wrap_policy: SIZE_BASED_WRAP is not supported",
        ),
        ({"ACCELERATE_USE_DEEPSPEED": "true"}, "cpu", "DeepSpeed is not supported"),
        ({}, "cuda:1", "use --device cuda (each process takes its own GPU)"),
    ],
)
def test_a_launch_the_run_cannot_honour_is_refused_before_joining(
    variables: dict, device: str, message: str, monkeypatch
) -> None:
    from cl_lora.errors import BadInputError

    monkeypatch.setenv("WORLD_SIZE", "2")
    for key, value in variables.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(BadInputError, match=re.escape(message)):
        distributed.start(device)
    assert not distributed.current().many  # nothing was joined


@pytest.mark.parametrize(
    ("argv", "refused"),
    [
        (["--baseline", "seq-ft"], "baseline seq-ft cannot run with sharded weights (FSDP2)"),
        (["--plugin", "ewc"], "plugin ewc cannot run with sharded weights (FSDP2)"),
        (["--init", "lora-ga"], "init lora-ga cannot run with sharded weights (FSDP2): it reads"),
    ],
)
def test_a_method_sharded_weights_cannot_run_is_refused_in_one_line(
    argv: list[str], refused: str, llama: str, tmp_path: Path
) -> None:
    args = [
        a for a in _run_args(llama, tmp_path) if a not in ("--init", "pissa", "--save-adapters")
    ]
    done = _cli(2, [*args, *argv], variables=FSDP2)
    _, err = done.communicate(timeout=300)
    assert done.returncode != 0
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    assert line.startswith(f"error: {refused}") and line.endswith("with a data-parallel config")
    assert not list(tmp_path.iterdir())  # before any run folder


def test_a_sweep_launched_as_many_processes_is_refused(monkeypatch, tmp_path, capsys) -> None:
    from cl_lora.sweep.__main__ import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["--streams", "offline-text", "--output-dir", str(tmp_path)]) == 2
    assert "launch it as one process" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
