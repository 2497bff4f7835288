"""The cl-lora training strategy: Avalanche's supervised template, specialised for LoRA re-init.

Per experience (task), Avalanche calls ``model_adaptation``; here that merges the previous
task's adapter into the backbone, creates the task's head, and attaches a fresh LoRA initialized
by the chosen method. The optimizer (AdamW over the adapter and the task's head, with linear
warm-up and decay) is rebuilt for every task. Everything else -- the loops, the plugin hooks,
the loggers -- is Avalanche's, so its plugins (replay, EWC, LwF, loggers) compose with it.

What depends on the kind of model (batching, the loss, prediction, the model itself) is asked of
the run's :class:`~cl_lora.problems.Problem`; the strategy never branches on it. Evaluation
stores each batch's predicted label ids in ``mb_output`` (the scorer reads them).
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from avalanche.logging import InteractiveLogger
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.templates import SupervisedTemplate
from torch.utils.data import DataLoader

from cl_lora import distributed
from cl_lora.backbones import Backbone
from cl_lora.deltas import LoRAHistory
from cl_lora.errors import LossNotFinite
from cl_lora.inits import InitMethod
from cl_lora.inits.factors import decomposing_in
from cl_lora.lora import LoRASettings, attach_adapters, initial_adapters, merge_lora
from cl_lora.problems import Problem
from cl_lora.strategy.calibrate import Calibrator
from cl_lora.strategy.dash import TRAINING_PLUGINS
from cl_lora.strategy.optim import TrainingRecipe, task_optimizer
from cl_lora.strategy.plugins import TaskScorePlugin
from cl_lora.streams import Stream


@dataclass(frozen=True)
class StandIn:
    """What a process whose share of a batch is empty runs instead when the weights are sharded
    (FSDP2): one row of the batch, collated, whose loss counts 0 and whose predictions are
    dropped. Its forward (and backward) gathers the weights with the other processes."""

    batch: list[Any]


class LoRAStrategy(SupervisedTemplate):
    """Re-initializes a LoRA per task with ``init`` and trains it with the task's head.

    ``scorer`` holds the task scores of the last ``eval`` call. ``checkpointed`` names the
    attributes a subclass carries from task to task (e.g. earlier tasks' subspaces), so that a
    resumed run gets them back.
    """

    checkpointed: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        problem: Problem,
        backbone: Backbone,
        stream: Stream,
        init: InitMethod,
        init_args: Mapping[str, Any],
        lora: LoRASettings,
        target_modules: Sequence[str],
        recipe: TrainingRecipe,
        seed: int,
        per_task: Mapping[int, Mapping[str, Any]] | None = None,
        precision: str = "fp32",
        calib_sources: tuple[str, ...] | None = None,
        calib_size: int = 256,
        calib_max_memory: int | None = None,
        decompose_dtype: torch.dtype = torch.float64,
        **template_args: Any,
    ) -> None:
        model = problem.build_model()
        placeholder = torch.optim.AdamW(model.parameters(), lr=recipe.lr)  # replaced per task
        self.scorer = TaskScorePlugin(stream)
        plugins: list[Any] = [self.scorer]
        if init.training_plugin is not None:  # the method's own plugin acts before the user's
            plugin = TRAINING_PLUGINS[init.training_plugin]
            plugins.append(plugin.from_args(init.resolve_args(init_args)))
        plugins += template_args.pop("plugins", None) or []
        super().__init__(
            model=model,
            optimizer=placeholder,
            criterion=problem.loss,
            plugins=plugins,
            **template_args,
        )
        self.problem = problem
        self.backbone = backbone
        self.stream = stream
        self.init = init
        self.init_args = dict(init_args)
        self.lora = lora
        self.target_modules = list(target_modules)
        self.recipe = recipe
        self.lr = recipe.lr  # this task's adapter rate (per-task settings may change it)
        self.per_task = {task: dict(values) for task, values in (per_task or {}).items()}
        self.task_defaults: dict[str, Any] | None = None  # the run's values, on the first task
        self.loss_share = 1.0  # of the current micro-batch in its optimizer step
        self.seed = seed
        self.precision = precision
        self.decompose_dtype = decompose_dtype
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.trainable_params: dict[int, int] = {}
        self.init_seconds: dict[int, float] = {}
        self.training_records: dict[int, dict[str, Any]] = {}  # steps, clipping, ... per task
        self.heads: torch.nn.Module = torch.nn.ModuleList()  # the heads the current task trains
        self.history = LoRAHistory()  # every adapter's factors: what a checkpoint replays
        self.calibrator = Calibrator(
            init=init,
            init_args=self.init_args,
            sources=calib_sources or init.calibration,
            size=calib_size,
            stream=stream,
            problem=problem,
            lora=lora,
            target_modules=self.target_modules,
            batch_size=self.eval_mb_size,
            train_batch_size=self.train_mb_size,
            lr=recipe.lr,
            grad_accumulation=recipe.grad_accumulation,
            max_grad_norm=recipe.max_grad_norm,
            device=self.device,
            max_memory=calib_max_memory,
        )

    def _check_distributed_training_compatibility(self) -> bool:
        """Every plugin the suite runs works across processes (batches are shared out and
        gathered by the loop, see :mod:`cl_lora.distributed`), so Avalanche's warning about
        plugins without its own distributed support does not apply."""
        return True

    # -- resumable state --------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        """Per-task bookkeeping a resumed run needs, plus the attributes a subclass names in
        ``checkpointed`` (the model and plugins are saved apart)."""
        return {
            "trainable_params": dict(self.trainable_params),
            "init_seconds": dict(self.init_seconds),
            "training_records": dict(self.training_records),
            "calibration_reports": list(self.calibrator.reports),
            "attributes": {name: getattr(self, name) for name in self.checkpointed},
        }

    def restore_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        self.trainable_params = dict(state["trainable_params"])
        self.init_seconds = dict(state["init_seconds"])
        self.training_records = dict(state.get("training_records", {}))
        self.calibrator.reports = list(state["calibration_reports"])
        for name, value in state["attributes"].items():
            setattr(self, name, value)

    # -- per-task model and optimizer -------------------------------------------------------
    @property
    def task_id(self) -> int:
        return int(self.experience.current_experience)

    def model_adaptation(self, model: torch.nn.Module | None = None) -> torch.nn.Module:
        """In training: add the task's head(s), then prepare the encoder (by default: merge the
        last adapter and attach a fresh LoRA)."""
        model = super().model_adaptation(model)
        if self.is_training:
            start = time.perf_counter()
            self.heads = self.make_heads(model)
            generator = torch.Generator().manual_seed(self.seed * 1000 + self.task_id)
            with decomposing_in(self.decompose_dtype):
                encoder_params = self.prepare_encoder(model, generator)
            self.trainable_params[self.task_id] = encoder_params + sum(
                p.numel() for p in self.heads.parameters()
            )
            # every process starts the task from process 0's adapters and heads
            distributed.broadcast_tensors(p for p in model.parameters() if p.requires_grad)
            distributed.check_replicas(model, f"after task {self.task_id + 1}'s init")
            self.init_seconds[self.task_id] = time.perf_counter() - start
        return model.to(self.device)

    # -- hooks that baselines override (baselines/) -------------------------------------------
    def make_heads(self, model: torch.nn.Module) -> torch.nn.Module:
        """Create the head(s) this task trains and return them: the current task's head."""
        task = self.stream.tasks[self.task_id]
        model.add_head(self.task_id, task.num_labels, task.classes)
        return model.head_of(self.task_id)

    def prepare_encoder(self, model: torch.nn.Module, generator: torch.Generator) -> int:
        """Make the encoder ready for this task; returns its trainable parameter count.

        The suite's life cycle: fold the last adapter into the backbone and attach a fresh LoRA
        initialized by the init method -- its statistics collected and its factors computed
        one group of layers at a time (one group unless they exceed the memory budget).
        """
        merge_lora(model, self.history)
        adapters = {}
        for layers in self.calibrator.layer_groups(model.encoder):
            stats = self.init_stats(model, generator, layers)
            adapters |= initial_adapters(
                model.encoder, self.lora, layers, self.init, self.init_args, stats, generator
            )
            del stats  # before the next group's
        # process 0's factors everywhere, before the history records them
        distributed.broadcast_tensors(t for a in adapters.values() for t in (a.A, a.B))
        return attach_adapters(model, self.lora, self.target_modules, adapters, self.history)

    def init_stats(
        self, model: torch.nn.Module, generator: torch.Generator, layers: Sequence[str]
    ) -> dict[str, dict[str, torch.Tensor]]:
        """Per layer of ``layers``, the statistics the init method reads (collected on
        ``model``)."""
        return self.calibrator.collect(model, self.task_id, generator, layers)

    def _before_training_exp(self, **kwargs: Any) -> None:
        """This task's own settings first (epochs, rate, baseline arguments), then
        Avalanche's preparation (data loader, model adaptation, optimizer)."""
        if self.task_defaults is None:  # a baseline's arguments, as its mixin holds them
            keys = {key for values in self.per_task.values() for key in values}
            self.task_defaults = {"epochs": self.train_epochs, "lr": self.lr} | {
                key: getattr(self, key) for key in keys - {"epochs", "lr"}
            }
        distributed.broadcast_rng()  # one data order on every process
        values = {**self.task_defaults, **self.per_task.get(self.task_id, {})}
        self.train_epochs, self.lr = values.pop("epochs"), values.pop("lr")
        for key, value in values.items():
            setattr(self, key, value)
        super()._before_training_exp(**kwargs)

    def check_model_and_optimizer(self, **kwargs: Any) -> None:
        self.model = self.model_adaptation()
        self.make_optimizer()

    def make_optimizer(self, **kwargs: Any) -> None:
        """A fresh AdamW over the encoder's trainable parameters and this task's head(s), with
        the recipe's schedule over the task's optimizer steps."""
        recipe = self.recipe
        self.optimizer = task_optimizer(
            self.model.encoder, self.heads, self.lr, recipe.head_lr, recipe.weight_decay
        )
        steps = recipe.steps(len(self.dataloader), self.train_epochs)
        self.scheduler = recipe.schedule(self.optimizer, steps)
        self.training_records[self.task_id] = {
            "epochs": self.train_epochs,
            "lr": self.lr,
            "micro_batch": self.train_mb_size,
            "grad_accumulation": recipe.grad_accumulation,
            "optimizer_steps": 0,
            "clipped_steps": 0,
        }

    def training_epoch(self, **kwargs: Any) -> None:
        """Avalanche's SGD epoch, with gradient accumulation: each optimizer step reads
        ``grad_accumulation`` micro-batches, each weighted by its share of the step's loss terms
        (examples, or answer tokens: :meth:`Problem.loss_terms`), so that the step equals one on
        the whole batch. Plugins see one training iteration per optimizer step (``mb_*`` hold
        its last micro-batch) and every micro-batch's forward and backward hooks."""
        size = self.recipe.grad_accumulation
        micro_batches = iter(self.dataloader)
        while group := list(itertools.islice(micro_batches, size)):
            if self._stop_training:
                break
            group = [batch for batch in group if batch is not None]  # an empty share
            terms = [self._loss_terms(batch) for batch in group]
            step_terms = distributed.sum_over_processes(sum(terms))  # the whole step's
            if not group:  # this process's shares of the step were all empty
                self._before_training_iteration(**kwargs)
                self.optimizer.zero_grad()
                self.loss = self._make_empty_loss()
            for k, (batch, share) in enumerate(zip(group, terms, strict=True)):
                self.mbatch = batch.batch if isinstance(batch, StandIn) else batch
                self._unpack_minibatch()
                if k == 0:
                    self._before_training_iteration(**kwargs)
                    self.optimizer.zero_grad()
                self.loss = self._make_empty_loss()
                self.loss_share = share / max(1, step_terms)
                self._before_forward(**kwargs)
                self.mb_output = self.forward()
                self._after_forward(**kwargs)
                self.loss += self.criterion()
                self._before_backward(**kwargs)
                self.backward()
                self._after_backward(**kwargs)
            self._before_update(**kwargs)
            self.optimizer_step()
            self._after_update(**kwargs)
            self._after_training_iteration(**kwargs)

    def optimizer_step(self) -> None:
        """Clip the step's gradient norm (when the recipe says so, counting the steps that
        were clipped), then step the optimizer and the schedule."""
        record = self.training_records[self.task_id]
        parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        distributed.sum_gradients(parameters)  # each process's share of the step, summed
        if self.recipe.max_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(parameters, self.recipe.max_grad_norm)
            record["clipped_steps"] += int(norm > self.recipe.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        record["optimizer_steps"] += 1

    # -- data -------------------------------------------------------------------------------
    def _loader(self, shuffle: bool, batch_size: int) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed * 1000 + self.task_id)
        dataset = self.adapted_dataset
        if not shuffle and (order := self.problem.eval_order(dataset)) is not None:
            dataset = dataset.subset(order)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            collate_fn=self.collate_share,
            generator=generator,
            pin_memory=self.device.type == "cuda",
        )

    def make_train_dataloader(self, **kwargs: Any) -> None:
        self.dataloader = self._loader(shuffle=True, batch_size=self.train_mb_size)

    def make_eval_dataloader(self, **kwargs: Any) -> None:
        self.dataloader = self._loader(shuffle=False, batch_size=self.eval_mb_size)

    def collate(self, items: Sequence[tuple[dict, int, int]]) -> list[Any]:
        examples, labels, tasks = zip(*items, strict=True)
        inputs, targets = self.problem.collate(examples, labels, training=self.is_training)
        return [inputs, targets, torch.tensor(tasks)]

    def collate_share(self, items: Sequence[tuple[dict, int, int]]) -> list[Any] | StandIn | None:
        """This process's share of a global batch, collated; the whole batch in a one-process
        run. An empty share is ``None``, or under sharded weights a :class:`StandIn` (every
        process must run the same forwards)."""
        share = distributed.share(items)
        if share:
            return self.collate(share)
        return StandIn(self.collate(items[-1:])) if distributed.sharded() else None

    def _loss_terms(self, batch: list[Any] | StandIn) -> int:
        """What the micro-batch adds to its step's loss terms (a stand-in: nothing)."""
        return 0 if isinstance(batch, StandIn) else self.problem.loss_terms(batch[1])

    def _unpack_minibatch(self) -> None:
        inputs, targets, tasks = self.mbatch
        inputs = {  # tensors to the device; texts (an evaluation batch's references) stay
            k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in inputs.items()
        }
        self.mbatch = [inputs, targets.to(self.device), tasks.to(self.device)]

    # -- forward, loss and prediction -------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast when asked for, otherwise nothing."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def forward(self) -> torch.Tensor:
        """The problem's training forward (task-aware for heads), under the run's precision."""
        with self.autocast():
            return self.problem.forward(self.model, self.mb_x, self.mb_task_id).float()

    def eval_epoch(self, **kwargs: Any) -> None:
        """Avalanche's evaluation loop, predicting through the problem: ``mb_output`` holds
        the batch's predicted label ids (a generation pass for a language model)."""
        for batch in self.dataloader:
            if isinstance(batch, StandIn):  # its forward keeps the processes in step; unused
                self.mbatch = batch.batch
                self._unpack_minibatch()
                with self.autocast(), torch.no_grad():
                    self.problem.predict(self.model, self.mb_x, self.mb_task_id)
                batch = None
            if batch is not None:
                self.mbatch = batch
                self._unpack_minibatch()
                self._before_eval_iteration(**kwargs)
                self._before_eval_forward(**kwargs)
                with self.autocast(), torch.no_grad():
                    self.mb_output = self.problem.predict(self.model, self.mb_x, self.mb_task_id)
                self._after_eval_forward(**kwargs)
            if distributed.current().many:
                self._gather_predictions(has_share=batch is not None)
            self._after_eval_iteration(**kwargs)

    def _gather_predictions(self, has_share: bool) -> None:
        """The whole evaluation batch's predictions, targets and task ids, in order, from
        every process's share (``mb_output`` and ``mbatch``, as the scorer reads them)."""
        local = (
            (self.mb_output.cpu(), self.mb_y.cpu(), self.mb_task_id.cpu()) if has_share else None
        )
        shares = [s for s in distributed.gather_in_order(local) if s is not None]
        outputs, targets, tasks = (torch.cat(part) for part in zip(*shares, strict=True))
        self.mb_output = outputs
        self.mbatch = [self.mbatch[0] if has_share else {}, targets, tasks]

    def backward(self) -> None:
        """The micro-batch's loss, scaled by its share of the optimizer step, backwards (a
        plugin's term added to ``loss`` before this is scaled with it, so it counts once per
        step)."""
        if not torch.isfinite(self.loss):
            task = self.stream.tasks[self.task_id].name
            raise LossNotFinite(
                f"loss became {self.loss.item()} on task {self.task_id} ({task}) at step "
                f"{self.clock.train_exp_iterations}: lower --lr or use --precision fp32"
            )
        (self.loss * self.loss_share).backward(retain_graph=self.retain_graph)


def make_evaluator(verbose: bool) -> EvaluationPlugin:
    """Avalanche's interactive progress bars when ``verbose`` and the output is a terminal,
    else silence (without its no-logger warning). Redirected to a file, a bar would write each
    update two or three times (tqdm redraws with carriage returns); the run's own one-line
    progress per task is then the log."""
    bars = verbose and sys.stdout.isatty()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified")
        return EvaluationPlugin(loggers=[InteractiveLogger()] if bars else [])
