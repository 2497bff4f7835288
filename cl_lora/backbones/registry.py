"""Backbone families: registered loaders of one kind of pretrained model each.

A family (one per file: ``text.py``, ``vit.py``, ``mnist_vit.py``, ``causal_lm.py``) says which
kinds of stream it can learn (``serves``: ``text`` and ``vision`` classification with heads,
``text-to-text`` generation), which packaged names it owns (``aliases``, e.g. ``smollm2-135m``),
its default backbone, and how to load a name into a :class:`~cl_lora.backbones.base.Backbone`.
``--backbone NAME`` picks the family that owns ``NAME`` (an alias of it, or a name its
``claims`` recognises, e.g. an encoder-decoder checkpoint for ``seq2seq-lm``), otherwise the
stream kind's default family, which then reads ``NAME`` as a local folder, a file or a Hub name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from cl_lora.backbones.base import Backbone
from cl_lora.errors import BadInputError
from cl_lora.registry import Registry


@dataclass(frozen=True)
class LoadOptions:
    """What a run asks of every backbone it loads."""

    max_length: int = 64  # tokens a text backbone reads
    dtype: torch.dtype = torch.float32  # weights (bf16 for language models on CUDA)
    gradient_checkpointing: bool = False
    # False: the architecture only, its tensors on the meta device, where the weights come
    # from another process (FSDP2's cpu_ram_efficient_loading); a family may still read them
    weights: bool = True


@dataclass(frozen=True)
class Family:
    """One registered backbone family (see the module docstring)."""

    name: str
    description: str
    serves: tuple[str, ...]
    default: str
    load: Callable[[str, LoadOptions], Backbone]
    aliases: tuple[str, ...] = ()
    prepare: Callable[[str, Callable[[str], None]], None] | None = None  # builds assets once
    aliases_only: bool = False  # loads its aliases only (never the default for other names)
    claims: Callable[[str], bool] | None = None  # recognises names it must load (by config)


FAMILIES: Registry[Family] = Registry("backbone family")


def register_family(
    name: str,
    description: str,
    *,
    serves: tuple[str, ...],
    default: str,
    aliases: tuple[str, ...] = (),
    prepare: Callable[[str, Callable[[str], None]], None] | None = None,
    aliases_only: bool = False,
    claims: Callable[[str], bool] | None = None,
) -> Callable[[Callable[[str, LoadOptions], Backbone]], Callable[[str, LoadOptions], Backbone]]:
    """Decorator: ``load(name, options) -> Backbone`` becomes the family ``name``."""

    def decorate(
        load: Callable[[str, LoadOptions], Backbone],
    ) -> Callable[[str, LoadOptions], Backbone]:
        family = Family(
            name, description, serves, default, load, aliases, prepare, aliases_only, claims
        )
        FAMILIES.add(name, family)
        return load

    return decorate


def family_for(backbone: str | None, kind: str) -> Family:
    """The family that loads ``backbone`` for a stream of ``kind`` (``text``, ``vision`` or
    ``text-to-text``); ``None`` means the kind's default family."""
    owner = next((f for f in FAMILIES if backbone in f.aliases), None)
    if owner is not None:
        if kind not in owner.serves:
            raise BadInputError(
                f"backbone '{backbone}' ({owner.description}) cannot learn a {kind} stream: "
                f"pass --backbone {default_family(kind).default} or another {kind} backbone"
            )
        return owner
    if backbone is not None:
        for family in FAMILIES:
            if family.claims is not None and kind in family.serves and family.claims(backbone):
                return family
    return default_family(kind)


def default_family(kind: str) -> Family:
    """The family that serves ``kind`` and takes arbitrary names (a folder, a Hub name)."""
    for family in FAMILIES:
        if kind in family.serves and not family.aliases_only:
            return family
    raise BadInputError(f"no backbone family learns {kind} streams")
