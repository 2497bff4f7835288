"""Per-task init cost of every init method, against one task's training and PEFT's own inits.

For each method and each backbone -- the offline text backbone (all-MiniLM-L6-v2 on the first
``offline-text`` task, 36 adapted linears) and a randomly initialized ViT-B (timm
``vit_base_patch16_224``: 12 blocks, 768 wide; ``qkv``, ``proj``, ``fc1``, ``fc2`` of every block,
48 linears) -- it times what the strategy does before each task (the target in
docs/ARCHITECTURE.md: a task's init, calibration included, costs a small fraction of its
training):

- calibration: collecting the statistics the method declares (``init.needs``) on its default data
  (text: ``Calibrator.collect`` exactly as the strategy calls it; ViT: the same calibration
  functions on random images), and
- attach: ``attach_lora``, wrapping the encoder in PEFT and initializing every adapted layer
  (the decompositions and the copies).

In the same run it trains plain LoRA on the text task for a few optimizer steps and extrapolates
one task's training time (the default recipe: batch 16, 2 epochs), so each method's init cost
is also a fraction of that. For the methods PEFT implements it times PEFT's own path on a copy
of the same model with the same data (``get_peft_model`` with ``init_lora_weights=...``, plus its
preprocessing: CorDA's covariance pass, EVA's incremental PCA, LoRA-GA's gradient pass) and gives
ours / PEFT. Finally it reports the memory of one covariance collection: one matrix per distinct
layer input (what cl-lora keeps) vs one per adapted module (what PEFT's CorDA keeps).

Timing: ``time.perf_counter``; per method and backbone one warm-up call, then ``--repeats``
(text) or ``--vit-repeats`` (ViT) timed calls, ours and PEFT's alternating so drift in machine
load hits both; the median is reported. A warm-up call that takes :data:`LONG_CALL_S` or more is
kept as the first timed call: the one-time costs a warm-up removes (first-use allocations,
library initialization, well under 0.1 s) are then under 1% of it, and on the ViT a single call of
a covariance method takes minutes on a CPU. Untimed: loading, copying the model before each
call, building the data.

    python -m benchmarks.init_cost [--methods M ...] [--repeats 3] [--skip-vit] [--json OUT]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import importlib
import importlib.util
import itertools
import statistics
import sys
import time
import types
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import peft
import torch
import torch.nn.functional as F
from peft import EvaConfig, LoraConfig, LoraGAConfig, get_peft_model
from peft.tuners.lora.config import CordaConfig
from torch import nn
from torch.utils.data import DataLoader

from benchmarks._common import (
    LONG_CALL_S,
    benchmark_parser,
    entry_point,
    init_method_names,
    labelled_collate,
    run_benchmark,
)
from cl_lora import inits, streams
from cl_lora.backbones import Backbone, ContinualClassifier, load_text_backbone
from cl_lora.backbones.base import Inputs
from cl_lora.calibration import collect_input_covariances, collect_statistics
from cl_lora.calibration.gradients import BatchLoss
from cl_lora.cli import require_at_least_one
from cl_lora.config import RunConfig, resolve_device
from cl_lora.errors import BadInputError
from cl_lora.experiment import resolve_config
from cl_lora.inits import InitMethod
from cl_lora.lora import LoRASettings, attach_lora
from cl_lora.problems.classification import Classification, cross_entropy_on
from cl_lora.strategy.calibrate import Calibrator
from cl_lora.strategy.experiences import TaskExamples
from cl_lora.strategy.optim import task_optimizer

STREAM = "offline-text"
TRAIN_INIT = "lora"  # the method trained to measure one task's training time
# rank, alpha, batch size, epochs, lr, calib size, max_length: the default run's resolved recipe
RECIPE = resolve_config(RunConfig())
VIT_MODEL = "vit_base_patch16_224"
VIT_TARGETS = ("qkv", "proj", "fc1", "fc2")
VIT_CLASSES = 10
MiB = 2**20
#: PEFT's EVA cycles over its data until its incremental PCA converges; give up after this many
#: passes over the calibration batches (reported, not hidden).
EVA_MAX_PASSES = 10


# -- settings --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """What one benchmark run measures; the LoRA shape and training recipe are the default run's."""

    methods: tuple[str, ...] = ()  # empty: every registered method
    repeats: int = 3
    vit_repeats: int = 1
    calib_size: int = RECIPE.calib_size
    warmup_steps: int | None = None  # text warm-up methods; None: the method's default
    train_steps: int = 20
    train_warmup_steps: int = 2
    task_index: int = 0
    skip_vit: bool = False
    skip_peft: bool = False
    vit_model: str = VIT_MODEL
    vit_image_size: int = 224
    vit_images: int = 16
    vit_batch_size: int = 8
    vit_warmup_steps: int = 2
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        require_at_least_one(
            self,
            ("repeats", "vit_repeats", "calib_size", "train_steps", "vit_images")
            + ("vit_batch_size", "vit_warmup_steps", "vit_image_size", "warmup_steps"),
        )
        if self.train_warmup_steps < 0 or self.task_index < 0:
            raise BadInputError("--train-warmup-steps and --task-index must not be negative")
        if not self.skip_vit:
            import timm

            if not timm.is_model(self.vit_model):
                raise BadInputError(
                    f"unknown timm model '{self.vit_model}': pass a timm ViT name such as "
                    f"{VIT_MODEL}, or --skip-vit"
                )
        init_method_names(self.methods)  # one-line error for an unknown name

    @property
    def method_names(self) -> list[str]:
        return init_method_names(self.methods)

    @property
    def lora(self) -> LoRASettings:
        return LoRASettings(rank=RECIPE.rank, alpha=RECIPE.alpha, rslora=RECIPE.rslora)


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer stops after the work it times."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- the two backbones -----------------------------------------------------------------------------
@dataclass
class Case:
    """One backbone with its calibration data, as both our path and PEFT's path use it.

    ``model`` is the classifier (encoder + the task's head, no LoRA) that every call copies.
    ``collect`` is our calibration (what the strategy runs before a task). The ``peft_*``
    callables yield the same data for PEFT's preprocessing, built lazily so that preparing
    inputs (tokenizing) is timed on both sides.
    """

    name: str
    description: str
    model: ContinualClassifier
    backbone: Backbone
    task_id: int
    device: torch.device
    collect: Callable[[InitMethod, dict[str, Any], ContinualClassifier, torch.Generator], dict]
    init_args: Callable[[InitMethod], dict[str, Any]]
    peft_batches: Callable[[InitMethod], Iterable[Inputs]]  # input-covariance data, batched
    peft_singles: Callable[[InitMethod], Iterable[Inputs]]  # the same, one example at a time
    peft_labelled: Callable[[], Iterable[tuple[Inputs, torch.Tensor]]]  # gradient data
    eva_functions: dict[str, Any]
    calibration_note: str
    repeats: int

    @property
    def target_modules(self) -> list[str]:
        return self.backbone.target_modules


