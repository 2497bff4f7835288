"""GLUE-style scoring: each metric is a plain function of (predictions, labels).

GLUE's ``evaluate`` metric scripts are thin wrappers over these scikit-learn calls and are
fetched from the Hub at run time, so they cannot be used offline; we call scikit-learn directly.

MRPC and QQP are scored with accuracy *and* F1; their primary value ``acc_and_f1`` is the mean
of the two, as the GLUE leaderboard averages them (and as transformers' former
``glue_compute_metrics`` named it).

Free-text answers (a summary, a line of code) are scored by a *text metric* instead
(:data:`TEXT_METRICS`): one example's value in [0, 1] from the generation, the gold answer and
the prompt. The language model's problem computes it per example while it evaluates, and the
task's score is the mean over its test examples.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib.util import find_spec

import numpy as np

from cl_lora.errors import BadInputError
from cl_lora.registry import Registry

ArrayLike = Sequence[int] | np.ndarray


def accuracy(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of predictions equal to the label."""
    from sklearn.metrics import accuracy_score  # sklearn loads in seconds: only when scoring

    return float(accuracy_score(labels, predictions))


def f1(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Binary F1 of the positive class (label 1); 0.0 when nothing is predicted positive."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels, predictions, average="binary", pos_label=1, zero_division=0))


def matthews_correlation(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Matthews correlation coefficient (CoLA's metric), in [-1, 1]; 0.0 for a constant guess."""
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(labels, predictions))


def acc_and_f1(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Mean of accuracy and binary F1 (the single GLUE number for MRPC and QQP)."""
    return (accuracy(predictions, labels) + f1(predictions, labels)) / 2


def normalize_answer(text: str) -> str:
    """SQuAD answer normalization: lower-case, drop punctuation and the articles a/an/the,
    collapse white space. Exact match compares answers in this form (the ``squad`` form)."""
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", normalize_olora(text)).split())


def normalize_olora(text: str) -> str:
    """O-LoRA's normalization (its ``compute_metrics.py``: SQuAD's without removing the
    articles): lower-case, drop punctuation, collapse white space."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(text.split())


#: How a text-to-text task's generations are normalized before exact match (``Task.answer_form``).
ANSWER_FORMS: dict[str, Callable[[str], str]] = {
    "squad": normalize_answer,
    "o-lora": normalize_olora,
}


def exact_match(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Exact match of generated answers, given as label ids: a generation is mapped to the id
    of the label text it equals after :func:`normalize_answer` (-1 when it equals none), so
    exact match is the accuracy of those ids -- except that a gold label outside the task's
    label set (-1, e.g. MNLI's ``-``) is never matched, as in O-LoRA's scoring."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    return float(np.mean((predictions == labels) & (labels >= 0)))


METRICS: dict[str, Callable[[ArrayLike, ArrayLike], float]] = {
    "accuracy": accuracy,
    "exact_match": exact_match,
    "f1": f1,
    "matthews_correlation": matthews_correlation,
    "acc_and_f1": acc_and_f1,
}

# Metrics whose value is the mean of others: a task reports the parts next to the mean.
COMPOSITE: dict[str, tuple[str, ...]] = {"acc_and_f1": ("accuracy", "f1")}


@dataclass(frozen=True)
class TextMetric:
    """A metric of generated text: ``score(generation, answer, prompt)`` is one example's value
    in [0, 1]. ``requires`` names the modules it imports (an optional extra's packages)."""

    name: str
    description: str
    score: Callable[[str, str, str], float]
    requires: tuple[str, ...] = ()


TEXT_METRICS: Registry[TextMetric] = Registry("text metric")


def register_text_metric(
    name: str, description: str, requires: tuple[str, ...] = ()
) -> Callable[[Callable[[str, str, str], float]], Callable[[str, str, str], float]]:
    """Decorator that makes ``score(generation, answer, prompt) -> [0, 1]`` text metric
    ``name``."""

    def decorate(function: Callable[[str, str, str], float]) -> Callable[[str, str, str], float]:
        TEXT_METRICS.add(name, TextMetric(name, description, function, tuple(requires)))
        return function

    return decorate


def is_text_metric(metric: str) -> bool:
    """Whether ``metric`` scores generated text (rather than predicted label ids)."""
    return metric in TEXT_METRICS.available()


def text_scores(
    metric: str, generations: Iterable[str], answers: Iterable[str], prompts: Iterable[str]
) -> list[float]:
    """Text metric ``metric`` of each example."""
    score_one = TEXT_METRICS.get(metric).score
    return [
        score_one(generation, answer, prompt)
        for generation, answer, prompt in zip(generations, answers, prompts, strict=True)
    ]


def missing_packages(metrics: Iterable[str]) -> list[str]:
    """The modules the text metrics among ``metrics`` import that are not installed."""
    needed = {
        module
        for metric in metrics
        if is_text_metric(metric)
        for module in TEXT_METRICS.get(metric).requires
    }
    return sorted(module for module in needed if find_spec(module) is None)


def score(metric: str, predictions: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """Every metric a task with primary ``metric`` reports, plus ``"score"`` (the primary).
    For a text metric the predictions are the examples' values, and the task's is their mean."""
    known = metric in METRICS or is_text_metric(metric)
    if not known:
        choices = ", ".join([*METRICS, *TEXT_METRICS.available()])
        raise BadInputError(f"unknown metric '{metric}': choose one of {choices}")
    predictions = np.asarray(predictions).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if predictions.shape != labels.shape:
        raise ValueError(f"{predictions.size} predictions for {labels.size} labels")
    if is_text_metric(metric):
        mean = float(np.mean(predictions.astype(float)))
        return {metric: mean, "score": mean}
    values = {part: METRICS[part](predictions, labels) for part in COMPOSITE.get(metric, ())}
    values[metric] = METRICS[metric](predictions, labels)
    values["score"] = values[metric]
    return values
