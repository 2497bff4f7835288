"""Vision transformers built by timm: any timm model name, with its own preprocessing.

Weights come from the Hub (a timm model name such as ``vit_base_patch16_224.augreg_in21k``, or
``hf-hub:owner/repo``), from a local folder in timm's Hub layout (``config.json`` +
``model.safetensors``, as written by ``timm.models.save_for_hf``), or from a local weights file
for a named architecture (``NAME=FILE``). The alias ``mnist-vit`` is the small ViT the suite
pretrains on MNIST and caches (:mod:`cl_lora.pretrain_mnist`): the offline vision backbone.

Preprocessing is timm's evaluation transform for the model's data config (resize, center crop,
normalization; the image is converted to the model's channel count first). Training uses the same
transform, without augmentation, so that runs are deterministic and every init method sees the
same pixels. Features are the model's pre-logits (timm's pooled and normalized token), which the
task heads read; LoRA adapts ``qkv``, ``proj``, ``fc1`` and ``fc2`` of every block by default.
"""

from __future__ import annotations

import copy
import io
import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from cl_lora.backbones.base import Backbone, Inputs
from cl_lora.backbones.registry import LoadOptions, register_family
from cl_lora.errors import BadInputError
from cl_lora.hub import cache_only_when_unreachable, load_failure

VIT_DEFAULT = "vit_base_patch16_224.augreg_in21k"
MNIST_VIT = "mnist-vit"
MNIST_VIT_VERSION = "v1"  # bump when the recipe in cl_lora.pretrain_mnist changes
VIT_TARGETS = ("qkv", "proj", "fc1", "fc2")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def cache_root() -> Path:
    """Where cl-lora caches what it builds itself: ``$CL_LORA_CACHE`` or ``~/.cache/cl-lora``."""
    return Path(os.environ.get("CL_LORA_CACHE") or Path.home() / ".cache" / "cl-lora")


def mnist_vit_dir() -> Path:
    """The cached MNIST ViT folder (timm's Hub layout), whether or not it exists yet."""
    return cache_root() / f"mnist-vit-{MNIST_VIT_VERSION}"


def is_cached_mnist_vit(path: Path | None = None) -> bool:
    """True when the MNIST ViT was pretrained and saved completely (config and weights)."""
    path = path or mnist_vit_dir()
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def to_image(value: Any) -> Image.Image:
    """A PIL image from what a dataset row holds: a PIL image, an array, or encoded bytes."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict) and value.get("bytes") is not None:  # an undecoded Image cell
        return Image.open(io.BytesIO(value["bytes"]))
    if isinstance(value, dict) and value.get("path"):
        return Image.open(value["path"])
    return Image.fromarray(np.asarray(value, dtype=np.uint8))


def image_collate(
    transform: Callable[[Image.Image], torch.Tensor], mode: str, examples: Sequence[dict[str, Any]]
) -> Inputs:
    """Stack ``{"image": ...}`` rows into ``pixel_values`` with the model's transform."""
    return {
        "pixel_values": torch.stack(
            [transform(to_image(example["image"]).convert(mode)) for example in examples]
        )
    }


def pooled_features(encoder: nn.Module, inputs: Inputs) -> torch.Tensor:
    """The model's pre-logits features (its classifier is removed, so ``forward`` gives them)."""
    return encoder(inputs["pixel_values"])


