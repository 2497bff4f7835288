"""The resolved configuration of one run: every knob that changes its result, and nothing else.

Each setting is declared once, as a field of :class:`RunConfig` made with :func:`setting`: its
default, its group and its help text. The command line of ``python -m cl_lora.run`` and the
``--set KEY=VALUE`` keys of ``python -m cl_lora.sweep`` are generated from these fields
(:mod:`cl_lora.config_cli`), so adding a setting is adding one field.

The dict form is stored in ``result.json`` and hashed into the run id, so two runs with the same
config land in the same folder.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from cl_lora.cli import parse_bool, require_at_least_one
from cl_lora.errors import BadInputError

#: The groups settings are listed in (``--help`` shows one section per group).
GROUPS = {
    "method": "what trains: init method, baseline, plugins",
    "data": "stream and data",
    "lora": "LoRA shape",
    "training": "training recipe",
    "calibration": "statistics an init reads before each task",
    "runtime": "device, precision and probes",
}

#: transformers' ``get_scheduler`` names a run may choose (``--lr-scheduler``); those that need
#: arguments beyond warm-up and total steps are left out.
SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    "inverse_sqrt",
)  # fmt: skip

#: What a language model's too-long prompt keeps (``--prompt-keep``).
PROMPT_KEEP = ("ends", "start", "end")

#: What ``--per-task`` may set besides a baseline's arguments.
PER_TASK_SETTINGS = {"epochs": int, "lr": float}

#: The adapter rates a bare ``--lr-search`` tries unless a recipe sets ``lr_grid``: 7 points, half
#: a decade apart, from 1e-5 to 1e-2 (three significant digits).
DEFAULT_LR_GRID = tuple(float(f"{10 ** (-5 + step / 2):.3g}") for step in range(7))

#: How many rates a bare ``--lr-search`` may add past the grid's edge when the best is there.
DEFAULT_LR_EXTEND = 2

#: Where input covariances may be collected (``--calib``).
CALIBRATION_SOURCES = ("probe", "task", "memory")

#: Flags whose name is not the field's (repeatable ``--init-arg KEY=VALUE`` fills a dict).
_FLAGS = {
    "init_args": "--init-arg",
    "baseline_args": "--baseline-arg",
    "plugins": "--plugin",
    "plugin_args": "--plugin-arg",
    "per_task": "--per-task",
}


_BYTE_UNITS = {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}


def parse_bytes(text: str) -> int:
    """``"8GB"`` -> bytes (binary units: KB, MB, GB, TB; a bare number is bytes)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?B?)\s*", text.upper())
    size = (
        int(float(match.group(1)) * _BYTE_UNITS[match.group(2).rstrip("B") + "B"]) if match else 0
    )
    if size <= 0:
        raise BadInputError(
            f"--calib-max-memory {text!r}: give a positive size such as 8GB or 512MB"
        )
    return size


