"""``glue-seq``: the GLUE classification tasks as a task-incremental stream.

Order: cola, sst2, mrpc, qqp, mnli, qnli, rte. WNLI is left out (its dev set is adversarial:
train and dev share sentences with flipped labels) and so is STS-B (regression, no classes).
GLUE's test labels are hidden, so a task's test set is its validation split (MNLI: the matched
one). Metrics are GLUE's: CoLA Matthews correlation; MRPC and QQP accuracy and F1 with their
mean as the primary score; the rest accuracy.

Data comes from the Hub (``nyu-mll/glue``) or, with ``--data-dir DIR``, from a local folder in
the standard TSV layout written by the classic ``download_glue_data.py``. Label ids follow the
Hub's ``ClassLabel`` order in both cases, so results are comparable. The official splits are
used as they are (no deduplication); a cap draws a class-balanced sample (see ``sampling``),
and without caps a task keeps its whole train and validation split.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from cl_lora.errors import BadInputError
from cl_lora.hub import load_hub_dataset, no_network_message, require_hub
from cl_lora.lazy import lazy_module
from cl_lora.streams.base import Stream, StreamOptions, Task, to_dataset
from cl_lora.streams.registry import register
from cl_lora.streams.sampling import balanced_sample

datasets = lazy_module("datasets")
pd = lazy_module("pandas")

HUB_DATASET = "nyu-mll/glue"
NO_NETWORK = no_network_message(
    "glue-seq", "the GLUE data", HUB_DATASET, "a local GLUE folder (standard TSV layout)"
)
BINARY = {"0": 0, "1": 1}
NLI_BINARY = {"entailment": 0, "not_entailment": 1}


@dataclass(frozen=True)
class GlueTask:
    """Where one GLUE task's columns live in the Hub dataset and in the TSV layout."""

    name: str  # Hub config name, also the task name
    folder: str  # folder in the TSV layout
    test_file: str  # validation TSV
    hub_test_split: str
    hub_columns: tuple[str, ...]  # text[, text_pair]
    tsv_columns: tuple[str, ...]  # text[, text_pair], label
    tsv_labels: dict[str, int]  # TSV label string -> Hub label id
    label_names: tuple[str, ...]  # Hub ClassLabel names, in id order
    metric: str
    tsv_header: tuple[str, ...] | None = None  # column names for a headerless TSV


GLUE_TASKS = (
    GlueTask(
        name="cola", folder="CoLA", test_file="dev.tsv", hub_test_split="validation",
        hub_columns=("sentence",), tsv_columns=("sentence", "label"), tsv_labels=BINARY,
        label_names=("unacceptable", "acceptable"), metric="matthews_correlation",
        tsv_header=("source", "label", "original_label", "sentence"),
    ),
    GlueTask(
        name="sst2", folder="SST-2", test_file="dev.tsv", hub_test_split="validation",
        hub_columns=("sentence",), tsv_columns=("sentence", "label"), tsv_labels=BINARY,
        label_names=("negative", "positive"), metric="accuracy",
    ),
    GlueTask(
        name="mrpc", folder="MRPC", test_file="dev.tsv", hub_test_split="validation",
        hub_columns=("sentence1", "sentence2"),
        tsv_columns=("#1 String", "#2 String", "Quality"), tsv_labels=BINARY,
        label_names=("not_equivalent", "equivalent"), metric="acc_and_f1",
    ),
    GlueTask(
        name="qqp", folder="QQP", test_file="dev.tsv", hub_test_split="validation",
        hub_columns=("question1", "question2"),
        tsv_columns=("question1", "question2", "is_duplicate"), tsv_labels=BINARY,
        label_names=("not_duplicate", "duplicate"), metric="acc_and_f1",
    ),
    GlueTask(
        name="mnli", folder="MNLI", test_file="dev_matched.tsv",
        hub_test_split="validation_matched", hub_columns=("premise", "hypothesis"),
        tsv_columns=("sentence1", "sentence2", "gold_label"),
        tsv_labels={"entailment": 0, "neutral": 1, "contradiction": 2},
        label_names=("entailment", "neutral", "contradiction"), metric="accuracy",
    ),
    GlueTask(
        name="qnli", folder="QNLI", test_file="dev.tsv", hub_test_split="validation",
        hub_columns=("question", "sentence"), tsv_columns=("question", "sentence", "label"),
        tsv_labels=NLI_BINARY, label_names=("entailment", "not_entailment"), metric="accuracy",
    ),
    GlueTask(
        name="rte", folder="RTE", test_file="dev.tsv", hub_test_split="validation",
        hub_columns=("sentence1", "sentence2"), tsv_columns=("sentence1", "sentence2", "label"),
        tsv_labels=NLI_BINARY, label_names=("entailment", "not_entailment"), metric="accuracy",
    ),
)  # fmt: skip
LAYOUT = "standard GLUE TSV layout: " + ", ".join(
    f"{task.folder}/{{train.tsv,{task.test_file}}}" for task in GLUE_TASKS
)


