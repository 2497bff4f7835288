"""TRACE (Wang et al. 2023, BeyonderXX/TRACE), the continual-learning benchmark for aligned LLMs,
read from TRACE's released data folder as its users have it on disk.

One stream, ``trace``: eight tasks in TRACE's order (``scripts/train_lora.sh``, line 5)::

    C-STANCE, FOMC, MeetingBank, Py150, ScienceQA, NumGLUE-cm, NumGLUE-ds, 20Minuten

``--tasks a,b,c`` runs any sequence of them instead (TRACE's folder names, any case); the run's
stream is then ``trace:a,b,c``.

**Data layout** (``--data-dir``: TRACE's ``LLM-CL-Benchmark_500``, ``_1000`` or ``_5000``
folder, or a folder that holds exactly one of them)::

    <folder>/<task>/{train,eval,test}.json      each a JSON list of {"prompt": ..., "answer": ...}

Only ``train.json`` and ``test.json`` are read: TRACE trains on the first and scores the second
(``inference/infer_single.py`` line 294); its ``eval.json`` only fed a perplexity check that its
training loop has commented out (``model/base_model.py`` lines 100-105). A folder that lacks a
file the chosen tasks need is bad input naming every missing path. An answer that is ``null``
reads as the empty text, as TRACE's loader reads it (``utils/data/raw_datasets.py`` lines
122-125). ``--max-train-per-task`` and ``--max-test-per-task`` keep each split's first
examples, as TRACE's ``sample_ratio`` does (``utils/data/data_utils.py`` lines 246-253).

**Prompts** are the files' own, verbatim: the prompt already holds TRACE's instruction (its
``inference/ICL.py`` strips ``TASK_PROMT[task]`` from it). The stream is in the ``joined`` text
format, TRACE's collator (``utils/data/data_collator.py`` lines 31-59 and 76-79): training
reads ``bos + tokens(prompt + answer) + eos`` with the loss on the last ``len(tokens(answer)) +
1`` tokens, evaluation generates after ``bos + tokens(prompt)``, and a generation is scored as
decoded (``skip_special_tokens=True, clean_up_tokenization_spaces=False``,
``inference/infer_single.py`` line 193), never stripped or cut.

**Metrics**: each task is scored as TRACE scores it (:mod:`~cl_lora.streams.trace_metrics`):
accuracy (exact text) for C-STANCE, FOMC and the NumGLUE tasks, the option letter for
ScienceQA, ROUGE-L for MeetingBank, the edit similarity for Py150 and SARI for 20Minuten, all in
[0, 1]. ROUGE-L and SARI need the ``trace`` extra (``pip install -e ".[trace]"``: the ``rouge``
and ``sacrebleu`` packages); without it the stream stops with one line before any work. TRACE's
OP is the suite's ACC (the mean of the last row) and its BWT is ``bwt_trace`` in
``result.json`` (:func:`cl_lora.metrics.summarize`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cl_lora.errors import BadInputError, did_you_mean
from cl_lora.lazy import lazy_module
from cl_lora.streams import trace_metrics  # noqa: F401  (registers TRACE's text metrics)
from cl_lora.streams.base import Stream, StreamOptions, Task, to_dataset
from cl_lora.streams.cl_benchmark import read_json, require_paths
from cl_lora.streams.instruct import language_model_stream
from cl_lora.streams.registry import register
from cl_lora.streams.scoring import missing_packages

pd = lazy_module("pandas")

FOLDERS = ("LLM-CL-Benchmark_500", "LLM-CL-Benchmark_1000", "LLM-CL-Benchmark_5000")
FILES = ("train.json", "test.json")
MAX_LENGTH = 1024 + 512  # TRACE's --max_prompt_len and --max_ans_len (scripts/train_lora.sh)


@dataclass(frozen=True)
class TraceTask:
    """One of TRACE's tasks: the suite's name, TRACE's folder and its text metric."""

    name: str
    folder: str
    metric: str


#: TRACE's tasks in its order (scripts/train_lora.sh line 5, --dataset_name), each with the
#: metric its inference script applies (inference/infer_single.py lines 324-341).
TASKS = {
    task.name: task
    for task in (
        TraceTask("c-stance", "C-STANCE", "trace-accuracy"),
        TraceTask("fomc", "FOMC", "trace-accuracy"),
        TraceTask("meetingbank", "MeetingBank", "trace-rouge-l"),
        TraceTask("py150", "Py150", "trace-similarity"),
        TraceTask("scienceqa", "ScienceQA", "trace-answer-letter"),
        TraceTask("numglue-cm", "NumGLUE-cm", "trace-accuracy"),
        TraceTask("numglue-ds", "NumGLUE-ds", "trace-accuracy"),
        TraceTask("20minuten", "20Minuten", "trace-sari"),
    )
}
ORDER = tuple(TASKS)
ALIASES = {"cstance": "c-stance", "numglue_cm": "numglue-cm", "numglue_ds": "numglue-ds"}