def _to(inputs: Inputs, device: torch.device) -> Inputs:
    return {key: value.to(device) for key, value in inputs.items()}


def text_case(settings: Settings, device: torch.device) -> tuple[Case, streams.Stream]:
    """MiniLM on the task of ``offline-text``; calibration exactly as the strategy runs it."""
    stream = streams.build(STREAM, streams.StreamOptions())
    if settings.task_index >= len(stream.tasks):
        raise BadInputError(
            f"--task-index {settings.task_index} is out of range: {STREAM} has "
            f"{len(stream.tasks)} tasks (0..{len(stream.tasks) - 1})"
        )
    task_id = settings.task_index
    backbone = load_text_backbone(RECIPE.backbone, max_length=RECIPE.max_length)
    model = ContinualClassifier(backbone, shared_head=stream.shared_head)
    torch.manual_seed(settings.seed)
    model.add_head(task_id, stream.tasks[task_id].num_labels)
    model = model.to(device).eval()
    calibrators: dict[str, Calibrator] = {}

    def init_args(init: InitMethod) -> dict[str, Any]:
        if "warmup_steps" in init.arguments and settings.warmup_steps is not None:
            return {"warmup_steps": settings.warmup_steps}
        return {}

    def calibrator(init: InitMethod) -> Calibrator:
        """One per method for the whole run, as the strategy keeps one for the whole stream."""
        if init.name not in calibrators:
            calibrators[init.name] = Calibrator(
                init=init,
                init_args=init_args(init),
                sources=init.calibration,
                size=settings.calib_size,
                stream=stream,
                problem=Classification(backbone, stream),
                lora=settings.lora,
                target_modules=backbone.target_modules,
                batch_size=RECIPE.eval_batch_size,  # what LoRAStrategy passes (eval_mb_size)
                train_batch_size=RECIPE.batch_size,
                lr=RECIPE.lr,
                device=device,
            )
        return calibrators[init.name]

    def collect(
        init: InitMethod,
        args: dict[str, Any],
        model: ContinualClassifier,
        generator: torch.Generator,
    ) -> dict[str, dict[str, torch.Tensor]]:
        return calibrator(init).collect(model, task_id, generator)

    # Built now, untimed, with the probe set read once: the strategy reads it once per run, not
    # once per task (its Calibrator keeps it), so it is no part of the per-task cost.
    probe = None
    for name in {*settings.method_names, "lora-null", "lora-ga"}:  # + the two used below
        cal = calibrator(inits.get(name))
        if "input_cov" in cal.init.needs and "probe" in cal.sources:
            if probe is None:
                cal._probe_rows()
                probe = cal._probe
            cal._probe = probe

    # PEFT reads the very rows our calibration reads (the Calibrator's own selection helpers).
    def peft_batches(init: InitMethod) -> Iterator[Inputs]:
        cal = calibrator(init)
        return cal.input_batches(task_id)[0]

    def peft_singles(init: InitMethod) -> Iterator[Inputs]:
        for row in calibrator(init).input_rows(task_id)[0]:
            yield _to(backbone.collate([row]), device)

    def peft_labelled() -> Iterator[tuple[Inputs, torch.Tensor]]:
        cal = calibrator(inits.get("lora-ga"))
        rows = cal._rows(stream.tasks[task_id].train, settings.calib_size, labelled=True)
        for start in range(0, len(rows), cal.batch_size):
            part = [dict(row) for row in rows[start : start + cal.batch_size]]
            labels = torch.tensor([row.pop("label") for row in part], device=device)
            yield _to(backbone.collate(part), device), labels

    task = stream.tasks[task_id]
    case = Case(
        name="minilm",
        description=(
            f"all-MiniLM-L6-v2, {len(backbone.target_modules)} adapted linears, {STREAM} task "
            f"{task_id} ({task.name})"
        ),
        model=model,
        backbone=backbone,
        task_id=task_id,
        device=device,
        collect=collect,
        init_args=init_args,
        peft_batches=peft_batches,
        peft_singles=peft_singles,
        peft_labelled=peft_labelled,
        eva_functions={},  # PEFT's defaults are for token inputs with an attention mask
        calibration_note=(
            f"calibration: each method's default source (probe or task), {settings.calib_size} "
            f"examples in batches of {RECIPE.eval_batch_size}, max_length {RECIPE.max_length}"
            + (
                f"; warm-up methods {settings.warmup_steps} steps"
                if settings.warmup_steps is not None
                else "; warm-up methods their default steps"
            )
        ),
        repeats=settings.repeats,
    )
    return case, stream


