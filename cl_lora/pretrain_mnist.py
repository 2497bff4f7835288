"""``python -m cl_lora.pretrain_mnist``: pretrain the offline vision backbone once and cache it.

No pretrained ViT ships in any package, so the offline vision stream runs on a small timm ViT
that the suite pretrains itself on the packaged MNIST: 28x28 input, 1 channel, patch 7 (16
tokens), width 128, depth 6, 4 heads (1.2M parameters). Recipe: AdamW (weight decay 0.05) with a
one-cycle schedule peaking at 3e-3, batch 128, 5 epochs of the 50k training images, no
augmentation. Its 10-way head stays with the weights: with the backbone frozen it is the
pretrained knowledge the retention probe measures (MNIST test accuracy).

The model is saved in timm's Hub layout (``config.json`` with the data config, and
``model.safetensors``) under ``$CL_LORA_CACHE/mnist-vit-v1`` (default ``~/.cache/cl-lora``), next
to ``pretraining.json`` with the recipe, test accuracy and time. Writing goes to a temporary
folder that is renamed into place, so an interrupted run leaves no half-written cache.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cl_lora.backbones.vit import is_cached_mnist_vit, mnist_vit_dir
from cl_lora.cli import OneLineParser
from cl_lora.errors import BadInputError
from cl_lora.streams.vision import mnist_arrays

log = logging.getLogger("cl_lora")

ARCHITECTURE = "vit_tiny_patch16_224"  # the timm ViT family; the sizes below replace its own
MODEL_ARGS: dict[str, Any] = {
    "img_size": 28,
    "patch_size": 7,
    "in_chans": 1,
    "embed_dim": 128,
    "depth": 6,
    "num_heads": 4,
    "num_classes": 10,
}
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
DATA_CONFIG: dict[str, Any] = {  # what timm's resolve_data_config reads back from config.json
    "input_size": (1, 28, 28),
    "mean": (MNIST_MEAN,),
    "std": (MNIST_STD,),
    "crop_pct": 1.0,
    "crop_mode": "center",
    "interpolation": "bilinear",
}
RECIPE: dict[str, Any] = {"epochs": 5, "batch_size": 128, "lr": 3e-3, "weight_decay": 0.05}


def build_model(seed: int = 0) -> nn.Module:
    """The untrained MNIST ViT, with MNIST's preprocessing as its pretrained config."""
    import timm

    torch.manual_seed(seed)
    overlay = {
        **DATA_CONFIG,
        "num_classes": 10,
        "tag": "cl-lora-mnist",
        "hf_hub_id": None,
        "url": None,
        "license": None,
        "custom_load": False,
    }
    return timm.create_model(
        ARCHITECTURE, pretrained=False, pretrained_cfg_overlay=overlay, **MODEL_ARGS
    )


def normalize(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, 28, 28)`` -> normalized ``(N, 1, 28, 28)``: what timm's transform computes."""
    pixels = torch.from_numpy(images).float().div_(255.0).unsqueeze(1)
    return pixels.sub_(MNIST_MEAN).div_(MNIST_STD)


@torch.no_grad()
def accuracy(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 500
) -> float:
    """Top-1 accuracy of ``model`` (with its head) on normalized images."""
    model.eval()
    correct = sum(
        int((model(images[i : i + batch]).argmax(1) == labels[i : i + batch]).sum())
        for i in range(0, len(images), batch)
    )
    return correct / len(images)


def train(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    progress: Callable[[str], None],
) -> None:
    """AdamW with a one-cycle learning rate over ``epochs`` of shuffled mini-batches."""
    steps_per_epoch = len(images) // batch_size  # the last partial batch is dropped
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch
    )
    generator = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(images), generator=generator)
        running, seen = 0.0, 0
        for step in range(steps_per_epoch):
            rows = order[step * batch_size : (step + 1) * batch_size]
            loss = loss_fn(model(images[rows]), labels[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            running, seen = running + loss.item(), seen + 1
            if (step + 1) % 100 == 0 or step + 1 == steps_per_epoch:
                progress(
                    f"  epoch {epoch + 1}/{epochs} step {step + 1}/{steps_per_epoch} "
                    f"loss {running / seen:.3f} ({time.perf_counter() - start:.0f} s)"
                )
                running, seen = 0.0, 0


def pretrain(
    out_dir: Path | None = None,
    *,
    epochs: int = RECIPE["epochs"],
    batch_size: int = RECIPE["batch_size"],
    lr: float = RECIPE["lr"],
    weight_decay: float = RECIPE["weight_decay"],
    max_train: int | None = None,
    seed: int = 0,
    progress: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """Pretrain the MNIST ViT, save it to ``out_dir`` (default: the cache) and return its record.

    ``max_train`` uses only the first images of the training split (for quick checks; the
    cached backbone uses all 50k).
    """
    from timm.models import save_for_hf

    out_dir = Path(out_dir or mnist_vit_dir())
    arrays = mnist_arrays()
    train_images, train_labels = arrays["train"]
    if max_train is not None:
        train_images, train_labels = train_images[:max_train], train_labels[:max_train]
    x_train, y_train = normalize(train_images), torch.from_numpy(train_labels)
    x_test, y_test = normalize(arrays["test"][0]), torch.from_numpy(arrays["test"][1])
    model = build_model(seed)
    params = sum(p.numel() for p in model.parameters())
    progress(
        f"pretraining the MNIST ViT ({params / 1e6:.1f}M parameters) on {len(x_train)} images, "
        f"{epochs} epochs, {torch.get_num_threads()} threads; once, then cached in {out_dir}"
    )
    start = time.perf_counter()
    train(
        model, x_train, y_train, epochs=epochs, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, seed=seed, progress=progress,
    )  # fmt: skip
    train_s = time.perf_counter() - start
    test_acc = accuracy(model, x_test, y_test)
    record = {
        "architecture": ARCHITECTURE,
        "model_args": MODEL_ARGS,
        "parameters": params,
        "recipe": {"epochs": epochs, "batch_size": batch_size, "lr": lr,
                   "weight_decay": weight_decay, "schedule": "one-cycle", "seed": seed},
        "train_images": len(x_train),
        "test_accuracy": test_acc,
        "train_seconds": round(train_s, 1),
        "threads": torch.get_num_threads(),
    }  # fmt: skip
    progress(f"MNIST test accuracy {test_acc:.4f} after {train_s:.0f} s of training")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        save_for_hf(model, staging, safe_serialization=True)
        (staging / "pretraining.json").write_text(json.dumps(record, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return record


def ensure_mnist_vit(progress: Callable[[str], None] = log.info) -> Path:
    """The cached MNIST ViT folder, pretraining it first if it is not there yet."""
    if not is_cached_mnist_vit():
        pretrain(progress=progress)
    return mnist_vit_dir()


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="python -m cl_lora.pretrain_mnist", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--force", action="store_true", help="pretrain again over the cache")
    parser.add_argument("--out", type=Path, help=f"folder to write (default {mnist_vit_dir()})")
    parser.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        args = build_parser().parse_args(argv)
        if args.epochs < 1:
            raise BadInputError("--epochs must be at least 1")
        target = args.out or mnist_vit_dir()
        if is_cached_mnist_vit(target) and not args.force:
            print(f"already pretrained: {target} (--force to pretrain again)")
            return 0
        pretrain(target, epochs=args.epochs, seed=args.seed)
    except BadInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"saved: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