def task_sequence(options: StreamOptions) -> tuple[tuple[str, ...], str]:
    """The task names ``options`` ask for and the run's stream name (``trace``, or
    ``trace:<a,b,...>`` for ``--tasks``)."""
    if options.order is not None:
        raise BadInputError("trace has one task order, TRACE's: drop --order (--tasks a,b,c "
                            "runs your own sequence)")  # fmt: skip
    if options.tasks is None:
        return ORDER, "trace"
    names = tuple(_task_name(name) for name in options.tasks)
    if len(set(names)) != len(names):
        raise BadInputError(f"--tasks names a task twice: {','.join(options.tasks)}")
    return names, f"trace:{','.join(names)}"


def _task_name(name: str) -> str:
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in TASKS:
        raise BadInputError(
            f"unknown TRACE task '{name}': {did_you_mean(key, list(TASKS))}its tasks are "
            + ", ".join(task.folder for task in TASKS.values())
        )
    return key


def _holds_tasks(folder: Path) -> bool:
    return any((folder / task.folder).is_dir() for task in TASKS.values())


def benchmark_root(data_dir: Path | None) -> Path:
    """TRACE's data folder ``--data-dir`` points at: itself when it holds task folders, else the
    one folder inside it that does."""
    if data_dir is None:
        raise BadInputError(
            "trace reads TRACE's released data: pass --data-dir with its LLM-CL-Benchmark_500 "
            "(or _1000, _5000) folder, one folder per task with train.json and test.json"
        )
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise BadInputError(f"--data-dir {data_dir} is not a folder: pass TRACE's {FOLDERS[0]}")
    if _holds_tasks(data_dir):
        return data_dir
    inside = sorted(path for path in data_dir.iterdir() if path.is_dir() and _holds_tasks(path))
    if len(inside) > 1:
        names = ", ".join(path.name for path in inside)
        raise BadInputError(f"{data_dir} holds {len(inside)} TRACE folders ({names}): pass one")
    if not inside:
        raise BadInputError(
            f"{data_dir} holds no TRACE task folder (C-STANCE, FOMC, ...): pass TRACE's "
            f"{FOLDERS[0]} (or _1000, _5000) folder"
        )
    return inside[0]


def read_split(path: Path, cap: int | None) -> pd.DataFrame:
    """A split file's first ``cap`` examples (all without a cap) as ``prompt`` and ``target``
    columns; a file that is not a list of prompt/answer objects is bad input."""
    data = read_json(path)
    valid = isinstance(data, list) and all(
        isinstance(example, dict)
        and isinstance(example.get("prompt"), str)
        and isinstance(example.get("answer"), str | None)
        for example in data
    )
    if not valid:
        raise BadInputError(
            f'{path} is not in TRACE\'s format (a JSON list of {{"prompt": ..., "answer": ...}} '
            "texts): restore the file"
        )
    rows = data if cap is None else data[:cap]
    return pd.DataFrame(
        {
            "prompt": [example["prompt"] for example in rows],
            "target": [example.get("answer") or "" for example in rows],
        },
        dtype=object,
    )


def load_task(root: Path, name: str, options: StreamOptions) -> Task:
    """Task ``name`` from ``root``: its prompts and answers, capped as ``options`` ask. Its
    label names are its distinct answers (first seen first), an example's label the index of
    its answer."""
    task = TASKS[name]
    train = read_split(root / task.folder / "train.json", options.max_train_per_task)
    test = read_split(root / task.folder / "test.json", options.max_test_per_task)
    answers = tuple(dict.fromkeys([*train["target"], *test["target"]]))
    ids = {answer: label for label, answer in enumerate(answers)}

    def split(frame: pd.DataFrame) -> object:
        return to_dataset(frame.assign(label=[ids[a] for a in frame["target"]]), answers)

    return Task(name, split(train), split(test), answers, task.metric)


def require_metric_packages(names: Sequence[str]) -> None:
    """Bad input when the text metrics of tasks ``names`` need packages that are missing."""
    missing = missing_packages(TASKS[name].metric for name in names)
    if missing:
        raise BadInputError(
            f'TRACE\'s metrics need {", ".join(missing)}: pip install -e ".[trace]" '
            "(or drop MeetingBank and 20Minuten with --tasks)"
        )


@register(
    "trace",
    "TRACE (LLM CL benchmark): 8 tasks in TRACE's order, --tasks for others, TRACE's "
    "LLM-CL-Benchmark files via --data-dir, TRACE's metrics",
    recipe={"max_length": MAX_LENGTH},
    sequences=True,
)
def build_trace(options: StreamOptions) -> Stream:
    """TRACE's tasks read from ``--data-dir`` (see the module docstring)."""
    names, full_name = task_sequence(options)
    root = benchmark_root(options.data_dir)
    require_paths(root, [Path(TASKS[name].folder) / file for name in names for file in FILES])
    require_metric_packages(names)
    tasks = [load_task(root, name, options) for name in names]
    provenance = {
        "data_dir": str(root.resolve()),
        "tasks": [TASKS[name].folder for name in names],
        "metrics": {name: TASKS[name].metric for name in names},
    }
    return language_model_stream(full_name, tasks, provenance=provenance, text_format="joined")