def vit_backbone(settings: Settings) -> Backbone:
    """A randomly initialized timm ViT (nothing is downloaded: ``pretrained=False``)."""
    import timm

    try:
        encoder = timm.create_model(
            settings.vit_model,
            pretrained=False,
            num_classes=0,
            img_size=settings.vit_image_size,
        )
    except (RuntimeError, TypeError) as error:  # timm's "unknown model" is a RuntimeError
        raise BadInputError(
            f"cannot build timm model '{settings.vit_model}' ({str(error).splitlines()[0]}): "
            "pass a timm ViT name such as vit_base_patch16_224"
        ) from None
    targets = [
        name
        for name, module in encoder.named_modules()
        if isinstance(module, nn.Linear)
        and name.startswith("blocks.")
        and name.rsplit(".", 1)[-1] in VIT_TARGETS
    ]
    if not targets:
        raise BadInputError(
            f"timm model '{settings.vit_model}' has no blocks.*.{{{','.join(VIT_TARGETS)}}} "
            "linears: pass a timm ViT"
        )
    return Backbone(
        encoder=encoder,
        collate=lambda rows: {"pixel_values": torch.stack([r["pixel_values"] for r in rows])},
        features=lambda encoder, inputs: encoder(inputs["pixel_values"]),
        feature_dim=encoder.num_features,
        target_modules=targets,
        source={"name": settings.vit_model, "pretrained": False},
    )


@dataclass
class ImageCalibration:
    """The ViT case's :class:`~cl_lora.calibration.CalibrationData`: every source (probe, task)
    is the same random images; gradients and warm-ups use their random labels."""

    init: InitMethod
    init_args: dict[str, Any]
    lora: LoRASettings
    target_modules: Sequence[str]
    batches: list[tuple[Inputs, torch.Tensor]]
    lr: float = RECIPE.lr
    grad_accumulation: int = RECIPE.grad_accumulation
    max_grad_norm: float | None = RECIPE.max_grad_norm

    @property
    def size(self) -> int:
        return sum(len(labels) for _, labels in self.batches)

    @property
    def batch_size(self) -> int:
        return len(self.batches[0][1])

    train_batch_size = batch_size

    def resolved_args(self) -> dict[str, Any]:
        return self.init.resolve_args(self.init_args)

    def input_batches(self, task_id: int) -> tuple[Iterable[Inputs], dict[str, int]]:
        return (x for x, _ in self.batches), {"images": self.size}

    def labelled_batches(
        self, task_id: int, count: int, size: int
    ) -> list[tuple[Inputs, torch.Tensor]]:
        return self.batches  # fixed batches; a warm-up cycles over them

    def loss(self, task_id: int) -> BatchLoss:
        return cross_entropy_on(task_id)

    def loss_terms(self, targets: torch.Tensor) -> int:
        return len(targets)


