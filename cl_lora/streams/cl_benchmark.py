"""The LLM continual-learning benchmarks of O-LoRA, SAPT and the LoRA-CL papers since, read
from O-LoRA's ``CL_Benchmark`` folder as its users have it on disk.

Two streams, each a fixed task order of a pool of 15 text-classification tasks, learned as text
to text (the model generates the label's text):

- ``cl-benchmark``, the "standard CL benchmark": 4 tasks, ``--order 1|2|3`` (default 1).
- ``long-15``, the "long sequence": all 15 tasks, ``--order 4|5|6`` (default 4).

``--tasks a,b,c`` runs any sequence of tasks of the pool instead (``--order`` and ``--tasks``
exclude each other). The orders and where each comes from are in :data:`ORDERS`.

**Data layout** (``--data-dir``: the ``CL_Benchmark`` folder, or the folder that holds it)::

    CL_Benchmark/<group>/<task>/{train,test,labels}.json     (dev.json is never read)
    configs/instruction_config.json                          (beside CL_Benchmark; optional)

Each example is ``{"sentence": ..., "label": ...}`` with the label's text, ``labels.json`` lists
the label texts (their order gives the label ids). A folder that lacks a file the chosen tasks
need is bad input naming every missing path. The instructions are read from
``configs/instruction_config.json`` when that folder sits beside ``CL_Benchmark`` (the first
zero-shot instruction of each group, O-LoRA's ``--instruction_strategy single``), otherwise the
same instructions built in (:data:`INSTRUCTIONS`); the stream's provenance says which.

**Splits.** Train and test are the files' own: O-LoRA samples nothing (its configs say "full"),
so e.g. agnews trains on 4,000 and tests on 7,600 examples. ``--max-train-per-task`` and
``--max-test-per-task`` keep a class-balanced, fixed-seed sample (see ``sampling``). In O-LoRA's
files ``dev.json`` is a copy of ``test.json``, so it is never read: a validation split, where one
is needed, must come from ``train.json``.

**Labels outside labels.json.** O-LoRA's files hold a few (MNLI's test file: 131 examples
labelled ``-``). O-LoRA keeps them, so they count in the test set and can never be answered
right; they are read the same way here (label id :data:`UNLISTED`), and the stream's provenance
says how many each split holds (``unlisted_labels``). A ``--max-*-per-task`` sample is drawn
from the listed labels only.

**Prompts** follow O-LoRA's data code (``src/uie_dataset_lora.py`` and ``src/uie_collator.py``
with ``--add_task_name True --add_dataset_name True``, as in all its scripts, T5 and LLaMA)::

    Task:<group>
    Dataset:<task folder>
    <instruction>Option: <label texts, comma-separated><space>
    <sentence>
    Answer:

(``<space>`` is one space, as in O-LoRA; COPA has no instruction or options: its sentence
holds the question and the two choices.)
The model learns ``prompt + " " + label text + eos`` (O-LoRA's LLaMA path appends the label
without a space; the space keeps the label
words tokenized as they appear in text for BPE tokenizers; a seq2seq model reads the label as its
decoder target either way). Generations are scored by exact match after O-LoRA's own
normalization -- lower case, no punctuation, white space collapsed, articles kept (COPA's
labels are ``A`` and ``B``) -- which is the ``o-lora`` answer form of
:mod:`~cl_lora.streams.scoring`.

**Metrics.** The headline is the average accuracy over all tasks after the last task, which is
the suite's ACC. BWT is the suite's (mean over the first T-1 tasks of the final minus the
just-learned accuracy), as in O-LoRA's appendix; SAPT divides the same sum by T instead, so its
BWT is (T-1)/T of ours.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cl_lora.errors import BadInputError, unknown_name
from cl_lora.lazy import lazy_module
from cl_lora.streams.base import Stream, StreamOptions, Task
from cl_lora.streams.instruct import language_model_stream, text_to_text_task
from cl_lora.streams.prompts import ANSWER_CUE
from cl_lora.streams.registry import register
from cl_lora.streams.sampling import balanced_sample

pd = lazy_module("pandas")

FOLDER = "CL_Benchmark"
INSTRUCTION_FILE = Path("configs") / "instruction_config.json"
ANSWER_FORM = "o-lora"
MAX_LENGTH = 512  # O-LoRA's --max_source_length; prompt and answer share it here
UNLISTED = -1  # label id of an example whose label is not in labels.json: never matched


@dataclass(frozen=True)
class PoolTask:
    """One task of the pool: the suite's name and where O-LoRA's layout keeps it."""

    name: str
    group: str  # folder under CL_Benchmark and key of instruction_config.json
    folder: str  # the task's folder (also the "Dataset:" name in its prompts)

    @property
    def path(self) -> Path:
        return Path(self.group) / self.folder


POOL = {
    task.name: task
    for task in (
        PoolTask("yelp", "SC", "yelp"),
        PoolTask("amazon", "SC", "amazon"),
        PoolTask("imdb", "SC", "IMDB"),
        PoolTask("sst-2", "SC", "SST-2"),
        PoolTask("dbpedia", "TC", "dbpedia"),
        PoolTask("agnews", "TC", "agnews"),
        PoolTask("yahoo", "TC", "yahoo"),
        PoolTask("mnli", "NLI", "MNLI"),
        PoolTask("cb", "NLI", "CB"),
        PoolTask("rte", "NLI", "RTE"),
        PoolTask("qqp", "QQP", "QQP"),
        PoolTask("copa", "COPA", "COPA"),
        PoolTask("boolqa", "BoolQA", "BoolQA"),
        PoolTask("multirc", "MultiRC", "MultiRC"),
        PoolTask("wic", "WiC", "WiC"),
    )
}
ALIASES = {"sst2": "sst-2", "boolq": "boolqa", "ag_news": "agnews", "ag-news": "agnews"}

#: order number -> task sequence.
#: 1-3: O-LoRA's ``scripts/order_1.sh``, ``order_2.sh``, ``order_3.sh`` (cmnfriend/O-LoRA,
#: commit 07117e1; the same in ``scripts_llama/``).
#: 4-6: the three 15-task orders of Progressive Prompts (Razdaibiedina et al., ICLR 2023,
#: appendix table of task orders), which O-LoRA and SAPT reuse; O-LoRA's ``scripts/long.sh``
#: runs order 6. results/references/SOURCES.md records what was read for each.
ORDERS: dict[int, tuple[str, ...]] = {
    1: ("dbpedia", "amazon", "yahoo", "agnews"),
    2: ("dbpedia", "amazon", "agnews", "yahoo"),
    3: ("yahoo", "amazon", "agnews", "dbpedia"),
    4: ("mnli", "cb", "wic", "copa", "qqp", "boolqa", "rte", "imdb", "yelp", "amazon", "sst-2",
        "dbpedia", "agnews", "multirc", "yahoo"),
    5: ("multirc", "boolqa", "wic", "mnli", "cb", "copa", "qqp", "rte", "imdb", "sst-2",
        "dbpedia", "agnews", "yelp", "amazon", "yahoo"),
    6: ("yelp", "amazon", "mnli", "cb", "copa", "qqp", "rte", "imdb", "sst-2", "dbpedia",
        "agnews", "yahoo", "multirc", "boolqa", "wic"),
}  # fmt: skip
STREAM_ORDERS = {"cl-benchmark": (1, 2, 3), "long-15": (4, 5, 6)}

#: O-LoRA's ``configs/instruction_config.json`` (zero-shot instruction of each group; COPA has
#: none), used when that file is not beside the data folder.
INSTRUCTIONS = {
    "NLI": 'What is the logical relationship between the "sentence 1" and the "sentence 2"? '
    "Choose one from the option.\n",
    "QQP": 'Whether the "first sentence" and the "second sentence" have the same meaning? '
    "Choose one from the option.\n",
    "SC": "What is the sentiment of the following paragraph? Choose one from the option.\n",
    "TC": "What is the topic of the following paragraph? Choose one from the option.\n",
    "BoolQA": "According to the following passage, is the question true or false? Choose one "
    "from the option.\n",
    "MultiRC": "According to the following passage and question, is the candidate answer true "
    "or false? Choose one from the option.\n",
    "WiC": "Given a word and two sentences, whether the word is used with the same sense in "
    "both sentence? Choose one from the option.\n",
}


# -- which tasks ------------------------------------------------------------------------------
def task_sequence(stream: str, options: StreamOptions) -> tuple[tuple[str, ...], str]:
    """The task names ``options`` ask of ``stream`` and the name the run's stream gets:
    ``<stream>-order<N>`` for a published order, ``<stream>:<a,b,...>`` for ``--tasks``."""
    if options.tasks is not None:
        if options.order is not None:
            raise BadInputError("pass --order or --tasks, not both")
        names = tuple(_pool_name(name) for name in options.tasks)
        if len(set(names)) != len(names):
            raise BadInputError(f"--tasks names a task twice: {','.join(options.tasks)}")
        return names, f"{stream}:{','.join(names)}"
    orders = STREAM_ORDERS[stream]
    order = orders[0] if options.order is None else options.order
    if order not in orders:
        raise BadInputError(
            f"{stream} has orders {', '.join(map(str, orders))}, not {order}: pass --order "
            f"{orders[0]} (or --tasks for your own sequence)"
        )
    return ORDERS[order], f"{stream}-order{order}"


def _pool_name(name: str) -> str:
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in POOL:
        raise unknown_name("benchmark task", name, sorted(POOL))
    return key


# -- reading O-LoRA's layout ------------------------------------------------------------------
def benchmark_root(data_dir: Path | None, stream: str) -> Path:
    """The ``CL_Benchmark`` folder ``--data-dir`` points at (itself or its parent)."""
    if data_dir is None:
        raise BadInputError(
            f"{stream} reads O-LoRA's benchmark files: pass --data-dir with its {FOLDER} folder "
            f"(<group>/<task>/{{train,test,labels}}.json, from the O-LoRA repository)"
        )
    data_dir = Path(data_dir).expanduser()
    root = data_dir / FOLDER if (data_dir / FOLDER).is_dir() else data_dir
    if not root.is_dir():
        raise BadInputError(f"--data-dir {data_dir} is not a folder: pass O-LoRA's {FOLDER}")
    return root


def require_files(root: Path, names: Sequence[str]) -> None:
    """Bad input naming every file the tasks ``names`` need that ``root`` lacks."""
    require_paths(
        root,
        [
            POOL[name].path / file
            for name in names
            for file in ("train.json", "test.json", "labels.json")
        ],
    )


def require_paths(root: Path, paths: Iterable[Path]) -> None:
    """Bad input, one line naming every one of ``paths`` (relative to ``root``) that is not a
    file."""
    missing = [str(path) for path in paths if not (root / path).is_file()]
    if missing:
        raise BadInputError(
            f"{root} lacks {len(missing)} file(s) the chosen tasks need: {', '.join(missing)}"
        )


def read_instructions(root: Path) -> tuple[dict[str, str], str]:
    """Each group's instruction and where it came from (the config file beside ``root``, or
    the built-in copy)."""
    path = root.parent / INSTRUCTION_FILE
    if not path.is_file():
        return dict(INSTRUCTIONS), "built in (O-LoRA's configs/instruction_config.json)"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        found = {
            group: next(i["instruction"] for i in entries if i["instruction_type"] == "zero-shot")
            for group, entries in config.items()
        }
    except (ValueError, KeyError, TypeError, StopIteration):
        raise BadInputError(
            f"{path} is not O-LoRA's instruction config (a zero-shot instruction per group): "
            "fix or remove it to use the built-in instructions"
        ) from None
    return found, str(path.resolve())


def read_json(path: Path) -> object:
    """The JSON in ``path``; invalid JSON is bad input naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise BadInputError(f"{path} is not valid JSON ({error}): restore the file") from None


