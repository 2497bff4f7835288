"""Text-to-text tasks: instructions a language model answers by generating the label's name.

A text-to-text example is a ``prompt`` (an instruction, the input, then the answer cue
``Answer:``) and a ``target``, the answer text (no leading space), which is always
``label_names[label]``. Generations are scored by exact match after
:func:`~cl_lora.streams.scoring.normalize_answer`, so a task's label names must stay distinct
in that form: the option letters A, B, ... do not (``normalize_answer("A")`` is empty, it drops
the article "a"), so multiple-choice tasks number their options 1, 2, ... instead. Every
instruction lists the allowed answers ("Choose one of: ..."), which is what lets a model that
has not been trained on the task answer in the label space at all.

``offline-instruct`` (task-incremental, no heads, the ``smollm2-135m`` language model) asks the
five ``offline-text`` tasks, in the same order, as instructions with label words as targets::

    <instruction> Choose one of: <label words, comma-separated>
    <field>: <text>
    Answer:

(boolq-relevance has two input lines, ``Passage: <passage>`` then ``Question: <question>``: the
question comes last so that a prompt cut to the token budget, which keeps its first and last
tokens, still holds the passage's start and the whole question.)

with, per task (instruction; field; label words in label-id order):

- movie-sentiment: "What is the sentiment of the following movie review?"; Review; negative,
  positive
- sms-spam: "Is the following text message spam?"; Message; not spam, spam
- trec-question: "What kind of answer does the following question ask for?"; Question;
  abbreviation, entity, description, human, location, number
- boolq-relevance: "Is the passage taken from the article that answers the question?";
  Passage, then Question; no (another question's passage), yes (its own)
- tweet-sentiment: "What is the sentiment of the following tweet?"; Tweet; negative, neutral,
  positive

SMS "ham" becomes "not spam", TREC's coarse tags become words (ABBR -> abbreviation, ...) and
boolq-relevance's own/other passage becomes yes/no: words a small language model can emit.

Its examples are a subset of ``offline-text``'s: each task is built as ``offline-text`` builds
it (at its default 1000/300 caps), then a fixed-seed, class-balanced sample of
:data:`DEFAULT_TRAIN` examples of its train split and :data:`DEFAULT_TEST` of its test split is
kept (``StreamOptions`` caps replace these numbers, up to the split's size: see ``offline``),
so the train/test separation is ``offline-text``'s. Its texts enter the prompts verbatim (a few
SMS and tweets span several lines). At the defaults every task has 96 train and 50 test
examples; chance (the test set's majority label) is 0.50 for the binary tasks, 0.18 for
trec-question (9 of 50) and 0.34 for tweet-sentiment (17 of 50).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cl_lora.lazy import lazy_module
from cl_lora.streams.base import Stream, StreamOptions, Task, to_dataset
from cl_lora.streams.offline import offline_text_tasks, reject_data_dir
from cl_lora.streams.prompts import choose_one_of, prompt
from cl_lora.streams.registry import register
from cl_lora.streams.sampling import balanced_sample
from cl_lora.streams.scoring import ANSWER_FORMS

datasets = lazy_module("datasets")
pd = lazy_module("pandas")

DEFAULT_TRAIN = 96  # x 2 epochs: the whole default run fits 15 minutes on 2 CPU cores
DEFAULT_TEST = 50
LM_BACKBONE = "smollm2-135m"


@dataclass(frozen=True)
class Wording:
    """How a classification task is asked: the instruction, the name of each input field
    (``text``, then ``text_pair``) and the answer word of each label id."""

    instruction: str
    fields: tuple[str, ...]
    label_words: tuple[str, ...]
    question_last: bool = False  # the pair's second field first: a long passage then comes
    # before the question, and a prompt cut to the token budget keeps its end (the question)


# offline-text task name -> its wording; label words are in the task's label-id order.
WORDINGS = {
    "movie-sentiment": Wording(
        "What is the sentiment of the following movie review?",
        ("Review",),
        ("negative", "positive"),
    ),
    "sms-spam": Wording("Is the following text message spam?", ("Message",), ("not spam", "spam")),
    "trec-question": Wording(
        "What kind of answer does the following question ask for?",
        ("Question",),
        ("abbreviation", "entity", "description", "human", "location", "number"),
    ),
    "boolq-relevance": Wording(
        "Is the passage taken from the article that answers the question?",
        ("Question", "Passage"),
        ("no", "yes"),
        question_last=True,
    ),
    "tweet-sentiment": Wording(
        "What is the sentiment of the following tweet?",
        ("Tweet",),
        ("negative", "neutral", "positive"),
    ),
}


def text_to_text_task(
    name: str,
    train: pd.DataFrame,
    test: pd.DataFrame,
    label_names: Sequence[str],
    answer_form: str = "squad",
) -> Task:
    """An exact-match task from frames with ``prompt`` and ``label`` (and ``target``, the
    answer text, where it is not the label's name); generations are normalized the
    ``answer_form`` way. Label names that collide after that normalization could never be told
    apart: an error."""
    normalized = [ANSWER_FORMS[answer_form](label) for label in label_names]
    if "" in normalized or len(set(normalized)) != len(normalized):
        raise ValueError(f"task {name}: label names {label_names} collide when normalized")

    def split(frame: pd.DataFrame) -> datasets.Dataset:
        if "target" in frame:
            return to_dataset(frame[["prompt", "label", "target"]], label_names)
        targets = [label_names[label] for label in frame["label"]]
        return to_dataset(frame[["prompt", "label"]].assign(target=targets), label_names)

    return Task(name, split(train), split(test), tuple(label_names), "exact_match", answer_form)


def _lines(wording: Wording, example: dict[str, str]) -> list[str]:
    """``example``'s input columns, each on a line after its field name."""
    columns = ("text", "text_pair")[: len(wording.fields)]
    lines = [f"{field}: {example[c]}" for field, c in zip(wording.fields, columns, strict=True)]
    return lines[::-1] if wording.question_last else lines


def _instructions(split: datasets.Dataset, wording: Wording, n: int) -> pd.DataFrame:
    """A class-balanced sample of ``n`` rows of ``split`` (fixed seed), asked as ``wording``."""
    rows = balanced_sample(np.asarray(split["label"]), n, len(wording.label_words))
    sample = split.select(rows)
    instruction = choose_one_of(wording.instruction, wording.label_words)
    prompts = [prompt(instruction, _lines(wording, example)) for example in sample]
    return pd.DataFrame({"prompt": prompts, "label": sample["label"]})


def _reword(task: Task, options: StreamOptions) -> Task:
    """``task`` (an offline-text task) as a capped text-to-text task with the same splits."""
    wording = WORDINGS[task.name]
    train = _instructions(task.train, wording, options.max_train_per_task or DEFAULT_TRAIN)
    test = _instructions(task.test, wording, options.max_test_per_task or DEFAULT_TEST)
    return text_to_text_task(task.name, train, test, wording.label_words)


@register(
    "offline-instruct",
    "offline-text's 5 tasks as instructions for a language model (label words as answers)",
    recipe={"max_length": 96},  # the other tasks' prompts fit; boolq-relevance's are cut
)
def build_offline_instruct(options: StreamOptions) -> Stream:
    """Task-incremental text-to-text stream: offline-text's tasks, reworded and subsampled."""
    reject_data_dir("offline-instruct", options)
    tasks = tuple(_reword(task, options) for task in offline_text_tasks(StreamOptions()))
    return language_model_stream("offline-instruct", tasks)


def language_model_stream(
    name: str,
    tasks: Sequence[Task],
    provenance: dict[str, Any] | None = None,
    text_format: str = "spaced",
) -> Stream:
    """A task-incremental text-to-text stream of ``tasks`` on the packaged language model."""
    return Stream(
        name,
        tuple(tasks),
        scenario="task",
        modality="text",
        shared_head=False,
        backbone=LM_BACKBONE,
        problem="text-to-text",
        provenance=provenance,
        text_format=text_format,
    )