def vit_case(settings: Settings, device: torch.device) -> Case:
    """The random ViT on random images with random labels (calibration cost, not accuracy).

    Every data source (probe, task) is the same images here (:class:`ImageCalibration`); the
    collectors are the strategy's (the ``Calibrator`` reads its data from a text stream).
    """
    torch.manual_seed(settings.seed)
    backbone = vit_backbone(settings)
    model = ContinualClassifier(backbone, shared_head=False)
    task_id = 0
    model.add_head(task_id, VIT_CLASSES)
    model = model.to(device).eval()
    generator = torch.Generator().manual_seed(settings.seed)
    size = settings.vit_image_size
    images = torch.randn(settings.vit_images, 3, size, size, generator=generator)
    labels = torch.randint(0, VIT_CLASSES, (settings.vit_images,), generator=generator)
    per_batch = settings.vit_batch_size
    batches = [
        ({"pixel_values": x.to(device)}, y.to(device))
        for x, y in zip(images.split(per_batch), labels.split(per_batch), strict=True)
    ]
    lora = settings.lora

    def init_args(init: InitMethod) -> dict[str, Any]:
        if "warmup_steps" in init.arguments:
            return {"warmup_steps": settings.vit_warmup_steps}
        return {}

    def collect(
        init: InitMethod,
        args: dict[str, Any],
        model: ContinualClassifier,
        generator: torch.Generator,
    ) -> dict[str, dict[str, torch.Tensor]]:
        """The registered collectors of ``init.needs`` (what ``Calibrator.collect`` runs), on
        the image batches."""
        data = ImageCalibration(init, args, lora, backbone.target_modules, batches)
        return collect_statistics(data, init.needs, model, task_id, generator)[0]

    def peft_singles(init: InitMethod) -> Iterator[Inputs]:
        for x, _ in batches:
            for image in x["pixel_values"].split(1):
                yield {"pixel_values": image}

    def prepare_layer_inputs(layer_input: Any, model_input: Any, layer_name: str) -> torch.Tensor:
        """EVA hook input -> ``(tokens, features)`` (every token of every image counts)."""
        x = layer_input[0] if isinstance(layer_input, (tuple, list)) else layer_input
        return x.reshape(-1, x.shape[-1])

    return Case(
        name="vit-b" if settings.vit_model == VIT_MODEL else settings.vit_model,
        description=(
            f"{settings.vit_model} (random init, {len(backbone.target_modules)} adapted "
            f"linears), {settings.vit_images} random images {size}x{size}"
        ),
        model=model,
        backbone=backbone,
        task_id=task_id,
        device=device,
        collect=collect,
        init_args=init_args,
        peft_batches=lambda init: [x for x, _ in batches],
        peft_singles=peft_singles,
        peft_labelled=lambda: batches,
        eva_functions={
            "forward_fn": lambda model, inputs: model(inputs["pixel_values"]),
            "prepare_model_inputs_fn": None,
            "prepare_layer_inputs_fn": prepare_layer_inputs,
        },
        calibration_note=(
            f"calibration: {settings.vit_images} random images in batches of "
            f"{settings.vit_batch_size} for every source; warm-up methods "
            f"{settings.vit_warmup_steps} steps (not their default: scale that part linearly)"
        ),
        repeats=settings.vit_repeats,
    )


# -- our path --------------------------------------------------------------------------------------
def time_ours(case: Case, init: InitMethod, settings: Settings) -> tuple[float, float]:
    """``(calibration s, attach s)`` of one per-task init on a fresh copy of the model."""
    model = copy.deepcopy(case.model)
    args = case.init_args(init)
    generator = torch.Generator().manual_seed(settings.seed * 1000 + case.task_id)
    gc.collect()
    _sync(case.device)
    start = time.perf_counter()
    stats = case.collect(init, args, model, generator) if init.needs else {}
    _sync(case.device)
    calibrated = time.perf_counter()
    attach_lora(model, settings.lora, case.target_modules, init, args, stats, generator)
    _sync(case.device)
    return (calibrated - start if init.needs else 0.0), time.perf_counter() - calibrated


# -- PEFT's path -----------------------------------------------------------------------------------
class PEFTUnavailable(Exception):
    """PEFT's path for a method cannot run here; the message says why."""


@dataclass(frozen=True)
class PEFTMethod:
    """How PEFT spells one of our methods, and which preprocessing it needs."""

    init_lora_weights: bool | str
    prep: str | None = None  # None, "corda", "eva" or "lora_ga"
    config: Callable[[], dict[str, Any]] = dict
    note: str = ""


