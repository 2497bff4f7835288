"""What a run trains, resolved and validated from its config: the suite's own method (a fresh
LoRA per task with ``--init``, optionally with ``--plugin`` s) or a ``--baseline``; and the
strategy that trains it (:meth:`Method.build_strategy`).

Rules (all bad input, one line, before any work):

- ``--plugin`` combines only with the suite's re-initialized LoRA (no ``--baseline``): each
  baseline already *is* a way of training the stream, and pairing it with another
  continual-learning method would make its row stand for neither.
- baselines without a LoRA init (``seq-ft``, ``frozen``, ``inflora``, which designs its own)
  reject ``--init`` (other than the default ``lora``), ``--init-arg`` and ``--calib``; their
  result records no init.
- ``--baseline-arg`` needs a ``--baseline`` that declares the key; ``--plugin-arg`` a chosen
  plugin that declares it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from avalanche.core import SupervisedPlugin

from cl_lora import inits
from cl_lora.arguments import resolve_arguments
from cl_lora.backbones import Backbone
from cl_lora.baselines import BASELINES, SEQUENTIAL_MATRIX, Baseline
from cl_lora.config import PER_TASK_SETTINGS, RunConfig, parse_bytes
from cl_lora.errors import BadInputError, did_you_mean
from cl_lora.inits import InitMethod
from cl_lora.lora import LoRASettings
from cl_lora.plugins import PLUGINS, split_plugin_args
from cl_lora.problems import Problem
from cl_lora.results import method_label
from cl_lora.strategy import LoRAStrategy, make_evaluator
from cl_lora.strategy.optim import TrainingRecipe
from cl_lora.streams import Stream

DEFAULT_INIT = "lora"


#: Methods that FSDP2 (frozen base weights sharded, adapters whole) cannot run, and why.
NOT_SHARDABLE = {
    "baseline seq-ft": "it trains every base weight, and the sharding here is of frozen weights",
    "plugin ewc": "its penalty reads every adapted base weight at each step",
}


@dataclass(frozen=True)
class Method:
    """A resolved method: the config with every argument resolved (what the run id hashes and
    ``result.json`` records), the strategy class and its extra keywords, the init (``None``
    for baselines without one) and the plugin arguments."""

    config: RunConfig
    strategy: type[LoRAStrategy]
    strategy_args: dict[str, Any]
    init: InitMethod | None
    plugin_args: dict[str, dict[str, Any]]

    def check_problem(self, problem: str) -> None:
        """Bad input when the baseline has no meaning for the stream's ``problem`` kind."""
        if self.config.baseline is not None:
            BASELINES.get(self.config.baseline).check_problem(problem)

    def check_sharding(self) -> None:
        """Bad input when the method needs what sharded weights (FSDP2) do not give: a base
        weight's gradient, or base weights that train or are read at every step."""
        parts = [f"baseline {self.config.baseline}", *(f"plugin {p}" for p in self.config.plugins)]
        refused = [(part, NOT_SHARDABLE[part]) for part in parts if part in NOT_SHARDABLE]
        if self.init is not None and "grad" in self.init.needs:
            refused.append((f"init {self.init.name}", "it reads the base weights' gradients"))
        if refused:
            part, why = refused[0]
            raise BadInputError(
                f"{part} cannot run with sharded weights (FSDP2): {why}; launch it with a "
                "data-parallel config"
            )

    def build_strategy(
        self,
        problem: Problem,
        stream: Stream,
        device: torch.device | str,
        *,
        lr: float | None = None,
        plugins: Sequence[SupervisedPlugin] = (),
        evaluator: SupervisedPlugin | None = None,
        verbose: bool = False,
    ) -> LoRAStrategy:
        """The strategy that trains ``stream``: the method's strategy class with the config's
        LoRA shape and recipe (at rate ``lr`` when given, e.g. a searched one), the method's
        plugins and then ``plugins``. The one way a strategy is built: runs, the learning-rate
        search, tests and benchmarks all call it."""
        config = self.config
        targets, lora = adapters(config, problem.backbone)
        names = [task.name for task in stream.tasks]
        return self.strategy(
            problem=problem,
            backbone=problem.backbone,
            stream=stream,
            init=self.init or inits.get(DEFAULT_INIT),  # baselines without one never call it
            init_args=config.init_args,
            lora=lora,
            target_modules=targets,
            recipe=training_recipe(config, lr),
            per_task={  # a search stream holds only the first task(s): the rest do not apply
                index: values
                for key, values in config.per_task.items()
                if (index := task_index(key, names)) is not None
            },
            seed=config.seed,
            precision=config.precision,
            calib_sources=config.calib,
            calib_size=config.calib_size,
            calib_max_memory=(
                parse_bytes(config.calib_max_memory) if config.calib_max_memory else None
            ),
            decompose_dtype=getattr(torch, config.decompose_dtype),
            train_mb_size=config.batch_size // config.grad_accumulation,
            train_epochs=config.epochs,
            eval_mb_size=config.eval_batch_size,
            device=device,
            plugins=[*self.plugins(), *plugins],
            evaluator=evaluator or make_evaluator(verbose),
            **self.strategy_args,
        )

    def plugins(self) -> list[SupervisedPlugin]:
        """Fresh plugin instances (they hold per-run state)."""
        return [PLUGINS.get(name).build(args) for name, args in self.plugin_args.items()]

    def record(self) -> dict[str, Any]:
        """The ``method`` block of ``result.json``: what a leaderboard groups runs by."""
        config = self.config
        baseline = BASELINES.get(config.baseline) if config.baseline else None
        return {
            "name": method_label(config.to_dict()),
            "baseline": config.baseline,
            "description": baseline.description if baseline else self.init.description,
            "args": dict(config.baseline_args),
            "init": config.init,
            "plugins": [
                {"name": name, "description": PLUGINS.get(name).description, "args": args}
                for name, args in self.plugin_args.items()
            ],
            "matrix": baseline.matrix if baseline else SEQUENTIAL_MATRIX,
        }


