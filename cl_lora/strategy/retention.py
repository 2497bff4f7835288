"""How much pretrained knowledge survives the stream: a held-out probe task, scored with a frozen
head before the first task and after every task (language models: see :mod:`cl_lora.probes`).

The probe data is the modality's knowledge probe (:func:`cl_lora.streams.knowledge_probe`: Rotten
Tomatoes reviews for text, MNIST for vision), outside every stream. Its head is frozen for the
whole run, so a change in the probe score can only come from the encoder:

- when the backbone keeps its pretrained classifier for exactly that data (the offline MNIST
  ViT), that classifier is the head: the probe measures the pretraining task itself;
- otherwise a linear probe is fitted on the pretrained features of the probe's training
  examples before the stream starts (standardized features, multinomial logistic regression,
  folded into one linear layer).

Scoring reads the model as it stands (after task ``i``: the backbone with the merged earlier
adapters plus task ``i``'s adapter, exactly the function the task scores were measured with).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from cl_lora.backbones import Backbone, ContinualClassifier
from cl_lora.backbones.base import Inputs
from cl_lora.metrics import retention_summary
from cl_lora.probes import HARNESS_PREFIX, PROBES, KnowledgeSpec, Probe, ProbeContext, ProbeSet
from cl_lora.probes.closed_book import DEFAULT_QUESTIONS
from cl_lora.probes.harness import LMEvalProbe
from cl_lora.problems import Problem, TextToText
from cl_lora.streams import Stream, Task, knowledge_probe
from cl_lora.streams.sampling import balanced_sample


def _rows(dataset: Any) -> tuple[list[dict[str, Any]], np.ndarray]:
    rows = [dict(row) for row in dataset]
    labels = np.array([row.pop("label") for row in rows], dtype=np.int64)
    return rows, labels


def _capped(split: Any, cap: int | None, num_labels: int) -> Any:
    if cap is None or cap >= len(split):
        return split
    return split.select(np.sort(balanced_sample(split["label"], cap, num_labels)))


def fit_linear_probe(features: np.ndarray, labels: np.ndarray, num_labels: int) -> nn.Linear:
    """A linear head over raw features: logistic regression on standardized features, with the
    standardization folded into the weights (``W / sigma``, ``b - W mu / sigma``)."""
    mean, std = features.mean(0), features.std(0) + 1e-6
    model = LogisticRegression(max_iter=2000).fit((features - mean) / std, labels)
    weight = np.zeros((num_labels, features.shape[1]))
    bias = np.full(num_labels, -1e4)  # a class absent from the probe's training data never wins
    coef, intercept = model.coef_, model.intercept_
    if len(model.classes_) == 2:  # sklearn keeps one row for two classes: logit(1) - logit(0)
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-1, 1]) * intercept / 2
    weight[model.classes_] = coef / std
    bias[model.classes_] = intercept - (coef / std) @ mean
    # skip_init: a default-initialized layer would draw from the global torch RNG and so shift
    # every later random draw of the run (head inits, dropout) -- measuring retention must not
    # change what the stream trains
    head = torch.nn.utils.skip_init(nn.Linear, features.shape[1], num_labels)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight))
        head.bias.copy_(torch.from_numpy(bias))
    return head.requires_grad_(False)


class RetentionProbe:
    """Scores ``task`` (its test split) with a frozen head after every task of the stream.

    Call :meth:`start` once on the pretrained model (it fits the head if needed and returns the
    score before any training), then :meth:`score` after each task.
    """

    def __init__(
        self,
        task: Task,
        collate: Callable[[Sequence[dict[str, Any]]], Inputs],
        head: nn.Module | None = None,
        batch_size: int = 64,
    ) -> None:
        self.task = task
        self.collate = collate
        self.head = head
        self.head_source = "pretrained" if head is not None else "fitted"
        self.batch_size = batch_size
        self.fit_examples = 0
        self._test = _rows(task.test)

    @classmethod
    def for_backbone(
        cls,
        task: Task,
        backbone: Backbone,
        batch_size: int = 64,
        max_fit: int | None = None,
        max_test: int | None = None,
    ) -> RetentionProbe:
        """The backbone's own pretrained head when it was trained on ``task``'s data and label
        space, otherwise a head fitted in :meth:`start`. ``max_fit``/``max_test`` cap the probe's
        splits with class-balanced samples (the run's per-task caps, for quick runs)."""
        head = backbone.knowledge_head if backbone.knowledge == task.name else None
        if head is not None and getattr(head, "out_features", task.num_labels) != task.num_labels:
            head = None
        if max_fit is not None or max_test is not None:
            task = Task(
                task.name,
                _capped(task.train, max_fit, task.num_labels),
                _capped(task.test, max_test, task.num_labels),
                task.label_names,
                task.metric,
            )
        return cls(task, backbone.collate, head, batch_size)

    @torch.no_grad()
    def _features(self, model: ContinualClassifier, rows: list[dict[str, Any]]) -> torch.Tensor:
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        parts = []
        for start in range(0, len(rows), self.batch_size):
            inputs = self.collate(rows[start : start + self.batch_size])
            parts.append(model.features({k: v.to(device) for k, v in inputs.items()}).float())
        model.train(was_training)
        return torch.cat(parts)

    def start(self, model: ContinualClassifier) -> float:
        """Fit the head on the pretrained features (unless pretrained); the score before task 1."""
        if self.head is None:
            rows, labels = _rows(self.task.train)
            features = self._features(model, rows).cpu().numpy().astype(np.float64)
            self.head = fit_linear_probe(features, labels, self.task.num_labels)
            self.fit_examples = len(rows)
        return self.score(model)

    def score(self, model: ContinualClassifier) -> float:
        """The probe task's primary score with the frozen head on the model's current features."""
        if self.head is None:
            raise RuntimeError("RetentionProbe.start must run before score")
        rows, labels = self._test
        features = self._features(model, rows)
        head = self.head.to(features.device)
        predictions = head(features.to(next(head.parameters()).dtype)).argmax(1).cpu().numpy()
        return self.task.score(predictions, labels)["score"]

    def checkpoint_state(self) -> dict[str, Any]:
        """The fitted head's weights: a resumed run cannot refit it (its model is no longer
        pretrained). A pretrained head comes with the backbone and is not stored."""
        fitted = self.head_source == "fitted" and self.head is not None
        return {
            "head": self.head.state_dict() if fitted else None,
            "fit_examples": self.fit_examples,
        }

    def restore_checkpoint_state(self, state: dict[str, Any]) -> None:
        if state["head"] is not None:
            out_features, in_features = state["head"]["weight"].shape
            head = torch.nn.utils.skip_init(nn.Linear, in_features, out_features)
            head.load_state_dict(state["head"])
            self.head = head.requires_grad_(False)
        self.fit_examples = state["fit_examples"]

    def record(self, curve: Sequence[float]) -> dict[str, Any]:
        """The result file's ``retention`` entry: what was probed, how, and the curve."""
        return {
            "probe": self.task.name,
            "head": self.head_source,
            "fit_examples": self.fit_examples,
            "test_size": len(self.task.test),
            "metric": self.task.metric,
            **retention_summary(curve),
        }


def knowledge_probe_for(
    stream: Stream,
    problem: Problem,
    batch_size: int = 64,
    max_fit: int | None = None,
    max_test: int | None = None,
    knowledge: KnowledgeSpec | None = None,
    probe_size: int = DEFAULT_QUESTIONS,
    lm_eval_include: str | None = None,
) -> RetentionProbe | Probe:
    """The retention probe of a run: a frozen head on the held-out probe task for a classifier;
    for a language model, closed-book NQ-open by default, else the probes ``knowledge`` names
    (several: a :class:`~cl_lora.probes.ProbeSet`), lm-evaluation-harness tasks among them.
    Each language-model probe scores ``probe_size`` examples (at most ``max_test``, the run's
    per-task cap, for quick runs); ``max_fit``/``max_test`` shrink a classifier's probe."""
    if not isinstance(problem, TextToText):
        return RetentionProbe.for_backbone(
            knowledge_probe(stream.knowledge),
            problem.backbone,
            batch_size=batch_size,
            max_fit=max_fit,
            max_test=max_test,
        )
    knowledge = knowledge or KnowledgeSpec(("nq-open",), ())
    context = ProbeContext(problem, stream, min(probe_size, max_test or probe_size), batch_size)
    probes: dict[str, Probe] = {n: PROBES.get(n).build(context) for n in knowledge.probes}
    if knowledge.harness:  # checked up front by probes.harness.check_knowledge
        harness = LMEvalProbe(
            knowledge.harness, problem.tokenizer, batch_size, max_test, lm_eval_include
        )
        probes[HARNESS_PREFIX + ",".join(knowledge.harness)] = harness
    return next(iter(probes.values())) if len(probes) == 1 else ProbeSet(probes)