def setting(
    default: Any,
    group: str,
    help: str = "",
    *,
    added: bool = False,
    choices: tuple[str, ...] | None = None,
    flag: bool = True,
    bare: Any = None,
    hashed: bool = True,
) -> Any:
    """One declared setting (a dataclass field). ``added``: introduced after the first
    published runs, so left out of run ids while it holds ``default`` (earlier runs keep their
    ids); ``choices``: the only values allowed; ``flag``: whether the command line has a flag
    for it (a recipe's name is set by ``--recipe``/``--config`` instead); ``bare``: what the
    flag stands for when given without a value (also written ``default`` in a recipe or a
    sweep's ``--set``), None when it needs one; ``hashed``: whether the run id depends on it
    (not for what a run writes besides its results, such as its saved adapters)."""
    metadata = {
        "group": group,
        "help": help,
        "added": added,
        "choices": choices,
        "flag": flag,
        "bare": bare,
        "hashed": hashed,
    }
    if isinstance(default, dict):
        return dataclasses.field(default_factory=dict, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class RunConfig:
    """One run: a stream, an init method with its arguments, and the training recipe.

    Defaults are the offline default run (``python -m cl_lora.run``): small enough for a few
    minutes on 2 CPU cores, large enough that every task learns well above chance.
    """

    recipe: str | None = setting(
        None,
        "training",
        "the recipe or config file the settings came from: NAME@sha256:<first 16 hex digits>",
        added=True,
        flag=False,
    )
    stream: str = setting("offline-text", "data", "task stream (see --list)")
    init: str | None = setting(
        "lora", "method", "LoRA init method (see --list); a baseline without one records none"
    )
    init_args: dict[str, Any] = setting({}, "method", "an argument of the init method")
    baseline: str | None = setting(
        None, "method", "train with a baseline instead of a fresh LoRA per task (see --list)"
    )
    baseline_args: dict[str, Any] = setting({}, "method", "an argument of the baseline")
    plugins: tuple[str, ...] = setting(
        (), "method", "a continual-learning plugin (ewc, lwf, replay) with the fresh LoRA"
    )
    plugin_args: dict[str, Any] = setting(
        {}, "method", "an argument of a chosen plugin (each key belongs to one plugin)"
    )
    backbone: str | None = setting(
        None,
        "data",
        "text: local folder or Hub name; vision: a timm model name, a local timm folder, "
        "NAME=FILE, or mnist-vit; language model: smollm2-135m, a local folder, a .gguf file "
        "or a Hub name (default: the stream's own)",
    )
    scenario: str | None = setting(
        None,
        "data",
        "continual-learning scenario, for streams that offer several (default: the stream's)",
        choices=("task", "class", "domain"),
    )
    targets: tuple[str, ...] | None = setting(
        None, "lora", "comma-separated module-name suffixes LoRA adapts (default: the backbone's)"
    )
    calib: tuple[str, ...] | None = setting(
        None,
        "calibration",
        "data of input covariances: comma-separated probe, task, memory (default: the init "
        "method's own)",
    )
    calib_size: int = setting(256, "calibration", "examples per calibration source")
    calib_max_memory: str | None = setting(
        None,
        "calibration",
        "memory the input covariances may hold at once, e.g. 8GB or 512MB (default: half the "
        "free memory of the run's device); layers beyond it are collected in further passes",
        added=True,
    )
    decompose_dtype: str = setting(
        "float64",
        "calibration",
        "float type of the input-covariance decompositions (corda, lora-null, eva, inflora): "
        "float32 is the reference codes' and far faster on GPUs with a low float64 rate",
        added=True,
        choices=("float64", "float32"),
    )
    rank: int = setting(8, "lora", "LoRA rank r")
    alpha: float = setting(16.0, "lora", "LoRA alpha (scale alpha/r)")
    rslora: bool = setting(False, "lora", "scale alpha/sqrt(r) (rsLoRA)")
    lora_dropout: float = setting(
        0.0, "lora", "dropout on the adapter's input while training (PEFT's lora_dropout)",
        added=True,
    )  # fmt: skip
    epochs: int = setting(2, "training", "epochs per task")
    lr: float = setting(5e-4, "training", "adapter learning rate")
    lr_search: tuple[float, ...] | None = setting(
        None,
        "training",
        "search the adapter learning rate first: alone, over the --lr-grid rates; or over the "
        "candidates given, comma-separated. Each trains the first task on 80% of its training "
        "data; the best on the other 20% trains the stream",
        added=True,
        bare=(),
    )
    lr_grid: tuple[float, ...] = setting(
        DEFAULT_LR_GRID,
        "training",
        "the rates a bare --lr-search tries, comma-separated; a recipe may set its own. The "
        "default: 7, half a decade apart",
        added=True,
    )
    lr_extend: int | None = setting(
        None,
        "training",
        "rates the search may add past the edge of its grid while the best is there, each "
        "10^0.5 times further, never beyond 1e-6..1e-1 (default 2 with a bare --lr-search, "
        "0 with a list)",
        added=True,
    )
    head_lr: float = setting(2e-3, "training", "task heads' learning rate")
    weight_decay: float = setting(0.0, "training", "AdamW's weight decay")
    warmup_ratio: float = setting(
        0.1, "training", "share of each task's steps with a linear learning-rate warm-up"
    )
    lr_scheduler: str | None = setting(
        None,
        "training",
        "learning-rate schedule by transformers' get_scheduler name (default: the suite's "
        "linear warm-up and decay, whose first step already takes 1/warm-up of the rate)",
        added=True,
        choices=SCHEDULERS,
    )
    warmup_steps: int | None = setting(
        None, "training", "warm-up steps of each task (replaces --warmup-ratio)", added=True
    )
    batch_size: int = setting(
        16, "training", "training examples per optimizer step (the effective batch)"
    )
    grad_accumulation: int = setting(
        1,
        "training",
        "micro-batches per optimizer step: each holds batch-size / grad-accumulation examples",
        added=True,
    )
    max_grad_norm: float | None = setting(
        None, "training", "clip the gradient norm of each optimizer step to this", added=True
    )
    per_task: dict[str, dict[str, Any]] = setting(
        {},
        "training",
        "a setting for one task, TASK:KEY=VALUE (TASK a name or 1-based position; KEY epochs, "
        "lr or an argument of the baseline), e.g. mnli:epochs=2",
        added=True,
    )
    eval_batch_size: int = setting(
        64, "training", "examples per evaluation (and calibration) batch"
    )
    max_length: int | None = setting(
        None, "data", "tokens per example (default: the stream's; 64 for most)"
    )
    seed: int = setting(0, "training", "seed of everything random in the run")
    max_train_per_task: int | None = setting(
        None, "data", "cap on training examples per task (a class-balanced fixed sample)"
    )
    max_test_per_task: int | None = setting(None, "data", "cap on test examples per task")
    prompt_keep: str = setting(
        "ends",
        "data",
        "language models: what a prompt longer than --max-length keeps: ends (its first tokens "
        "and its last 24: the question and the answer cue), start (its first tokens, O-LoRA) "
        "or end (its last tokens, TRACE)",
        added=True,
        choices=PROMPT_KEEP,
    )
    loss_average: str = setting(
        "tokens",
        "training",
        "language models: the loss is the mean over a batch's answer tokens, or each example's "
        "mean averaged over the examples (transformers before 4.46 with one example per device)",
        added=True,
        choices=("tokens", "examples"),
    )
    max_new_tokens: int | None = setting(
        None,
        "data",
        "language models: tokens generated per answer (default: the task's longest answer and "
        "the end-of-sequence token)",
        added=True,
    )
    data_dir: str | None = setting(
        None, "data", "local data folder (GLUE in the standard TSV layout; O-LoRA's CL_Benchmark)"
    )
    order: int | None = setting(
        None, "data", "published task order (cl-benchmark: 1-3, long-15: 4-6)", added=True
    )
    tasks: tuple[str, ...] | None = setting(
        None,
        "data",
        "your own task sequence, comma-separated: from the pool of cl-benchmark/long-15, or a "
        "subsequence of any other stream's tasks (e.g. one task, for a single-task fine-tune)",
        added=True,
    )
    device: str = setting("auto", "runtime", "auto, cpu, cuda or cuda:N")
    precision: str = setting("fp32", "runtime", "weights' precision", choices=("fp32", "bf16"))
    deterministic: bool = setting(
        False,
        "runtime",
        "deterministic torch kernels (slower on GPU; CPU runs are deterministic anyway)",
    )
    gradient_checkpointing: bool = setting(
        False,
        "runtime",
        "recompute activations in the backward pass (language models: less GPU memory)",
        added=True,
    )
    answer_by: str = setting(
        "generate",
        "data",
        "language models: how a multiple-choice task is answered: generate (greedy generation "
        "matched to the options) or likelihood (the option whose tokens are most likely)",
        added=True,
        choices=("generate", "likelihood"),
    )
    knowledge: str | None = setting(
        None,
        "runtime",
        "language models' knowledge probes, comma-separated: nq-open (the default), mmlu, "
        "boolq, piqa, siqa, openbookqa, commonsenseqa, asdiv (see --list), then optionally "
        "lm-eval:TASK[,TASK...] (lm-evaluation-harness tasks)",
        added=True,
    )
    probe_size: int = setting(
        100, "runtime", "examples each knowledge probe scores (a fixed held-out sample)",
        added=True,
    )  # fmt: skip
    lm_eval_include: str | None = setting(
        None,
        "runtime",
        "a folder of lm-evaluation-harness task YAMLs for --knowledge lm-eval:TASK (local "
        "data_files run offline)",
        added=True,
    )
    save_adapters: bool = setting(
        False,
        "runtime",
        "after each task, write the model as one PEFT adapter on the pretrained weights (and the "
        "task heads) to the run's adapters/ folder; python -m cl_lora.export merges one",
        added=True,
        hashed=False,
    )
    save_task_adapters: bool = setting(
        False,
        "runtime",
        "with --save-adapters: also each task's own adapter, relative to the model after the "
        "task before",
        added=True,
        hashed=False,
    )

    def __post_init__(self) -> None:
        require_at_least_one(
            self,
            ("rank", "epochs", "batch_size", "eval_batch_size", "max_length", "calib_size")
            + ("probe_size",)
            + ("max_train_per_task", "max_test_per_task", "grad_accumulation", "max_new_tokens"),
        )
        if self.batch_size % self.grad_accumulation:
            raise BadInputError(
                f"--batch-size {self.batch_size} is not a multiple of --grad-accumulation "
                f"{self.grad_accumulation}: the micro-batches must split the batch evenly"
            )
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise BadInputError("--max-grad-norm must be positive (leave it out for no clipping)")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise BadInputError("--warmup-steps must be 0 or more")
        if not 0 <= self.lora_dropout < 1:
            raise BadInputError("--lora-dropout must be in [0, 1)")
        if self.save_task_adapters and not self.save_adapters:
            raise BadInputError("--save-task-adapters goes with --save-adapters: add it")
        object.__setattr__(self, "per_task", normalize_per_task(self.per_task))
        if self.lr <= 0 or self.head_lr <= 0:
            raise BadInputError("--lr and --head-lr must be positive")
        if len(self.lr_grid) < 2 or any(lr <= 0 for lr in self.lr_grid):
            raise BadInputError("--lr-grid takes two or more positive rates, e.g. 1e-5,1e-4,1e-3")
        if self.lr_search == ():  # a bare --lr-search: the grid, extended by default
            object.__setattr__(self, "lr_search", tuple(self.lr_grid))
            if self.lr_extend is None:
                object.__setattr__(self, "lr_extend", DEFAULT_LR_EXTEND)
        if self.lr_search is not None and (
            len(self.lr_search) < 2 or any(lr <= 0 for lr in self.lr_search)
        ):
            raise BadInputError("--lr-search takes two or more positive rates, e.g. 1e-4,5e-4,1e-3")
        if self.lr_extend is not None and self.lr_extend < 0:
            raise BadInputError("--lr-extend must be 0 or more")
        if self.calib_max_memory is not None:
            parse_bytes(self.calib_max_memory)
        if self.calib is not None and (
            not self.calib or any(source not in CALIBRATION_SOURCES for source in self.calib)
        ):
            raise BadInputError(
                f"unknown --calib source in {','.join(self.calib) or repr('')}: use a "
                f"comma-separated choice of {', '.join(CALIBRATION_SOURCES)}"
            )
        for spec in dataclasses.fields(self):
            allowed = spec.metadata["choices"]
            value = getattr(self, spec.name)
            if allowed is not None and value is not None and value not in allowed:
                raise BadInputError(
                    f"unknown {flag_of(spec.name)} '{value}': use {' or '.join(allowed)}"
                )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """The inverse of :meth:`to_dict` (lists back to tuples)."""
        data = dict(data)
        for name in _TUPLES:
            if data.get(name) is not None:
                data[name] = tuple(data[name])
        return cls(**data)

    def identity(self) -> dict[str, Any]:
        """What the run id hashes: :meth:`to_dict` without the settings added since run ids
        were introduced while they hold their defaults, so earlier runs keep their ids."""
        data = self.to_dict()
        for name, default in ADDED_SETTINGS.items():
            if data.get(name) == default or name in UNHASHED_SETTINGS:
                del data[name]
        data["init_args"] = without_added_arguments(data["init_args"])
        return data

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in _TUPLES:
            value = getattr(self, name)
            data[name] = list(value) if value is not None else None
        return data


def normalize_per_task(per_task: Mapping[Any, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``per_task`` with task keys as text (a name, or a 1-based position) and ``epochs``/``lr``
    typed and checked; other keys are a baseline's arguments, which the method resolves."""
    normalized: dict[str, dict[str, Any]] = {}
    for task, values in per_task.items():
        key = str(task).strip()
        if not key or not isinstance(values, Mapping):
            raise BadInputError(
                f"--per-task {task!r}: give TASK:KEY=VALUE, TASK a task name or 1-based position"
            )
        typed = dict(values)
        for name, kind in PER_TASK_SETTINGS.items():
            if name in typed:
                typed[name] = _typed(typed[name], kind, f"--per-task {key}:{name}")
        if typed.get("epochs", 1) < 1 or typed.get("lr", 1.0) <= 0:
            raise BadInputError(f"--per-task {key}: epochs must be at least 1 and lr positive")
        normalized[key] = typed
    return normalized


def _typed(value: Any, kind: type, option: str) -> Any:
    """``value`` (text, or a number from a file) as ``kind``; anything else one line."""
    if isinstance(value, bool) or (kind is int and isinstance(value, float)):
        raise BadInputError(f"{option} {value!r}: expected {_WORDS[kind]}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise BadInputError(f"{option} {value!r}: expected {_WORDS[kind]}") from None


_HINTS = typing.get_type_hints(RunConfig)


def declared_type(name: str) -> tuple[type, bool]:
    """Field ``name``'s type without ``| None``, and whether ``None`` is allowed."""
    declared = _HINTS[name]
    if typing.get_origin(declared) in (typing.Union, types.UnionType):
        members = [m for m in typing.get_args(declared) if m is not type(None)]
        return members[0], True
    return declared, False


#: Settings held as tuples (lists in JSON).
_TUPLES = [
    spec.name
    for spec in dataclasses.fields(RunConfig)
    if typing.get_origin(declared_type(spec.name)[0]) is tuple
]


#: Settings whose flag may be given without a value, and what it then stands for.
_BARE = {
    spec.name: spec.metadata["bare"]
    for spec in dataclasses.fields(RunConfig)
    if spec.metadata["bare"] is not None
}


def flag_of(name: str) -> str:
    """The command-line flag of setting ``name`` (``max_length`` -> ``--max-length``)."""
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


def parse_setting(name: str, text: str, option: str | None = None) -> Any:
    """``text`` as a value of setting ``name`` (``none`` for an optional one; tuples are
    comma-separated; bools true/false); a bad value is a one-line error naming ``option`` (by
    default the setting's flag)."""
    option = option or flag_of(name)
    declared, optional = declared_type(name)
    if optional and text.strip().lower() == "none":
        return None
    bare = _BARE.get(name)
    if bare is not None and text.strip().lower() == "default":
        return bare
    kind = typing.get_origin(declared) or declared  # tuple[str, ...] -> tuple
    if kind is dict:
        raise BadInputError(f"{option}: set {name} in a --config file or with {flag_of(name)}")
    if kind is tuple:
        element = (typing.get_args(declared) or (str,))[0]
        try:
            return tuple(element(part.strip()) for part in text.split(",") if part.strip())
        except ValueError:
            raise BadInputError(
                f"{option} {text!r}: expected comma-separated {_WORDS[element].split()[-1]}s"
            ) from None
    if kind is bool:
        return parse_bool(text, option)
    return _typed(text, kind, option)


_WORDS = {int: "an integer", float: "a number", str: "text"}


DEFAULT_MAX_LENGTH = 64  # tokens of a text example, unless the stream's recipe says otherwise


def _stored(value: Any) -> Any:
    """``value`` as :meth:`RunConfig.to_dict` and ``result.json`` hold it (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value


#: Settings the run id does not depend on: what a run writes besides its results.
UNHASHED_SETTINGS = {
    spec.name for spec in dataclasses.fields(RunConfig) if not spec.metadata["hashed"]
}

#: Settings added after the first published runs, with the default that leaves a run as before
#: (in the form ``result.json`` stores, so a stored config compares equal).
ADDED_SETTINGS: dict[str, Any] = {
    spec.name: _stored(
        spec.default_factory() if spec.default is dataclasses.MISSING else spec.default
    )
    for spec in dataclasses.fields(RunConfig)
    if spec.metadata["added"]
}


#: Init arguments added after the first published runs, with the default that leaves a method as
#: it was: left out of run ids and method names at that default, so earlier runs keep both.
ADDED_ARGUMENTS: dict[str, Any] = {
    "normalize": False,  # lora-null's reference scaling
    "niter": 0,  # pissa's randomized SVD
}


def without_added_arguments(args: Mapping[str, Any]) -> dict[str, Any]:
    """``args`` without the :data:`ADDED_ARGUMENTS` that hold their defaults."""
    return {k: v for k, v in args.items() if ADDED_ARGUMENTS.get(k, _UNSET) != v}


_UNSET = object()


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; an unavailable CUDA device is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BadInputError(f"unknown --device '{name}': use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError(f"--device {name} asked for CUDA, but none is available: use cpu")
    return device