def training_recipe(config: RunConfig, lr: float | None = None) -> TrainingRecipe:
    """How ``config`` optimizes each task (at rate ``lr`` when given, e.g. a searched one)."""
    return TrainingRecipe(
        lr=config.lr if lr is None else lr,
        head_lr=config.head_lr,
        weight_decay=config.weight_decay,
        scheduler=config.lr_scheduler,
        warmup_ratio=config.warmup_ratio,
        warmup_steps=config.warmup_steps,
        grad_accumulation=config.grad_accumulation,
        max_grad_norm=config.max_grad_norm,
    )


def task_index(key: str, names: Sequence[str]) -> int | None:
    """The 0-based index of the task a ``--per-task`` key names (its name, or its 1-based
    position in the stream), ``None`` if the stream has no such task."""
    if key.isdigit():
        position = int(key)
        return position - 1 if 1 <= position <= len(names) else None
    return names.index(key) if key in names else None


def check_per_task(config: RunConfig, stream: Stream) -> None:
    """Bad input when a ``--per-task`` key names no task of ``stream``."""
    names = [task.name for task in stream.tasks]
    for key in config.per_task:
        if task_index(key, names) is None:
            hint = did_you_mean(key, names, n=1)
            raise BadInputError(
                f"--per-task {key}: {stream.name} has no such task: {hint}give a task name or "
                f"a position from 1 to {len(names)}"
            )


def _resolve_per_task(config: RunConfig, baseline: Baseline | None) -> dict[str, dict[str, Any]]:
    """``config.per_task`` with each baseline argument typed; a key that is neither a task
    setting (epochs, lr) nor an argument of the run's baseline is bad input."""
    resolved = {}
    for task, values in config.per_task.items():
        extra = {key: value for key, value in values.items() if key not in PER_TASK_SETTINGS}
        if extra and baseline is None:
            raise BadInputError(
                f"--per-task {task}: {', '.join(extra)} is not a task setting "
                f"({', '.join(PER_TASK_SETTINGS)}); a baseline's argument needs its --baseline"
            )
        if extra:
            typed = resolve_arguments(
                f"--per-task {task}: baseline '{baseline.name}'", baseline.arguments, extra
            )
            extra = {key: typed[key] for key in extra}
        resolved[task] = {**values, **extra}
    if config.lr_search and any("lr" in values for values in resolved.values()):
        raise BadInputError("--lr-search picks one rate for the stream: drop the per-task lr")
    return resolved