def vit_target_modules(model: nn.Module, names: Sequence[str] = VIT_TARGETS) -> list[str]:
    """Full names of the linear layers whose last name part is one of ``names`` (not the head)."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and name.rsplit(".", 1)[-1] in names
        and not name.startswith("head")
    ]


def vit_backbone(
    model: nn.Module, source: dict[str, Any], keep_head_as: str | None = None
) -> Backbone:
    """Wrap a timm model as a :class:`Backbone`; its classifier is taken off the encoder.

    With ``keep_head_as`` (the name of the data the classifier was trained on, e.g. ``"mnist"``)
    the pretrained classifier is kept, frozen, as the backbone's knowledge head: the retention
    probe then scores that data with it instead of fitting a new head.
    """
    from timm.data import create_transform, resolve_data_config

    config = resolve_data_config(model=model)
    transform = create_transform(**config, is_training=False)
    knowledge_head = None
    if keep_head_as is not None:
        knowledge_head = copy.deepcopy(model.get_classifier()).requires_grad_(False)
    model.reset_classifier(0)
    channels = config["input_size"][0]
    return Backbone(
        encoder=model,
        family="timm-vit",
        collate=partial(image_collate, transform, "L" if channels == 1 else "RGB"),
        features=pooled_features,
        feature_dim=model.num_features,
        target_modules=vit_target_modules(model),
        source={**source, "data_config": {k: list(v) if isinstance(v, tuple) else v
                                          for k, v in config.items()}},
        knowledge_head=knowledge_head,
        knowledge=keep_head_as if knowledge_head is not None else None,
    )  # fmt: skip


def _split_weights(name: str) -> tuple[str, str | None]:
    """``NAME=FILE`` -> (NAME, FILE); a plain name or folder -> (name, None)."""
    model, sep, file = name.partition("=")
    if not sep:
        return name, None
    path = Path(file).expanduser()
    if not path.is_file():
        raise BadInputError(f"backbone weights file {path} does not exist")
    return model, str(path)


def _timm_source(name: str) -> tuple[str, str | None]:
    """The model name timm understands (a local folder becomes ``local-dir:``) and a file."""
    if name == MNIST_VIT:
        if not is_cached_mnist_vit():
            raise BadInputError(
                f"the offline MNIST ViT is not pretrained yet ({mnist_vit_dir()} is missing): "
                "run python -m cl_lora.pretrain_mnist"
            )
        return f"local-dir:{mnist_vit_dir()}", None
    model, file = _split_weights(name)
    path = Path(model).expanduser()
    if file is None and path.is_dir():
        if not (path / "config.json").is_file():
            raise BadInputError(
                f"backbone folder {path} has no config.json: pass a folder saved with "
                "timm.models.save_for_hf, or NAME=FILE for a weights file"
            )
        return f"local-dir:{path.resolve()}", None
    if file is None and path.suffix in WEIGHT_SUFFIXES:
        raise BadInputError(
            f"backbone {name} is a weights file: name its architecture as NAME=FILE "
            f"(e.g. vit_small_patch16_224={name})"
        )
    return model, file


def load_vit_backbone(name: str = VIT_DEFAULT) -> Backbone:
    """A timm ViT backbone for ``name`` (see the module docstring for the accepted forms).

    Hub names need network unless timm's cache already holds the weights; failures are one-line
    :class:`BadInputError` messages that say what to pass instead.
    """
    import timm

    model_name, file = _timm_source(name)
    kwargs: dict[str, Any] = {"pretrained": True}
    if file is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": file}
    local = file is not None or model_name.startswith("local-dir:")
    reachable = True
    try:
        if local:
            model = timm.create_model(model_name, **kwargs)
        else:
            with cache_only_when_unreachable() as reachable:
                model = timm.create_model(model_name, **kwargs)
    except RuntimeError as error:
        if "Unknown model" in str(error):
            raise BadInputError(
                f"unknown timm model '{model_name}': pass a name from timm.list_models(), "
                f"a local timm folder, or '{MNIST_VIT}' for the packaged offline model"
            ) from None
        raise BadInputError(
            f"cannot load backbone '{name}': {str(error).splitlines()[0]}"
        ) from None
    except (OSError, ValueError) as error:
        raise BadInputError(
            f"cannot load vision backbone '{name}' ({load_failure(error, reachable)}): pass "
            f"--backbone with a local timm folder or NAME=FILE, or '{MNIST_VIT}' for the "
            "offline MNIST ViT"
        ) from None
    keep = "mnist" if name == MNIST_VIT else None
    source = {
        "name": name,
        "timm_name": model_name,
        "weights_file": file,
        "revision": model.pretrained_cfg.get("hf_hub_id") or model.pretrained_cfg.get("file"),
    }
    return vit_backbone(model, source, keep_head_as=keep)


@register_family(
    "timm-vit",
    "timm vision transformer + task heads (Hub name, local timm folder or NAME=FILE)",
    serves=("vision",),
    default=VIT_DEFAULT,
)
def load_timm_vit(name: str, options: LoadOptions) -> Backbone:
    """The family's loader (images need no token budget)."""
    return load_vit_backbone(name)
