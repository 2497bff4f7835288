"""``--knowledge lm-eval:TASK[,TASK...]``: lm-evaluation-harness tasks as a language model's
knowledge probe, instead of the packaged NQ-open.

The harness scores the model as it stands (its LoRA layers included: PEFT injects them into the
base model in place) through its own ``HFLM`` wrapper and ``simple_evaluate``, with each task's
own prompts, few-shot setting and metric, so the numbers read like the harness's (e.g.
``nq_open``, ``triviaqa``, ``webqs``: LoRA-Null's three closed-book QA probes). The primary
score is the mean over tasks of each task's first reported metric; every metric is kept per
evaluation. The harness downloads its task data from the Hugging Face Hub, so the probe needs
``lm-eval`` installed and the Hub reachable (or the datasets cached): otherwise the run stops
before any work with a one-line error.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

import numpy as np
from peft import PeftModel
from torch import nn

from cl_lora.errors import BadInputError
from cl_lora.hub import require_hub
from cl_lora.metrics import retention_summary

PREFIX = "lm-eval:"


def parse_knowledge(spec: str | None) -> tuple[str, ...] | None:
    """The harness tasks of ``--knowledge lm-eval:a,b`` (``None`` for the default probe)."""
    if spec is None or spec == "nq-open":
        return None
    tasks = (
        tuple(t for t in spec.removeprefix(PREFIX).split(",") if t)
        if spec.startswith(PREFIX)
        else ()
    )
    if not tasks:
        raise BadInputError(
            f"unknown --knowledge '{spec}': use nq-open (packaged, the default) or "
            "lm-eval:TASK[,TASK...] (lm-evaluation-harness task names, e.g. lm-eval:nq_open)"
        )
    return tasks


def require_lm_eval(tasks: Sequence[str]) -> None:
    """Fail at once, in one line, when the harness cannot run here."""
    spec = f"--knowledge {PREFIX}{','.join(tasks)}"
    if importlib.util.find_spec("lm_eval") is None:
        raise BadInputError(
            f"{spec} needs lm-evaluation-harness: pip install lm-eval (or drop --knowledge "
            "for the packaged NQ-open probe)"
        )
    require_hub(
        f"{spec} downloads its task data from the Hugging Face Hub, which cannot be reached: "
        "drop --knowledge for the packaged NQ-open probe, or run where the Hub is reachable "
        "(or with HF_DATASETS_OFFLINE=1 and the task data cached)"
    )


def check_knowledge(spec: str | None, problem: str) -> tuple[str, ...] | None:
    """``--knowledge`` parsed and checked before any work: harness tasks need a language model
    (a text-to-text stream), lm-eval installed and the Hub reachable."""
    tasks = parse_knowledge(spec)
    if tasks is None:
        return None
    if problem != "text-to-text":
        raise BadInputError(
            f"--knowledge {spec} probes a language model: drop it for {problem} streams "
            "(their probe is a frozen head on held-out data)"
        )
    require_lm_eval(tasks)
    return tasks


def first_metric(values: dict[str, Any]) -> tuple[str, float]:
    """A harness task's first numeric metric (its primary one), skipping standard errors."""
    for key, value in values.items():
        if isinstance(value, int | float) and "_stderr" not in key and key != "alias":
            return key, float(value)
    raise RuntimeError(f"lm-eval reported no metric: {sorted(values)}")


class LMEvalProbe:
    """Runs the harness tasks before the first task and after each (see the module docstring)."""

    def __init__(
        self, tasks: Sequence[str], tokenizer: Any, batch_size: int, limit: int | None
    ) -> None:
        self.tasks = list(tasks)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.limit = limit
        self.evaluations: list[dict[str, dict[str, float]]] = []

    def _evaluate(self, model: nn.Module) -> dict[str, dict[str, float]]:
        import lm_eval
        from lm_eval.models.huggingface import HFLM

        network = model.encoder
        if isinstance(network, PeftModel):  # the LoRA layers live inside the base model
            network = network.get_base_model()
        harness = HFLM(pretrained=network, tokenizer=self.tokenizer, batch_size=self.batch_size)
        results = lm_eval.simple_evaluate(model=harness, tasks=self.tasks, limit=self.limit)
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
            "probe": PREFIX + ",".join(self.tasks),
            "head": "none (lm-evaluation-harness)",
            "fit_examples": 0,
            "test_size": self.limit,
            "metric": "mean of " + ", ".join(f"{t}:{m}" for t, m in names.items()),
            **retention_summary(curve),
            "per_task": {
                task: [evaluation[task] for evaluation in self.evaluations] for task in names
            },
        }