def resolve(config: RunConfig) -> Method:
    """Validate ``config``'s method choice and resolve every argument (see module rules)."""
    baseline = BASELINES.get(config.baseline) if config.baseline else None
    config = dataclasses.replace(config, per_task=_resolve_per_task(config, baseline))
    plugin_args = split_plugin_args(config.plugins, config.plugin_args)
    if len(set(config.plugins)) != len(config.plugins):
        raise BadInputError(f"--plugin given twice: {', '.join(config.plugins)}")
    if config.baseline is None:
        if config.baseline_args:
            raise BadInputError("--baseline-arg needs a --baseline (see --list)")
        init = inits.get(config.init or DEFAULT_INIT)
        config = dataclasses.replace(
            config,
            init=init.name,
            init_args=init.resolve_args(config.init_args),
            plugin_args={k: v for args in plugin_args.values() for k, v in args.items()},
        )
        return Method(config, LoRAStrategy, {}, init, plugin_args)

    if config.plugins:
        raise BadInputError(
            f"--plugin {'/'.join(config.plugins)} pairs with the suite's re-initialized LoRA, "
            f"not with --baseline {baseline.name} (a baseline is already a way to train the "
            f"stream): drop one of them"
        )
    if config.save_adapters and baseline.no_adapter:
        raise BadInputError(
            f"--save-adapters: --baseline {baseline.name} has no adapter to save: "
            f"{baseline.no_adapter}"
        )
    args = baseline.resolve_args(config.baseline_args)
    if baseline.uses_init:
        init = inits.get(config.init or DEFAULT_INIT)
        config = dataclasses.replace(
            config, init=init.name, init_args=init.resolve_args(config.init_args)
        )
    else:
        given = [
            flag
            for flag, used in (
                ("--init", config.init not in (None, DEFAULT_INIT)),
                ("--init-arg", bool(config.init_args)),
                ("--calib", config.calib is not None),
            )
            if used
        ]
        if given:
            raise BadInputError(
                f"--baseline {baseline.name} uses no init method ({baseline.description}): "
                f"drop {', '.join(given)}"
            )
        init = None
        config = dataclasses.replace(config, init=None, init_args={})
    config = dataclasses.replace(config, baseline_args=args)
    return Method(config, baseline.strategy, args, init, {})


def _targets(config: RunConfig, default: list[str]) -> list[str]:
    """The user's ``--targets`` (module-name suffixes) or the backbone's default layers."""
    if config.targets is None:
        return default
    chosen = [name for name in default if any(name.endswith(t) for t in config.targets)]
    if not chosen:
        raise BadInputError(
            f"--targets {','.join(config.targets)} matches no linear layer of the backbone: "
            f"use suffixes such as query,value or dense"
        )
    return chosen


def adapters(config: RunConfig, backbone: Backbone) -> tuple[list[str], LoRASettings]:
    """The layers LoRA adapts and its shape, checked against ``backbone``."""
    targets = _targets(config, backbone.target_modules)
    _check_rank(config.rank, backbone.encoder, targets)
    return targets, LoRASettings(
        rank=config.rank, alpha=config.alpha, rslora=config.rslora, dropout=config.lora_dropout
    )


def _check_rank(rank: int, encoder: torch.nn.Module, targets: list[str]) -> None:
    """Fail before any work when a target layer is too small for ``rank``."""
    modules = dict(encoder.named_modules())
    smallest = min(min(modules[name].weight.shape) for name in targets)
    if rank > smallest:
        raise BadInputError(
            f"rank {rank} does not fit the smallest adapted layer ({smallest} wide): "
            f"choose --rank between 1 and {smallest}"
        )