def read_split(path: Path, label_names: Sequence[str]) -> pd.DataFrame:
    """A split file as a frame of ``sentence``, integer ``label`` (ids in ``labels.json``
    order) and ``target`` (the label's text). A label outside ``labels.json`` (MNLI's test file
    has 131 examples labelled ``-``) is kept as O-LoRA keeps it: its id is
    :data:`UNLISTED`, so it counts in the test set and is never answered right, and its text
    is still what a training example teaches."""
    frame = pd.DataFrame(read_json(path))
    if not {"sentence", "label"} <= set(frame.columns):
        raise BadInputError(f"{path} lacks 'sentence'/'label' fields: pass O-LoRA's files")
    ids = {name: label for label, name in enumerate(label_names)}
    return pd.DataFrame(
        {
            "sentence": frame["sentence"],
            "label": frame["label"].map(ids).fillna(UNLISTED).astype(int),
            "target": frame["label"].astype(str),
        }
    )


def prompt_of(task: PoolTask, sentence: str, label_names: Sequence[str], instruction: str) -> str:
    """O-LoRA's prompt for one example (see the module docstring)."""
    body = (
        sentence if task.group == "COPA"
        else f"{instruction}Option: {', '.join(label_names)} \n{sentence}"
    )  # fmt: skip
    return f"Task:{task.group}\nDataset:{task.folder}\n{body}\n{ANSWER_CUE}"