PEFT_METHODS: dict[str, PEFTMethod] = {
    "lora": PEFTMethod(True),
    "gaussian": PEFTMethod("gaussian", note="PEFT draws A with std 1/r, ours 1/sqrt(r)"),
    "pissa": PEFTMethod("pissa", note="PEFT's exact SVD ('pissa', not 'pissa_niter_N')"),
    "olora": PEFTMethod("olora"),
    "mica": PEFTMethod("mica"),
    "corda-kpm": PEFTMethod(
        "corda",
        "corda",
        lambda: {"corda_config": CordaConfig(corda_method="kpm", verbose=False)},
        "PEFT's covariance hook takes one example per forward; one matrix per module",
    ),
    "corda-ipm": PEFTMethod(
        "corda",
        "corda",
        lambda: {"corda_config": CordaConfig(corda_method="ipm", verbose=False)},
        "PEFT's covariance hook takes one example per forward; one matrix per module",
    ),
    "eva": PEFTMethod(
        "eva",
        "eva",
        lambda: {"eva_config": EvaConfig(rho=1.0)},
        "rho=1 (rank r per layer, as ours); incremental PCA cycles the batches to convergence",
    ),
    "lora-ga": PEFTMethod(
        "lora_ga",
        "lora_ga",
        lambda: {"lora_ga_config": LoraGAConfig()},
        "PEFT uses a randomized SVD of the gradient",
    ),
}


CORDA_SUBSTITUTE = "attrs is not installed: dataclasses.dataclass stood in for attr.dataclass"


def peft_corda_module() -> tuple[types.ModuleType, str]:
    """PEFT's CorDA module and a note. It imports ``attr`` (attrs, no dependency of peft) for
    one plain dataclass; where attrs is missing, ``dataclasses.dataclass`` stands in (as in
    tests/test_init_methods.py), only while the module is imported."""
    name = "peft.tuners.lora.corda"
    if importlib.util.find_spec("attr") is not None:
        return importlib.import_module(name), ""
    if name not in sys.modules:
        sys.modules["attr"] = types.SimpleNamespace(dataclass=dataclasses.dataclass)  # type: ignore[assignment]
        try:
            importlib.import_module(name)
        finally:
            del sys.modules["attr"]
    return sys.modules[name], CORDA_SUBSTITUTE


class _EVABatches:
    """The calibration batches as the "dataloader" PEFT's EVA wants (``len`` + iteration);
    counts the forward passes EVA makes and stops it after :data:`EVA_MAX_PASSES` passes."""

    def __init__(self, batches: Sequence[Inputs]) -> None:
        self.batches = batches
        self.forwards = 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Inputs]:
        return iter(self.batches)

    def counting(self, forward: Callable[[nn.Module, Inputs], Any]) -> Callable:
        def forward_fn(model: nn.Module, inputs: Inputs) -> Any:
            self.forwards += 1
            if self.forwards > EVA_MAX_PASSES * len(self.batches) + 1:
                raise PEFTUnavailable(
                    f"PEFT's EVA did not converge within {EVA_MAX_PASSES} passes over "
                    f"{len(self.batches)} batches"
                )
            return forward(model, inputs)

        return forward_fn


def time_peft(case: Case, name: str, settings: Settings) -> tuple[float, float, dict[str, Any]]:
    """``(preprocessing s, get_peft_model s, details)`` of PEFT's own init of ``name``.

    Preprocessing is the data pass PEFT needs before (CorDA, LoRA-GA) or after (EVA)
    ``get_peft_model``; on our side the same work is the calibration.
    """
    spec = PEFT_METHODS[name]
    init = inits.get(name)
    model = copy.deepcopy(case.model)
    encoder = model.encoder
    config = LoraConfig(
        r=settings.lora.rank,
        lora_alpha=settings.lora.alpha,
        use_rslora=settings.lora.rslora,
        lora_dropout=settings.lora.dropout,
        target_modules=list(case.target_modules),
        init_lora_weights=spec.init_lora_weights,
        **spec.config(),
    )
    details: dict[str, Any] = {}
    prep_run: Callable[[], None] | None = None
    if spec.prep == "corda":
        corda, note = peft_corda_module()
        if note:
            details["substitute"] = note

        def run_model() -> None:
            for inputs in case.peft_singles(init):
                case.backbone.features(encoder, inputs)

        def prep_run() -> None:
            corda.preprocess_corda(encoder, config, run_model=run_model)

    elif spec.prep == "lora_ga":
        from peft.tuners.lora.loraga import preprocess_loraga

        task_id = case.task_id

        def train_step() -> None:
            for inputs, labels in case.peft_labelled():
                F.cross_entropy(model(inputs, task_id), labels).backward()

        def prep_run() -> None:
            # The classifier, so that only the adapted weights take gradients (not the head);
            # its module names end with the encoder's target names, which PEFT matches.
            preprocess_loraga(model, config, train_step)

    gc.collect()
    _sync(case.device)
    start = time.perf_counter()
    if prep_run is not None:
        prep_run()
    _sync(case.device)
    prepared = time.perf_counter()
    peft_model = get_peft_model(encoder, config)
    _sync(case.device)
    attached = time.perf_counter()
    if spec.prep == "eva":
        from peft import initialize_lora_eva_weights

        loader = _EVABatches(list(case.peft_batches(init)))
        functions = dict(case.eva_functions)
        forward = functions.pop("forward_fn", lambda model, inputs: model(**inputs))
        initialize_lora_eva_weights(
            peft_model,
            dataloader=loader,
            forward_fn=loader.counting(forward),
            show_progress_bar=False,
            **functions,
        )
        _sync(case.device)
        details["forward_batches"] = loader.forwards
        return time.perf_counter() - attached, attached - start, details
    return prepared - start, attached - prepared, details


