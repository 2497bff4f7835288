"""The cl-benchmark and long-15 streams: published orders, --order/--tasks, O-LoRA's file
layout (real files when the shared copy is present, small constructed folders otherwise),
prompts, answer normalization, errors, and a run through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cl_lora import streams
from cl_lora.errors import BadInputError
from cl_lora.streams.cl_benchmark import ORDERS, POOL, STREAM_ORDERS, task_sequence
from cl_lora.streams.scoring import ANSWER_FORMS

# O-LoRA's own files (MIT), kept outside the project: tests read small slices when present.
OLORA = Path(__file__).resolve().parents[2] / "shared/data/o-lora-cl-benchmark"
needs_olora = pytest.mark.skipif(
    not (OLORA / "CL_Benchmark").is_dir(), reason="O-LoRA's CL_Benchmark copy is not here"
)


def options(**kwargs) -> streams.StreamOptions:
    return streams.StreamOptions(**kwargs)


def write_task(root: Path, group: str, folder: str, labels: list[str], rows: int = 12) -> None:
    """A task folder in O-LoRA's layout with ``rows`` train and test examples per split."""
    path = root / "CL_Benchmark" / group / folder
    path.mkdir(parents=True)
    (path / "labels.json").write_text(json.dumps(labels))
    for split in ("train", "test", "dev"):
        examples = [
            {"sentence": f"Text: {split} example {i} about {labels[i % len(labels)]}\n",
             "label": labels[i % len(labels)]}
            for i in range(rows)
        ]  # fmt: skip
        (path / f"{split}.json").write_text(json.dumps(examples))


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    """A constructed folder with two tasks (no configs/: built-in instructions)."""
    write_task(tmp_path, "COPA", "COPA", ["A", "B"])
    write_task(tmp_path, "TC", "agnews", ["World", "Sports", "Business", "Science or Technology"])
    return tmp_path


def test_orders_are_the_published_sequences() -> None:
    # 1-3: O-LoRA scripts/order_1.sh, order_2.sh, order_3.sh (cmnfriend/O-LoRA @ 07117e1)
    assert ORDERS[1] == ("dbpedia", "amazon", "yahoo", "agnews")
    assert ORDERS[2] == ("dbpedia", "amazon", "agnews", "yahoo")
    assert ORDERS[3] == ("yahoo", "amazon", "agnews", "dbpedia")
    # 6: O-LoRA scripts/long.sh, task for task
    assert ORDERS[6] == tuple(
        "yelp amazon mnli cb copa qqp rte imdb "
        "sst-2 dbpedia agnews yahoo multirc boolqa wic".split()
    )
    # 4, 5: Progressive Prompts' long-sequence orders (results/references/SOURCES.md)
    assert ORDERS[4] == tuple(
        "mnli cb wic copa qqp boolqa rte imdb "
        "yelp amazon sst-2 dbpedia agnews multirc yahoo".split()
    )
    assert ORDERS[5] == tuple(
        "multirc boolqa wic mnli cb copa qqp rte "
        "imdb sst-2 dbpedia agnews yelp amazon yahoo".split()
    )
    for order in (4, 5, 6):
        assert sorted(ORDERS[order]) == sorted(POOL)  # each long order is the whole pool
    assert STREAM_ORDERS == {"cl-benchmark": (1, 2, 3), "long-15": (4, 5, 6)}


def test_order_and_task_selection() -> None:
    assert task_sequence("cl-benchmark", options()) == (ORDERS[1], "cl-benchmark-order1")
    assert task_sequence("long-15", options(order=6))[1] == "long-15-order6"
    names, name = task_sequence("cl-benchmark", options(tasks=("SST2", "agnews", "boolq")))
    assert names == ("sst-2", "agnews", "boolqa") and name == "cl-benchmark:sst-2,agnews,boolqa"
    for bad, message in [
        (options(order=4), "cl-benchmark has orders 1, 2, 3, not 4"),
        (options(order=1, tasks=("agnews",)), "pass --order or --tasks, not both"),
        (options(tasks=("agnew",)), "did you mean 'agnews'"),
        (options(tasks=("agnews", "ag_news")), "names a task twice"),
    ]:
        with pytest.raises(BadInputError, match=message):
            task_sequence("cl-benchmark", bad)


def test_streams_with_one_order_refuse_order() -> None:
    with pytest.raises(BadInputError, match="has one fixed order: drop --order"):
        streams.build("offline-instruct", options(order=1))


def test_no_data_dir_says_to_pass_it() -> None:
    with pytest.raises(BadInputError, match="pass --data-dir") as error:
        streams.build("long-15", options())
    assert "\n" not in str(error.value)