def _capped(frame: pd.DataFrame, cap: int | None, num_labels: int) -> pd.DataFrame:
    """All of ``frame``, or a class-balanced sample of ``cap`` rows of its listed labels."""
    if cap is None or cap >= len(frame):
        return frame
    listed = frame[frame["label"] != UNLISTED]
    return listed.iloc[balanced_sample(np.asarray(listed["label"]), cap, num_labels)]


def load_task(
    root: Path, name: str, instructions: dict[str, str], options: StreamOptions
) -> tuple[Task, dict[str, int]]:
    """Task ``name`` from ``root``, as prompts and label ids, capped as ``options`` ask; and,
    per split, how many of its examples carry a label outside ``labels.json``."""
    task = POOL[name]
    folder = root / task.path
    label_names = tuple(read_json(folder / "labels.json"))
    instruction = instructions.get(task.group, "")
    unlisted = {}

    def split(file: str, cap: int | None) -> pd.DataFrame:
        frame = _capped(read_split(folder / file, label_names), cap, len(label_names))
        unlisted[file.removesuffix(".json")] = int((frame["label"] == UNLISTED).sum())
        prompts = [prompt_of(task, s, label_names, instruction) for s in frame["sentence"]]
        return pd.DataFrame(
            {"prompt": prompts, "label": frame["label"].to_numpy(), "target": frame["target"]}
        )

    built = text_to_text_task(
        name,
        split("train.json", options.max_train_per_task),
        split("test.json", options.max_test_per_task),
        label_names,
        answer_form=ANSWER_FORM,
    )
    return built, unlisted


