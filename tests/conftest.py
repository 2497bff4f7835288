"""Shared fixtures: a tiny randomly initialized BERT and a toy stream, for fast strategy tests."""

from __future__ import annotations

# isort: off
import cl_lora  # noqa: F401  (its torchvision shim must run before avalanche imports it)

# isort: on
from functools import partial

import pandas as pd
import pytest
import torch
from avalanche.core import SupervisedPlugin

from cl_lora.backbones import Backbone, linear_layer_names
from cl_lora.backbones.text import mean_pool, packaged_minilm_path, tokenize
from cl_lora.streams import Stream, Task
from cl_lora.streams.base import to_dataset


def tiny_backbone() -> Backbone:
    """A 2-layer, 32-wide BERT with MiniLM's tokenizer: the real code path, in milliseconds.

    Its random weights are the same on every call and leave the global RNG alone, as loading a
    pretrained checkpoint would (a resumed run rebuilds its model from them)."""
    from transformers import AutoTokenizer, BertConfig, BertModel  # after cl_lora's shim

    tokenizer = AutoTokenizer.from_pretrained(packaged_minilm_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        encoder = BertModel(config, add_pooling_layer=False)
    return Backbone(
        encoder=encoder,
        collate=partial(tokenize, tokenizer, 16),
        features=mean_pool,
        feature_dim=32,
        target_modules=linear_layer_names(encoder, exclude=("embeddings",)),
        source={"name": "tiny-bert"},
    )


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory) -> str:
    """``tiny_backbone()`` saved as a ``save_pretrained`` folder, for ``--backbone`` in CLI runs."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    tiny_backbone().encoder.save_pretrained(folder)
    AutoTokenizer.from_pretrained(packaged_minilm_path()).save_pretrained(folder)
    return str(folder)


def make_toy_stream(shared_head: bool = False, tasks: int = 3) -> Stream:
    """Tasks whose label is whether a cue word occurs: learnable in a few steps."""

    cues = ["good", "spam", "question", "happy"][:tasks]
    built = []
    for cue in cues:
        texts = [f"{cue} item {i}" if i % 2 else f"plain item {i}" for i in range(32)]
        frame = pd.DataFrame({"text": texts, "label": [i % 2 for i in range(32)]})
        built.append(
            Task(
                name=f"has-{cue}",
                train=to_dataset(frame[:24], ("no", "yes")),
                test=to_dataset(frame[24:], ("no", "yes")),
                label_names=("no", "yes"),
                metric="accuracy",
            )
        )
    scenario = "domain" if shared_head else "task"
    return Stream("toy", tuple(built), scenario, "text", shared_head)


@pytest.fixture
def backbone() -> Backbone:
    return tiny_backbone()


@pytest.fixture
def toy_stream():
    """Factory: ``toy_stream(shared_head=False, tasks=3)``."""
    return make_toy_stream


def make_strategy(
    backbone: Backbone,
    stream: Stream,
    init: str = "lora",
    init_args: dict | None = None,
    epochs: int = 1,
    plugins: list | None = None,
    baseline: str | None = None,
    baseline_args: dict | None = None,
    **settings,
):
    """The strategy a run of ``init`` (or ``baseline``) would build, through the same
    ``Method.build_strategy`` call, with a fast recipe (rank 2, batch 8, high learning rates),
    silent; ``plugins`` are added after the method's own; ``settings`` are further
    ``RunConfig`` fields."""
    from cl_lora.config import RunConfig
    from cl_lora.method import resolve
    from cl_lora.problems import build_problem

    fast = {"rank": 2, "alpha": 4.0, "lr": 1e-2, "head_lr": 1e-2, "batch_size": 8}
    fast["eval_batch_size"] = 16
    config = RunConfig(
        init=init,
        init_args=init_args or {},
        baseline=baseline,
        baseline_args=baseline_args or {},
        epochs=epochs,
        **{**fast, **settings},
    )
    problem = build_problem(stream, backbone, max_length=64)
    return resolve(config).build_strategy(problem, stream, "cpu", plugins=plugins or ())


class ExtraLoss(SupervisedPlugin):
    """Records, per step, what earlier plugins added to the loss on top of the task loss."""

    def __init__(self) -> None:
        super().__init__()
        self.extra: dict[int, list[float]] = {}

    def before_backward(self, strategy, **kwargs) -> None:
        extra = (strategy.loss - strategy.criterion()).item()
        self.extra.setdefault(strategy.task_id, []).append(extra)


def tiny_vit(num_classes: int = 0, seed: int = 0):
    """A 2-block, 32-wide timm ViT on 28x28 grayscale (random weights, MNIST's data config)."""
    import timm
    import torch

    from cl_lora.pretrain_mnist import DATA_CONFIG

    torch.manual_seed(seed)
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=28,
        patch_size=7,
        in_chans=1,
        embed_dim=32,
        depth=2,
        num_heads=2,
        num_classes=num_classes,
        pretrained_cfg_overlay={**DATA_CONFIG, "hf_hub_id": None, "url": None},
    )


def tiny_vit_backbone(knowledge: str | None = None) -> Backbone:
    """:func:`tiny_vit` through the real timm backbone builder (head kept for ``knowledge``)."""
    from cl_lora.backbones.vit import vit_backbone

    model = tiny_vit(num_classes=10 if knowledge else 0)
    return vit_backbone(model, {"name": "tiny-vit"}, keep_head_as=knowledge)


# ---- init tests: a real weight and statistics with known structure ---------------------------
@pytest.fixture(scope="session")
def weight() -> torch.Tensor:
    """A real 1536 x 384 MLP weight of all-MiniLM-L6-v2 (init tests)."""
    from cl_lora.backbones import load_text_backbone

    backbone = load_text_backbone()
    return backbone.encoder.encoder.layer[0].intermediate.dense.weight.detach().clone()


def low_rank_inputs(tokens: int, spread: torch.Tensor, noise: float, seed: int = 0) -> torch.Tensor:
    """384-wide activations on a ``len(spread)``-dimensional subspace (standard deviation
    ``spread[i]`` along its ``i``-th axis) plus small isotropic noise, so that ``X^T X`` has
    ``384 - len(spread)`` eigenvalues of the size of the noise: a real null space."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(384, len(spread), generator=g))[0].T
    X = (torch.randn(tokens, len(spread), generator=g) * spread) @ basis
    return X + noise * torch.randn(tokens, 384, generator=g)


def decaying_gradient(out: int, inp: int, seed: int = 1) -> torch.Tensor:
    """A gradient-like matrix with a clearly decaying spectrum (distinct top singular values)."""
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(out, 48, generator=g))[0]
    V = torch.linalg.qr(torch.randn(inp, 48, generator=g))[0]
    return U @ torch.diag(torch.logspace(0, -3, 48)) @ V.T


@pytest.fixture(scope="session")
def calibration() -> torch.Tensor:
    """Calibration inputs with a real null space (init tests)."""
    return low_rank_inputs(1200, spread=torch.linspace(3.0, 0.5, 300), noise=1e-3)


@pytest.fixture(scope="session")
def stats(calibration: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"input_cov": calibration.T @ calibration, "grad": decaying_gradient(1536, 384)}
