"""The offline vision backbone: a small timm ViT that the suite pretrains on MNIST once and
caches (:mod:`cl_lora.pretrain_mnist`). Its MNIST classifier is kept as the knowledge head, so
the retention probe scores the pretraining task itself."""

from __future__ import annotations

from collections.abc import Callable

from cl_lora.backbones.base import Backbone
from cl_lora.backbones.registry import LoadOptions, register_family
from cl_lora.backbones.vit import MNIST_VIT, load_vit_backbone


def _pretrain_once(name: str, progress: Callable[[str], None]) -> None:
    from cl_lora.pretrain_mnist import ensure_mnist_vit  # reads MNIST through the streams

    ensure_mnist_vit(progress=progress)


@register_family(
    "mnist-vit",
    "small timm ViT pretrained by the suite on MNIST (offline, cached)",
    serves=("vision",),
    default=MNIST_VIT,
    aliases=(MNIST_VIT,),
    prepare=_pretrain_once,
    aliases_only=True,
)
def load_mnist_vit(name: str, options: LoadOptions) -> Backbone:
    return load_vit_backbone(MNIST_VIT)