def build_benchmark(stream: str, options: StreamOptions) -> Stream:
    """``stream``'s task sequence read from ``--data-dir`` (see the module docstring)."""
    names, full_name = task_sequence(stream, options)
    root = benchmark_root(options.data_dir, stream)
    require_files(root, names)
    instructions, source = read_instructions(root)
    loaded = {name: load_task(root, name, instructions, options) for name in names}
    provenance = {
        "data_dir": str(root.resolve()),
        "instructions": source,
        "tasks": list(names),
        "unlisted_labels": {  # examples whose label is not in labels.json (always wrong)
            name: counts for name, (_, counts) in loaded.items() if any(counts.values())
        },
    }
    tasks = [task for task, _ in loaded.values()]
    return language_model_stream(full_name, tasks, provenance=provenance)


@register(
    "cl-benchmark",
    "standard LLM CL benchmark (O-LoRA): 4 text-classification tasks, --order 1|2|3, "
    "O-LoRA's CL_Benchmark files via --data-dir",
    recipe={"max_length": MAX_LENGTH},
    sequences=True,
)
def build_cl_benchmark(options: StreamOptions) -> Stream:
    return build_benchmark("cl-benchmark", options)


@register(
    "long-15",
    "long LLM CL sequence: 15 tasks, --order 4|5|6, O-LoRA's CL_Benchmark files via --data-dir",
    recipe={"max_length": MAX_LENGTH},
    sequences=True,
)
def build_long_15(options: StreamOptions) -> Stream:
    return build_benchmark("long-15", options)