def test_constructed_layout_prompts_and_built_in_instructions(layout: Path) -> None:
    stream = streams.build("cl-benchmark", options(data_dir=layout, tasks=("copa", "agnews")))
    copa, agnews = stream.tasks
    assert stream.name == "cl-benchmark:copa,agnews" and stream.problem == "text-to-text"
    assert stream.provenance["instructions"].startswith("built in")
    assert copa.label_names == ("A", "B") and copa.answer_form == "o-lora"
    assert copa.train[0]["prompt"] == (
        "Task:COPA\nDataset:COPA\nText: train example 0 about A\n\nAnswer:"
    )
    assert agnews.train[1]["prompt"] == (
        "Task:TC\nDataset:agnews\nWhat is the topic of the following paragraph? Choose one "
        "from the option.\nOption: World, Sports, Business, Science or Technology \n"
        "Text: train example 1 about Sports\n\nAnswer:"
    )
    assert agnews.train[1]["target"] == "Sports" and agnews.train[1]["label"] == 1
    assert len(agnews.train) == len(agnews.test) == 12  # the files' sizes, dev.json unread
    capped = streams.build(
        "cl-benchmark", options(data_dir=layout / "CL_Benchmark", tasks=("agnews",),
                                max_train_per_task=8, max_test_per_task=4)
    )  # fmt: skip
    assert len(capped.tasks[0].train) == 8 and sorted(capped.tasks[0].test["label"]) == [0, 1, 2, 3]


def test_answers_keep_articles_the_o_lora_way() -> None:
    normalize = ANSWER_FORMS["o-lora"]
    assert normalize(" A.") == "a" and normalize("B") == "b"  # COPA's labels stay apart
    assert ANSWER_FORMS["squad"]("A") == ""  # SQuAD's form would merge them with nothing
    assert normalize("Science or  Technology!") == "science or technology"


def test_missing_files_are_one_line_errors(layout: Path) -> None:
    (layout / "CL_Benchmark/TC/agnews/test.json").unlink()
    with pytest.raises(BadInputError) as error:
        streams.build("cl-benchmark", options(data_dir=layout, order=1))
    message = str(error.value)
    for missing in ("TC/dbpedia/train.json", "SC/amazon/labels.json", "TC/agnews/test.json"):
        assert missing in message
    assert "\n" not in message and "TC/agnews/train.json" not in message


def test_labels_outside_labels_json_count_and_are_never_right(layout: Path) -> None:
    """O-LoRA keeps examples whose label is not in labels.json (MNLI's test file: 131 labelled
    '-'): they count in the test set and no answer matches them; training teaches their text."""
    from cl_lora.streams.scoring import score

    folder = layout / "CL_Benchmark/COPA/COPA"
    rows = [{"sentence": f"s{i}", "label": label} for i, label in enumerate("AB-A-")]
    (folder / "test.json").write_text(json.dumps(rows))
    (folder / "train.json").write_text(json.dumps(rows[:3]))
    stream = streams.build("cl-benchmark", options(data_dir=layout, tasks=("copa",)))
    copa = stream.tasks[0]
    assert len(copa.test) == 5 and list(copa.test["label"]) == [0, 1, -1, 0, -1]
    assert stream.provenance["unlisted_labels"] == {"copa": {"train": 1, "test": 2}}
    assert copa.train[2]["target"] == "-"  # what O-LoRA's collator appends to the prompt
    # a generation equal to no label is -1 too: still wrong against an unlisted gold label
    assert score("exact_match", [0, 1, -1, 0, -1], copa.test["label"])["score"] == 3 / 5
    capped = streams.build("cl-benchmark", options(data_dir=layout, tasks=("copa",),
                                                   max_test_per_task=2))  # fmt: skip
    assert sorted(capped.tasks[0].test["label"]) == [0, 1]  # a sample draws listed labels


@needs_olora
def test_reads_the_real_olora_files() -> None:
    stream = streams.build(
        "cl-benchmark",
        options(data_dir=OLORA / "CL_Benchmark", tasks=("amazon", "agnews"),
                max_train_per_task=40, max_test_per_task=20),
    )  # fmt: skip
    amazon, agnews = stream.tasks
    assert stream.provenance["instructions"] == str(OLORA / "configs/instruction_config.json")
    assert amazon.label_names == ("very negative", "negative", "neutral", "positive",
                                  "very positive")  # fmt: skip
    assert agnews.label_names == ("World", "Sports", "Business", "Science or Technology")
    assert amazon.train[0]["prompt"].startswith(
        "Task:SC\nDataset:amazon\nWhat is the sentiment of the following paragraph? Choose one "
        "from the option.\nOption: very negative, negative, neutral, positive, very positive "
        "\nTitle: "
    )
    assert sorted(set(agnews.test["label"])) == [0, 1, 2, 3] and len(agnews.test) == 20
    assert amazon.chance == pytest.approx(0.2)
    full = streams.build("cl-benchmark", options(data_dir=OLORA, tasks=("agnews",)))
    assert (len(full.tasks[0].train), len(full.tasks[0].test)) == (4000, 7600)
    with pytest.raises(BadInputError, match="TC/yahoo/train.json"):  # not in the shared copy
        streams.build("cl-benchmark", options(data_dir=OLORA, order=1))


