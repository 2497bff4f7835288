"""``--knowledge lm-eval:TASK[,TASK...]``: lm-evaluation-harness tasks as a language model's
knowledge probe, instead of the packaged NQ-open.

The harness scores the model as it stands (its LoRA layers included: PEFT injects them into the
base model in place) through its own ``HFLM`` wrapper and ``simple_evaluate``, with each task's
own prompts, few-shot setting and metric, so the numbers read like the harness's (e.g.
``nq_open``, ``triviaqa``, ``webqs``: LoRA-Null's three closed-book QA probes). The primary
score is the mean over tasks of each task's first reported metric; every metric is kept per
evaluation. ``--lm-eval-include DIR`` adds the task YAMLs of a folder (the harness's
``TaskManager(include_path=...)``): a task whose YAML reads local files (``dataset_path: json``
with ``data_files``) runs without the Hub, which is how a user offline, or with probes of their
own, runs the harness. A task that reads a Hub dataset needs the Hub (or the dataset cached, in
``datasets``'s offline mode); otherwise, and for an unknown task or a missing ``lm-eval``, the
run stops before any work with a one-line error.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from torch import nn

from cl_lora import distributed
from cl_lora.errors import BadInputError, did_you_mean
from cl_lora.hub import require_hub
from cl_lora.lazy import lazy_module
from cl_lora.metrics import retention_summary
from cl_lora.probes.spec import HARNESS_PREFIX, KnowledgeSpec

datasets = lazy_module("datasets")

#: ``datasets`` builders that read local files (``dataset_kwargs: {data_files: ...}``).
LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow")


def require_lm_eval(tasks: Sequence[str]) -> None:
    """Fail at once, in one line, when the harness is not installed."""
    if importlib.util.find_spec("lm_eval") is None:
        raise BadInputError(
            f"--knowledge {HARNESS_PREFIX}{','.join(tasks)} needs lm-evaluation-harness: "
            'pip install -e ".[lm-eval]" (or drop the lm-eval: tasks)'
        )


def task_manager(include: str | None) -> Any:
    """The harness's task index, with the task YAMLs of ``include`` (a folder) added."""
    if include is not None and not Path(include).is_dir():
        raise BadInputError(f"--lm-eval-include {include} is not a folder of task YAML files")
    return _task_index(include)


