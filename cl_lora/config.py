"""The resolved configuration of one run: every knob that changes its result, and nothing else.

Its dict form is stored in ``result.json`` and hashed into the run id, so two runs with the same
config land in the same folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from cl_lora.cli import require_at_least_one
from cl_lora.errors import BadInputError


@dataclass(frozen=True)
class RunConfig:
    """One run: a stream, an init method with its arguments, and the training recipe.

    Defaults are the offline default run (``python -m cl_lora.run``): small enough for a few
    minutes on 2 CPU cores, large enough that every task learns well above chance.
    """

    stream: str = "offline-text"
    init: str | None = "lora"  # None only for baselines without a LoRA init (see baselines/)
    init_args: dict[str, Any] = field(default_factory=dict)
    baseline: str | None = None  # None: the suite's method, a fresh LoRA per task
    baseline_args: dict[str, Any] = field(default_factory=dict)
    plugins: tuple[str, ...] = ()  # continual-learning plugins (ewc, lwf, replay)
    plugin_args: dict[str, Any] = field(default_factory=dict)
    backbone: str | None = None  # None: the stream's default
    scenario: str | None = None  # None: the stream's default scenario
    targets: tuple[str, ...] | None = None  # None: the backbone's attention and MLP linears
    calib: tuple[str, ...] | None = None  # None: the init method's default sources
    calib_size: int = 256
    rank: int = 8
    alpha: float = 16.0
    rslora: bool = False
    epochs: int = 2
    lr: float = 5e-4
    lr_search: tuple[float, ...] | None = None  # candidates: pick lr on validation first
    head_lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    batch_size: int = 16
    eval_batch_size: int = 64
    max_length: int | None = None  # tokens; None: the stream's recipe, else DEFAULT_MAX_LENGTH
    seed: int = 0
    max_train_per_task: int | None = None
    max_test_per_task: int | None = None
    data_dir: str | None = None
    order: int | None = None  # a published task order, for streams that have several
    tasks: tuple[str, ...] | None = None  # a custom task sequence, for the same streams
    device: str = "auto"
    precision: str = "fp32"
    deterministic: bool = False  # torch.use_deterministic_algorithms (matters on GPU)
    gradient_checkpointing: bool = False  # recompute activations in backward (language models)
    knowledge: str | None = None  # language models: None/nq-open, or lm-eval:TASK[,TASK...]

    def __post_init__(self) -> None:
        require_at_least_one(
            self,
            ("rank", "epochs", "batch_size", "eval_batch_size", "max_length", "calib_size")
            + ("max_train_per_task", "max_test_per_task"),
        )
        if self.lr <= 0 or self.head_lr <= 0:
            raise BadInputError("--lr and --head-lr must be positive")
        if self.lr_search is not None and (
            len(self.lr_search) < 2 or any(lr <= 0 for lr in self.lr_search)
        ):
            raise BadInputError("--lr-search takes two or more positive rates, e.g. 1e-4,5e-4,1e-3")
        if self.precision not in ("fp32", "bf16"):
            raise BadInputError(f"unknown --precision '{self.precision}': use fp32 or bf16")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """The inverse of :meth:`to_dict` (lists back to tuples)."""
        data = dict(data)
        for name in ("targets", "calib", "tasks", "lr_search"):
            if data.get(name) is not None:
                data[name] = tuple(data[name])
        return cls(**data)

    def identity(self) -> dict[str, Any]:
        """What the run id hashes: :meth:`to_dict` without the settings added since run ids
        were introduced while they hold their defaults, so earlier runs keep their ids."""
        data = self.to_dict()
        for name, default in ADDED_SETTINGS.items():
            if data.get(name) == default:
                del data[name]
        data["init_args"] = without_added_arguments(data["init_args"])
        return data

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["plugins"] = list(self.plugins)
        for name in ("targets", "calib", "tasks", "lr_search"):
            value = getattr(self, name)
            data[name] = list(value) if value is not None else None
        return data


DEFAULT_MAX_LENGTH = 64  # tokens of a text example, unless the stream's recipe says otherwise

#: Settings added after the first published runs, with the default that leaves a run as before.
ADDED_SETTINGS: dict[str, Any] = {
    "gradient_checkpointing": False,
    "knowledge": None,
    "order": None,
    "tasks": None,
    "lr_search": None,
}


#: Init arguments added after the first published runs, with the default that leaves a method as
#: it was: left out of run ids and method names at that default, so earlier runs keep both.
ADDED_ARGUMENTS: dict[str, Any] = {"normalize": False}  # lora-null's reference scaling


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