def olora_prompt(group: str, dataset: str, sentence: str, labels: list, zero_shot: str) -> str:
    """The prompt O-LoRA's code builds for one example (cmnfriend/O-LoRA @ 07117e1), written
    out from its source:

    - src/uie_dataset_lora.py, load_SC_dataset line 283 (and every other loader but COPA's):
      ``instruction = zero-shot instruction + "Option: " + ", ".join(labels) + " \\n" + "{0}"
      + "\\nAnswer:"``; load_COPA_dataset line 413: ``instruction = "{0}" + "\\nAnswer:"``;
    - src/uie_collator.py, get_instruction lines 59-78 with ``--add_task_name True
      --add_dataset_name True`` (every script): ``prefix = "Task:" + Task + "\\n" +
      "Dataset:" + Dataset + "\\n"``, ``instruction = (prefix + instruction).format(sentence)``.
    """
    if group == "COPA":
        instruction = "{0}" + "\nAnswer:"
    else:
        instruction = zero_shot + "Option: " + ", ".join(labels) + " \n" + "{0}" + "\nAnswer:"
    prefix = "Task:" + group + "\n"
    prefix = prefix + "Dataset:"
    prefix = prefix + dataset + "\n"
    return (prefix + instruction).format(sentence)


@needs_olora
def test_prompts_equal_olora_collator_on_its_real_files() -> None:
    """For the first examples of every task in the shared copy of O-LoRA's files, train and
    test, the stream's prompt is exactly what O-LoRA's dataset code and collator build."""
    config = json.loads((OLORA / "configs/instruction_config.json").read_text())
    zero_shot = {group: entries[0]["instruction"] for group, entries in config.items()}
    root = OLORA / "CL_Benchmark"
    present = [
        name for name, task in POOL.items()
        if all((root / task.path / f).is_file() for f in ("train.json", "test.json", "labels.json"))
    ]  # fmt: skip
    assert {"amazon", "agnews"} <= set(present)
    stream = streams.build("cl-benchmark", options(data_dir=OLORA, tasks=tuple(present)))
    for task in stream.tasks:
        pool = POOL[task.name]
        labels = json.loads((root / pool.path / "labels.json").read_text())
        for split, file in ((task.train, "train.json"), (task.test, "test.json")):
            raw = json.loads((root / pool.path / file).read_text())[:5]
            for i, example in enumerate(raw):
                expected = olora_prompt(
                    pool.group, pool.folder, example["sentence"], labels, zero_shot[pool.group]
                )
                assert split[i]["prompt"] == expected, (task.name, file, i)
                assert split[i]["target"] == example["label"]


def test_a_run_on_the_benchmark_layout(layout: Path, tmp_path: Path, capsys) -> None:
    """``python -m cl_lora.run --stream cl-benchmark --tasks ...`` on a tiny Llama: the stream's
    name, order/tasks in the config, provenance in result.json; a missing file exits 2."""
    from llm_fixtures import tiny_llama_dir

    from cl_lora.run import main

    folder = tiny_llama_dir(tmp_path)
    common = ["--stream", "cl-benchmark", "--data-dir", str(layout), "--backbone", folder,
              "--max-train-per-task", "4", "--max-test-per-task", "4", "--epochs", "1",
              "--max-length", "96", "--quiet", "--output-dir", str(tmp_path / "runs")]  # fmt: skip
    assert main([*common, "--tasks", "copa,agnews"]) == 0
    result = json.loads(next((tmp_path / "runs").glob("*/result.json")).read_text())
    assert result["stream"]["name"] == "cl-benchmark:copa,agnews"
    assert result["config"]["tasks"] == ["copa", "agnews"] and result["config"]["order"] is None
    assert result["stream"]["provenance"]["tasks"] == ["copa", "agnews"]
    assert result["problem"]["generation"]["answer_forms"] == {"copa": "o-lora", "agnews": "o-lora"}
    assert [task["name"] for task in result["tasks"]] == ["copa", "agnews"]
    capsys.readouterr()
    assert main([*common, "--order", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "TC/dbpedia/train.json" in err and len(err.splitlines()) == 1
    assert len(list((tmp_path / "runs").iterdir())) == 1  # nothing written for the failure