@functools.cache
def _task_index(include: str | None) -> Any:
    """Built once per folder and process: indexing the harness's ~15k task YAMLs takes 10-45 s,
    and a run asks before its work and at every evaluation. The index only names files; each
    evaluation still builds fresh task objects from them."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include)


def _task_configs(manager: Any, name: str) -> list[tuple[str, dict[str, Any]]]:
    """``(task, config)`` of every task ``name`` stands for (itself, or a group's or tag's
    members), configs read from their YAML files with includes resolved; unknown names are one
    line with close matches."""
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = manager.task_index.get(name)
    if entry is None:
        raise BadInputError(
            f"unknown lm-eval task '{name}': {did_you_mean(name, manager.all_tasks)}(lm-eval ls "
            "tasks lists the harness's; --lm-eval-include DIR adds a folder of your own)"
        )
    if entry.kind == Kind.TAG:
        members = [n for n, e in manager.task_index.items() if name in e.tags]
    elif entry.kind == Kind.GROUP:
        group = load_yaml(entry.yaml_path, resolve_func=False) if entry.yaml_path else {}
        members = [t for t in group.get("task", []) if isinstance(t, str)]
    else:
        config = load_yaml(entry.yaml_path, resolve_func=False) if entry.yaml_path else {}
        return [(name, config or entry.cfg or {})]
    return [pair for member in members for pair in _task_configs(manager, member)]


def _local(config: dict[str, Any]) -> bool:
    """Whether the task's data is in local files (a YAML with ``dataset_path: json`` and
    ``data_files`` that exist), so it loads without the Hub."""
    if config.get("dataset_path") not in LOCAL_BUILDERS:
        return False
    files = (config.get("dataset_kwargs") or {}).get("data_files")
    paths = files.values() if isinstance(files, dict) else [files]
    flat = [f for path in paths for f in (path if isinstance(path, list) else [path])]
    return bool(flat) and all(f and Path(f).expanduser().exists() for f in flat)


def check_harness(tasks: Sequence[str], include: str | None) -> None:
    """Before any work: lm-eval installed, every task known (built-in or in ``include``), and
    its data loadable here -- local files, or a Hub dataset with the Hub reachable (or cached,
    in ``datasets``'s offline mode)."""
    require_lm_eval(tasks)
    manager = task_manager(include)
    remote = [
        (task, config)
        for name in tasks
        for task, config in _task_configs(manager, name)
        if not _local(config)
    ]
    for task, config in remote:
        hint = (
            f"--knowledge {HARNESS_PREFIX}{task} reads the Hub dataset "
            f"{config.get('dataset_path')}, which cannot be reached here: give a local task "
            "YAML (dataset_path: json with local data_files) with --lm-eval-include DIR"
        )
        if not datasets.config.HF_HUB_OFFLINE:
            require_hub(hint)
            continue
        try:  # datasets' offline mode reads only its cache: is the task's data there?
            datasets.load_dataset_builder(config["dataset_path"], config.get("dataset_name"))
        except Exception as error:  # not cached, or no such dataset
            raise BadInputError(f"{hint} ({type(error).__name__})") from error


def check_knowledge(
    knowledge: KnowledgeSpec | None, problem: str, include: str | None = None
) -> None:
    """``--knowledge`` checked before any work: probes of a language model need a
    text-to-text stream; harness tasks need lm-eval and their data (:func:`check_harness`)."""
    if knowledge is None:
        return
    if problem != "text-to-text":
        raise BadInputError(
            "--knowledge probes a language model: drop it for "
            f"{problem} streams (their probe is a frozen head on held-out data)"
        )
    if knowledge.harness:
        check_harness(knowledge.harness, include)


def first_metric(values: dict[str, Any]) -> tuple[str, float]:
    """A harness task's first metric (its primary one): the first ``METRIC,FILTER`` entry that
    is not a standard error (the harness also reports ``alias`` and ``sample_len``)."""
    for key, value in values.items():
        if isinstance(value, int | float) and "," in key and "_stderr" not in key:
            return key, float(value)
    raise RuntimeError(f"lm-eval reported no metric: {sorted(values)}")


def _data_parallel(harness: Any) -> None:
    """Split the harness's documents over the run's processes with lm-eval's own data-parallel
    evaluation (each process scores every n-th document, the metrics are gathered on process 0),
    through the attributes ``HFLM`` reads when it did not launch the processes itself.

    Not under FSDP2: the harness groups a multiple-choice document's requests by context, so
    the processes' forward counts would differ, where sharded weights need every process to
    run the same forwards; there each process evaluates every document.
    """
    from accelerate.utils import extract_model_from_parallel, gather, wait_for_everyone

    processes = distributed.current()
    harness._rank, harness._world_size = processes.rank, processes.world
    harness.accelerator = SimpleNamespace(
        gather=gather, wait_for_everyone=wait_for_everyone, unwrap_model=extract_model_from_parallel
    )


class LMEvalProbe:
    """Runs the harness tasks before the first task and after each (see the module docstring)."""

    def __init__(
        self,
        tasks: Sequence[str],
        tokenizer: Any,
        batch_size: int,
        limit: int | None,
        include: str | None = None,
    ) -> None:
        self.tasks = list(tasks)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.limit = limit
        self.include = include
        self.evaluations: list[dict[str, dict[str, float]]] = []

    def _evaluate(self, model: nn.Module) -> dict[str, dict[str, float]]:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from peft import PeftModel

        network = model.encoder
        if isinstance(network, PeftModel):  # the LoRA layers live inside the base model
            network = network.get_base_model()
        harness = HFLM(pretrained=network, tokenizer=self.tokenizer, batch_size=self.batch_size)
        if distributed.current().many and not distributed.sharded():
            _data_parallel(harness)
        results = lm_eval.simple_evaluate(
            model=harness,
            tasks=self.tasks,
            limit=self.limit,
            task_manager=task_manager(self.include),
        )
        results = distributed.gather_in_order(results)[0]  # reported by process 0 only
        return {
            task: {k: float(v) for k, v in values.items() if isinstance(v, int | float)}
            for task, values in results["results"].items()
            if task in self.tasks
        }

    def start(self, model: nn.Module) -> float:
        return self.score(model)

    def score(self, model: nn.Module) -> float:
        was_training = model.training
        model.eval()
        try:
            evaluation = self._evaluate(model)
        finally:
            model.train(was_training)
        self.evaluations.append(evaluation)
        return float(np.mean([first_metric(values)[1] for values in evaluation.values()]))

    def checkpoint_state(self) -> dict[str, Any]:
        return {"evaluations": list(self.evaluations)}

    def restore_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.evaluations = list(state["evaluations"])

    def record(self, curve: Sequence[float]) -> dict[str, Any]:
        names = {task: first_metric(v)[0] for task, v in self.evaluations[0].items()}
        return {
            "probe": HARNESS_PREFIX + ",".join(self.tasks),
            "head": "none (lm-evaluation-harness)",
            "fit_examples": 0,
            "test_size": self.limit,
            "metric": "mean of " + ", ".join(f"{t}:{m}" for t, m in names.items()),
            **retention_summary(curve),
            "per_task": {
                task: [evaluation[task] for evaluation in self.evaluations] for task in names
            },
        }