# -- one task's training time (text) ---------------------------------------------------------------
def training_time(case: Case, stream: streams.Stream, settings: Settings) -> dict[str, Any]:
    """Seconds per optimizer step of plain LoRA on the task (default recipe), and the task's
    training time extrapolated to its full step count (``ceil(train / batch) * epochs``)."""
    task = stream.tasks[case.task_id]
    model = copy.deepcopy(case.model)
    generator = torch.Generator().manual_seed(settings.seed * 1000 + case.task_id)
    attach_lora(model, settings.lora, case.target_modules, inits.get(TRAIN_INIT), {}, {}, generator)
    loader = DataLoader(
        TaskExamples(task.train),
        batch_size=RECIPE.batch_size,
        shuffle=True,
        collate_fn=labelled_collate(case.backbone.collate),
        generator=generator,
    )
    head = model.heads[model.head_key(case.task_id)]
    optimizer = task_optimizer(model.encoder, head, RECIPE.lr, RECIPE.head_lr, RECIPE.weight_decay)
    total_steps = len(loader) * RECIPE.epochs
    untimed = settings.train_warmup_steps
    steps = min(settings.train_steps, len(loader) - min(untimed, len(loader) - 1))
    model.train()
    batches = iter(loader)
    start = 0.0
    for step in range(untimed + steps):
        if step == untimed:
            _sync(case.device)
            start = time.perf_counter()
        inputs, labels = next(batches)
        optimizer.zero_grad()
        logits = model(_to(inputs, case.device), case.task_id)
        F.cross_entropy(logits, labels.to(case.device)).backward()
        optimizer.step()
    _sync(case.device)
    per_step = (time.perf_counter() - start) / steps
    return {
        "task": task.name,
        "train_examples": len(task.train),
        "batch_size": RECIPE.batch_size,
        "epochs": RECIPE.epochs,
        "task_steps": total_steps,
        "timed_steps": steps,
        "untimed_steps": untimed,
        "seconds_per_step": per_step,
        "task_train_s": per_step * total_steps,
        "extrapolated": steps < total_steps,
    }


# -- covariance memory -----------------------------------------------------------------------------
def covariance_memory(case: Case) -> dict[str, Any]:
    """Bytes of one input-covariance collection: one matrix per distinct layer input (ours) vs
    one per adapted module (PEFT's CorDA)."""
    model = copy.deepcopy(case.model)
    init = inits.get("lora-null")
    batches = list(itertools.islice(iter(case.peft_batches(init)), 1))
    collector = collect_input_covariances(model, case.target_modules, batches)
    shared, per_module = collector.nbytes(), collector.nbytes_per_module()
    return {
        "modules": len(collector.group_of),
        "distinct_inputs": len(collector.sums),
        "bytes": shared,
        "bytes_one_per_module": per_module,
        "saved_mib": (per_module - shared) / MiB,
        "saved_fraction": 1 - shared / per_module,
    }


# -- the run ---------------------------------------------------------------------------------------
def _medians(runs: list[tuple[float, float]]) -> dict[str, Any]:
    """Medians of both parts and of their sum (the sum's median, not the medians' sum)."""
    return {
        "first_s": statistics.median(first for first, _ in runs),
        "second_s": statistics.median(second for _, second in runs),
        "total_s": statistics.median(first + second for first, second in runs),
        "rounds": [list(run) for run in runs],
    }


