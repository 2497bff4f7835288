"""Encoder-decoder language models (T5, Flan-T5, BART, ...): the encoder reads the prompt, the
decoder generates the answer -- O-LoRA's T5-large setting.

Weights come from a local ``save_pretrained`` folder or a Hub name (e.g.
``google-t5/t5-large``, O-LoRA's backbone, or ``google/t5-large-lm-adapt``); none ship offline.
A name belongs to this family when its config says ``is_encoder_decoder`` (read from the
folder's ``config.json``, or from the Hub's config, cached or fetched), so ``--backbone`` takes
a T5 name on any text-to-text stream and the run picks :class:`~cl_lora.problems.
Seq2SeqTextToText`.

LoRA adapts T5's attention projections ``q k v o`` and feed-forward ``wi`` (``wi_0``/``wi_1``
in gated T5 v1.1 / LM-adapt / Flan-T5) and ``wo`` in encoder and decoder, as O-LoRA's T5 runs
target ``q`` and ``v`` within these (pass ``--targets q,v`` for exactly theirs); other
encoder-decoders (BART's ``q_proj``..``fc2``) get every linear but the LM head.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cl_lora.backbones.base import Backbone
from cl_lora.backbones.causal_lm import language_model_backbone, load_pretrained
from cl_lora.backbones.registry import LoadOptions, register_family
from cl_lora.hub import cache_only_when_unreachable

FAMILY = "seq2seq-lm"
T5_LARGE = "google-t5/t5-large"
SEQ2SEQ_TARGETS = ("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo")


def is_encoder_decoder(name: str) -> bool:
    """True when ``name`` (a local folder or a Hub name) is an encoder-decoder checkpoint;
    False when it is not, or its config cannot be read (the default family then explains)."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return bool(config.get("is_encoder_decoder", False))
    if folder.suffix or folder.exists():  # a file (.gguf, ...) is never a Hub name
        return False
    from transformers import AutoConfig

    try:
        with cache_only_when_unreachable():
            return bool(getattr(AutoConfig.from_pretrained(name), "is_encoder_decoder", False))
    except (OSError, ValueError):
        return False


def load_seq2seq_lm(
    name: str,
    *,
    dtype: torch.dtype = torch.float32,
    gradient_checkpointing: bool = False,
    weights: bool = True,
) -> Backbone:
    """The encoder-decoder LM ``name`` with its tokenizer, in ``dtype`` and eval mode (without
    ``weights``: the architecture only)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    location = str(Path(name).expanduser()) if Path(name).expanduser().is_dir() else name
    model, tokenizer = load_pretrained(name, location, dtype, "AutoModelForSeq2SeqLM", weights)
    source = {
        "name": name,
        "path": location,
        "revision": getattr(model.config, "_commit_hash", None),
        "dtype": str(dtype),
    }
    return language_model_backbone(
        model, tokenizer, source, gradient_checkpointing, FAMILY, SEQ2SEQ_TARGETS
    )


@register_family(
    FAMILY,
    "Hugging Face encoder-decoder LM (T5, Flan-T5) that generates the answers (folder or Hub "
    "name; chosen when the checkpoint's config is encoder-decoder)",
    serves=("text-to-text",),
    default=T5_LARGE,
    claims=is_encoder_decoder,
)
def load_seq2seq_family(name: str, options: LoadOptions) -> Backbone:
    """The family's loader: :func:`load_seq2seq_lm` in the run's weight dtype."""
    return load_seq2seq_lm(
        name,
        dtype=options.dtype,
        gradient_checkpointing=options.gradient_checkpointing,
        weights=options.weights,
    )