def _read_tsv(path: Path, task: GlueTask) -> datasets.Dataset:
    """One GLUE TSV file as a Dataset with text[, text_pair] and Hub label ids."""
    try:
        frame = pd.read_csv(
            path,
            sep="\t",
            quoting=csv.QUOTE_NONE,  # GLUE text contains bare quotes
            header=None if task.tsv_header else 0,
            names=task.tsv_header,
            dtype=str,
            keep_default_na=False,  # "null", "NA" are sentences here
            on_bad_lines="skip",  # a line with stray tabs is unparseable: drop it
            encoding="utf-8-sig",  # the MRPC files start with a byte-order mark
        )
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise BadInputError(f"cannot read {path}: {error}") from error
    missing = [column for column in task.tsv_columns if column not in frame.columns]
    if missing:
        raise BadInputError(
            f"{path} lacks columns {missing} (found {list(frame.columns)}); expected the {LAYOUT}"
        )
    *text_columns, label_column = task.tsv_columns
    # rows with missing fields or an unknown label (e.g. truncated lines) are dropped
    labels = frame[label_column].str.strip().map(task.tsv_labels)
    frame = frame[labels.notna()]
    if frame.empty:
        raise BadInputError(
            f"{path} has no rows with a {label_column} in {sorted(task.tsv_labels)}"
        )
    names = ("text", "text_pair")[: len(text_columns)]
    columns = {name: frame[column] for name, column in zip(names, text_columns, strict=True)}
    columns["label"] = labels[labels.notna()].astype(int)
    return to_dataset(pd.DataFrame(columns), task.label_names)


def _local_splits(data_dir: Path) -> dict[str, tuple[datasets.Dataset, datasets.Dataset]]:
    if not data_dir.is_dir():
        raise BadInputError(f"--data-dir {data_dir} is not a directory; expected the {LAYOUT}")
    missing = [
        f"{task.folder}/{file}"
        for task in GLUE_TASKS
        for file in ("train.tsv", task.test_file)
        if not (data_dir / task.folder / file).is_file()
    ]
    if missing:
        raise BadInputError(
            f"GLUE folder {data_dir} lacks {', '.join(missing)}; expected the {LAYOUT}"
        )
    return {
        task.name: (
            _read_tsv(data_dir / task.folder / "train.tsv", task),
            _read_tsv(data_dir / task.folder / task.test_file, task),
        )
        for task in GLUE_TASKS
    }


def _hub_splits() -> dict[str, tuple[datasets.Dataset, datasets.Dataset]]:
    require_hub(NO_NETWORK)
    splits = {}
    for task in GLUE_TASKS:
        loaded = load_hub_dataset(NO_NETWORK, HUB_DATASET, task.name)
        renames = dict(zip(task.hub_columns, ("text", "text_pair"), strict=False))
        splits[task.name] = tuple(
            loaded[split].select_columns([*task.hub_columns, "label"]).rename_columns(renames)
            for split in ("train", task.hub_test_split)
        )
    return splits


def _cap(split: datasets.Dataset, cap: int | None, num_labels: int) -> datasets.Dataset:
    if cap is None:
        return split
    return split.select(balanced_sample(split["label"], cap, num_labels))


@register("glue-seq", "GLUE classification tasks in sequence (Hub, or --data-dir with GLUE TSVs)")
def build_glue_seq(options: StreamOptions) -> Stream:
    """Task-incremental stream over CoLA, SST-2, MRPC, QQP, MNLI, QNLI and RTE."""
    splits = _local_splits(Path(options.data_dir)) if options.data_dir else _hub_splits()
    tasks = tuple(
        Task(
            name=task.name,
            train=_cap(splits[task.name][0], options.max_train_per_task, len(task.label_names)),
            test=_cap(splits[task.name][1], options.max_test_per_task, len(task.label_names)),
            label_names=task.label_names,
            metric=task.metric,
        )
        for task in GLUE_TASKS
    )
    return Stream("glue-seq", tasks, scenario="task", modality="text", shared_head=False)