def measure_case(
    case: Case, settings: Settings, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """One row per method: our calibration and attach times, and PEFT's where it has the method."""
    rows = []
    for name in settings.method_names:
        init = inits.get(name)
        ours: list[tuple[float, float]] = []
        theirs: list[tuple[float, float]] = []
        peft_details: dict[str, Any] = {}
        peft_error: str | None = None
        has_peft = name in PEFT_METHODS and not settings.skip_peft
        for call in range(1 + case.repeats):  # call 0: the warm-up (kept if long)
            if len(ours) < case.repeats:
                result = time_ours(case, init, settings)
                if call or sum(result) >= LONG_CALL_S:
                    ours.append(result)
            if has_peft and peft_error is None and len(theirs) < case.repeats:
                try:
                    prep, attach, peft_details = time_peft(case, name, settings)
                except PEFTUnavailable as error:
                    peft_error = str(error)
                except Exception as error:  # PEFT's path failing is a finding, not our crash
                    first = str(error).splitlines()[0] if str(error) else ""
                    peft_error = f"PEFT failed: {type(error).__name__}: {first}"
                else:
                    if call or prep + attach >= LONG_CALL_S:
                        theirs.append((prep, attach))
        mine = _medians(ours)
        row: dict[str, Any] = {
            "method": name,
            "backbone": case.name,
            "needs": list(init.needs),
            "calibration_s": mine["first_s"],
            "attach_s": mine["second_s"],
            "total_s": mine["total_s"],
            "rounds": mine["rounds"],
            "peft": None,
            "ratio": None,
        }
        if has_peft:
            spec = PEFT_METHODS[name]
            peft_row: dict[str, Any] = {
                "init_lora_weights": spec.init_lora_weights,
                "note": spec.note,
                **peft_details,
            }
            if peft_error is None:
                theirs_median = _medians(theirs)
                peft_row |= {
                    "prep_s": theirs_median["first_s"],
                    "attach_s": theirs_median["second_s"],
                    "total_s": theirs_median["total_s"],
                    "rounds": theirs_median["rounds"],
                }
                row["ratio"] = row["total_s"] / peft_row["total_s"]
            else:
                peft_row["error"] = peft_error
            row["peft"] = peft_row
        elif name in PEFT_METHODS:
            row["peft"] = {"error": "skipped (--skip-peft)"}
        rows.append(row)
        peft_text = ""
        if row["peft"] and "total_s" in row["peft"]:
            peft_text = f", PEFT {row['peft']['total_s']:.3f} s (ratio {row['ratio']:.2f})"
        elif row["peft"]:
            peft_text = f", PEFT: {row['peft']['error']}"
        log(f"{case.name} {name}: {row['total_s']:.3f} s{peft_text}")
    return rows


def measure(settings: Settings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Load both backbones, measure training, every method's init, PEFT's, and covariance memory."""
    with warnings.catch_warnings():
        # Library chatter that would bury the table, none of it about what is measured:
        # transformers' deprecations, PEFT's EVA memory tip, torch's note on PEFT's LoRA-GA hooks.
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*low_cpu_mem_usage.*")
        warnings.filterwarnings("ignore", message="Full backward hook is firing.*")
        return _measure(settings, log)


def _measure(settings: Settings, log: Callable[[str], None]) -> dict[str, Any]:
    device = resolve_device(settings.device)
    torch.manual_seed(settings.seed)
    text, stream = text_case(settings, device)
    log(f"training: {settings.train_steps} steps of {TRAIN_INIT} on {text.description}")
    training = training_time(text, stream, settings)
    cases = [text]
    if not settings.skip_vit:
        cases.append(vit_case(settings, device))
    rows: list[dict[str, Any]] = []
    backbones: dict[str, Any] = {}
    for case in cases:
        backbones[case.name] = {
            "description": case.description,
            "adapted_layers": len(case.target_modules),
            "calibration": case.calibration_note,
            "covariance_memory": covariance_memory(case),
        }
        case_rows = measure_case(case, settings, log)
        for row in case_rows:
            row["fraction_of_task_training"] = (
                row["total_s"] / training["task_train_s"] if case is text else None
            )
        rows.extend(case_rows)
    return {
        "stream": STREAM,
        "task_index": settings.task_index,
        "rank": settings.lora.rank,
        "alpha": settings.lora.alpha,
        "repeats": settings.repeats,
        "vit_repeats": settings.vit_repeats,
        "long_call_s": LONG_CALL_S,
        "calib_size": settings.calib_size,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "peft_version": peft.__version__,
        "training": training,
        "backbones": backbones,
        "rows": rows,
    }


# -- report ----------------------------------------------------------------------------------------
def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def report(result: dict[str, Any]) -> str:
    """The human-readable table of a :func:`measure` result."""
    training = result["training"]
    how = (
        f"extrapolated from {training['timed_steps']} timed steps (after "
        f"{training['untimed_steps']} untimed)"
        if training["extrapolated"]
        else "measured over every step"
    )
    lines = [
        f"{result['device']}, {result['torch_threads']} threads, torch {result['torch_version']}, "
        f"peft {result['peft_version']}; rank {result['rank']}, alpha {result['alpha']:g}; "
        f"median of {result['repeats']} (text) / {result['vit_repeats']} (ViT) timed calls after "
        f"1 warm-up call (kept as timed when >= {result['long_call_s']:g} s)",
        f"one task's training ({result['stream']} task {result['task_index']}, "
        f"{training['task']}): {training['train_examples']} examples, batch "
        f"{training['batch_size']}, {training['epochs']} epochs = {training['task_steps']} steps "
        f"x {training['seconds_per_step']:.3f} s = {training['task_train_s']:.1f} s ({how})",
    ]
    for name, info in result["backbones"].items():
        lines.append(f"{name}: {info['description']}; {info['calibration']}")
    width = max([10, *(len(row["backbone"]) + 2 for row in result["rows"])])
    header = (
        f"{'method':<14}{'backbone':<{width}}{'calib s':>9}{'attach s':>10}{'total s':>9}"
        f"{'% task':>8}{'PEFT s':>9}{'ratio':>7}  PEFT notes"
    )
    lines += ["", header, "-" * len(header)]
    for row in result["rows"]:
        fraction = row["fraction_of_task_training"]
        percent = "-" if fraction is None else f"{100 * fraction:.1f}%"
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
        peft_row = row["peft"] or {}
        note = peft_row.get("error") or ""
        if "total_s" in peft_row:
            note = f"{peft_row['init_lora_weights']!r}"
            if "forward_batches" in peft_row:
                note += f", {peft_row['forward_batches']} forward batches"
            if PEFT_METHODS[row["method"]].prep:
                note += f", prep {peft_row['prep_s']:.3f} s"
        lines.append(
            f"{row['method']:<14}{row['backbone']:<{width}}{_seconds(row['calibration_s']):>9}"
            f"{_seconds(row['attach_s']):>10}{_seconds(row['total_s']):>9}"
            f"{percent:>8}{_seconds(peft_row.get('total_s')):>9}{ratio:>7}  {note}".rstrip()
        )
    lines.append("")
    lines.append("ratio = ours / PEFT (total s); '% task' = total / one task's training time")
    notes = sorted(
        {
            f"{row['method']}: {row['peft']['note']}"
            for row in result["rows"]
            if row["peft"] and row["peft"].get("note")
        }
        | {
            f"PEFT CorDA: {row['peft']['substitute']}"
            for row in result["rows"]
            if row["peft"] and row["peft"].get("substitute")
        }
    )
    lines += [f"  {note}" for note in notes]
    lines.append("covariance memory of one collection (one per distinct input vs one per module):")
    for name, info in result["backbones"].items():
        memory = info["covariance_memory"]
        lines.append(
            f"  {name}: {memory['distinct_inputs']} matrices for {memory['modules']} modules, "
            f"{memory['bytes'] / MiB:.2f} MiB vs {memory['bytes_one_per_module'] / MiB:.2f} MiB: "
            f"saves {memory['saved_mib']:.2f} MiB ({100 * memory['saved_fraction']:.0f}%)"
        )
    return "\n".join(lines)


# -- CLI -------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    defaults = Settings()
    p = benchmark_parser("init_cost", __doc__)
    p.add_argument("--methods", nargs="+", default=[], help="init methods (default: all)")
    p.add_argument(
        "--repeats", type=int, default=defaults.repeats, help="timed calls per text method"
    )
    p.add_argument(
        "--vit-repeats", type=int, default=defaults.vit_repeats, help="timed calls per ViT method"
    )
    p.add_argument(
        "--calib-size", type=int, default=defaults.calib_size, help="text calibration examples"
    )
    p.add_argument(
        "--warmup-steps",
        type=int,
        default=None,
        help="text warm-up steps of lora-init/lora-tsd (default: the method's own)",
    )
    p.add_argument(
        "--train-steps", type=int, default=defaults.train_steps, help="timed training steps"
    )
    p.add_argument("--train-warmup-steps", type=int, default=defaults.train_warmup_steps)
    p.add_argument("--task-index", type=int, default=defaults.task_index)
    p.add_argument("--skip-vit", action="store_true", help="measure the text backbone only")
    p.add_argument("--skip-peft", action="store_true", help="do not time PEFT's inits")
    p.add_argument("--vit-model", default=defaults.vit_model, help="a timm ViT name")
    p.add_argument("--vit-image-size", type=int, default=defaults.vit_image_size)
    p.add_argument("--vit-images", type=int, default=defaults.vit_images)
    p.add_argument("--vit-batch-size", type=int, default=defaults.vit_batch_size)
    p.add_argument(
        "--vit-warmup-steps",
        type=int,
        default=defaults.vit_warmup_steps,
        help="ViT warm-up steps of lora-init/lora-tsd",
    )
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--device", default=defaults.device, help="auto, cpu, cuda or cuda:N")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, measure, print the table, optionally write JSON; return the numbers."""
    return run_benchmark(argv, build_parser(), Settings, measure, report)


if __name__ == "__main__":
    entry_point(main)
