"""A tiny randomly initialized Llama (and T5) with SmolLM2's real tokenizer, for fast
language-model tests.

It goes through :func:`cl_lora.backbones.causal_lm.language_model_backbone`, the code path of every
loaded causal LM, so its tokenizer setup and LoRA targets are the real ones. The tokenizer is
read from the cached SmolLM2 folder: the first use in a fresh cache converts the packaged GGUF
once (15-50 s, shared with every other test that needs SmolLM2); reading only the tokenizer
from the GGUF would cost about 4 s on every call instead. The folder is found once per test
process, so a test that points ``CL_LORA_CACHE`` elsewhere should build its tiny Llama first.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import torch

from cl_lora.backbones import Backbone
from cl_lora.backbones.causal_lm import language_model_backbone, smollm2_dir

TINY_LLAMA = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # grouped-query attention, as in SmolLM2
    "tie_word_embeddings": True,
}


@cache
def _smollm2_tokenizer() -> Any:
    """SmolLM2's tokenizer, read once per test process (callers get copies)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir())


def smollm2_tokenizer() -> Any:
    """A fresh copy of SmolLM2's tokenizer, so no test sees another's changes to it."""
    return copy.deepcopy(_smollm2_tokenizer())


def tiny_llama(seed: int = 0) -> Backbone:
    """A 2-layer, 32-wide ``LlamaForCausalLM`` (random weights from ``seed``), with SmolLM2's
    vocabulary and tokenizer, wrapped as a causal-LM backbone."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = smollm2_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TINY_LLAMA,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return language_model_backbone(
        model, tokenizer, {"name": "tiny-llama", "dtype": str(torch.float32)}
    )


def tiny_llama_dir(tmp_path: Path) -> str:
    """:func:`tiny_llama` saved with its tokenizer as a ``save_pretrained`` folder in
    ``tmp_path``, for loading by path (``--backbone``)."""
    return saved(tiny_llama(), Path(tmp_path) / "tiny-llama")


TINY_T5 = {
    "d_model": 32,
    "d_kv": 8,
    "d_ff": 64,
    "num_layers": 2,
    "num_decoder_layers": 2,
    "num_heads": 4,
    "feed_forward_proj": "gated-gelu",  # wi_0/wi_1, as in T5 v1.1, LM-adapt and Flan-T5
}


def tiny_t5(seed: int = 0) -> Backbone:
    """A 2+2-layer, 32-wide ``T5ForConditionalGeneration`` (random weights from ``seed``) with
    SmolLM2's vocabulary and tokenizer, wrapped as a seq2seq backbone (no T5 weights or
    SentencePiece model ship offline)."""
    from transformers import T5Config, T5ForConditionalGeneration

    from cl_lora.backbones.seq2seq_lm import FAMILY, SEQ2SEQ_TARGETS

    tokenizer = smollm2_tokenizer()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = T5Config(
        vocab_size=len(tokenizer),
        pad_token_id=pad,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=pad,
        **TINY_T5,
    )
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config)
    source = {"name": "tiny-t5", "dtype": str(torch.float32)}
    return language_model_backbone(model, tokenizer, source, False, FAMILY, SEQ2SEQ_TARGETS)


def saved(backbone: Backbone, folder: Path) -> str:
    """``backbone``'s model and tokenizer as a ``save_pretrained`` folder (for ``--backbone``)."""
    backbone.encoder.save_pretrained(folder)
    backbone.tokenizer.save_pretrained(folder)
    return str(folder)


def toy_text_to_text_stream(tasks: int = 2):
    """Text-to-text tasks whose answer (no/yes) is whether a cue word occurs in the text."""
    import pandas as pd

    from cl_lora.streams import Stream, Task
    from cl_lora.streams.base import to_dataset

    built = []
    for cue in ["good", "spam", "question"][:tasks]:
        rows = []
        for i in range(32):
            text = f"{cue} item {i}" if i % 2 else f"plain item {i}"
            prompt = f"Does the text mention {cue}? Choose one of: no, yes\nText: {text}\nAnswer:"
            rows.append({"prompt": prompt, "target": ("no", "yes")[i % 2], "label": i % 2})
        frame = pd.DataFrame(rows)
        built.append(
            Task(
                f"has-{cue}",
                to_dataset(frame[:24], ("no", "yes")),
                to_dataset(frame[24:], ("no", "yes")),
                ("no", "yes"),
                "exact_match",
            )
        )
    return Stream("toy-t2t", tuple(built), "task", "text", False, problem="text-to-text")
