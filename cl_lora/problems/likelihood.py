"""Log-likelihood of a continuation after a context, computed the way lm-evaluation-harness's
``HFLM`` computes it, so that a probe or a likelihood-ranked answer here reads like the
harness's number on the same rows and model (``tests/test_probes.py`` checks per example).

The harness's rules (``lm_eval/api/model.py`` ``TemplateLM._encode_pair``,
``lm_eval/models/huggingface.py`` ``HFLM._loglikelihood_tokens``, lm-eval 0.4.13):

- trailing spaces of the context move to the start of the continuation;
- a causal model encodes ``context + continuation`` as one string and the context alone (the
  tokenizer's own special-token default), and the continuation is what the whole has beyond the
  context's tokens; a seq2seq model encodes the two apart (the continuation without special
  tokens), the context into the encoder and the continuation as the decoder's labels;
- a causal model reads ``(context + continuation)[-(max_length + 1):][:-1]``, right-padded, and
  the continuation's log-probabilities are the last ``len(continuation)`` positions' (float32
  log-softmax); ``is_greedy`` says whether greedy decoding would have produced it.

Written here rather than called through the harness because the harness is an optional extra
and builds its model wrapper per call; the rules are short and tested against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

#: The harness's fallback model length when neither the model nor the tokenizer states one.
DEFAULT_MAX_LENGTH = 2048


@dataclass(frozen=True)
class Loglikelihood:
    """One continuation's summed log-probability and whether greedy decoding gives it."""

    loglik: float
    is_greedy: bool


def encode_pair(
    tokenizer: Any, context: str, continuation: str, seq2seq: bool
) -> tuple[list[int], list[int]]:
    """The context's and the continuation's token ids, split as the harness splits them."""
    if not context:
        raise ValueError("a likelihood request needs a non-empty context")
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = tokenizer.encode(context)
    if seq2seq:
        return context_ids, tokenizer.encode(continuation, add_special_tokens=False)
    return context_ids, tokenizer.encode(context + continuation)[len(context_ids) :]


def model_max_length(network: nn.Module, tokenizer: Any) -> int:
    """The harness's ``HFLM.max_length``: the model config's length, else the tokenizer's
    (when set), else :data:`DEFAULT_MAX_LENGTH`."""
    config = getattr(network, "config", None)
    for attribute in ("n_positions", "max_position_embeddings", "n_ctx"):
        if config is not None and getattr(config, attribute, None):
            return int(getattr(config, attribute))
    stated = getattr(tokenizer, "model_max_length", None)
    return int(stated) if stated and stated < 1e30 else DEFAULT_MAX_LENGTH


def _pad(rows: Sequence[list[int]], value: int) -> torch.Tensor:
    width = max(len(row) for row in rows)
    return torch.tensor([row + [value] * (width - len(row)) for row in rows])


def loglikelihoods(
    network: nn.Module,
    tokenizer: Any,
    requests: Sequence[tuple[str, str]],
    *,
    seq2seq: bool = False,
    batch_size: int = 16,
) -> list[Loglikelihood]:
    """``(context, continuation)`` texts scored on ``network`` (a transformers model, PEFT
    wrapped or not), in the order given, split into tokens as the harness splits them."""
    pairs = [encode_pair(tokenizer, c, x, seq2seq) for c, x in requests]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    max_length = model_max_length(network, tokenizer)
    return token_loglikelihoods(
        network, pairs, seq2seq=seq2seq, batch_size=batch_size, pad=pad, max_length=max_length
    )


@torch.no_grad()
def token_loglikelihoods(
    network: nn.Module,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    seq2seq: bool,
    batch_size: int,
    pad: int,
    max_length: int,
) -> list[Loglikelihood]:
    """``(context, continuation)`` token ids scored on ``network``, in the order given;
    batches go longest first, as the harness's do.

    Causal requests that feed the model the same tokens (the options of a lettered question,
    ``" A"`` .. ``" D"``, all read the context alone) share one forward pass, as the harness's
    logits cache shares it; only the continuations' positions go through the log-softmax, and
    a causal model's head computes logits only from the batch's earliest continuation position
    on (``logits_to_keep``: a full-vocabulary row per position of a long prompt batch is
    gigabytes)."""
    device = next(network.parameters()).device
    encoded = [(list(c), list(x)) for c, x in pairs]
    if seq2seq:  # encoder input and decoder labels
        inputs = [(tuple(c[-max_length:]), tuple(x[-max_length:])) for c, x in encoded]
    else:  # one sequence, the last token not fed
        inputs = [(tuple((c + x)[-(max_length + 1) :][:-1]), ()) for c, x in encoded]
    distinct = list(dict.fromkeys(inputs))  # causal options that read the same tokens: once
    order = sorted(range(len(distinct)), key=lambda i: -sum(map(len, distinct[i])))
    readers: dict[tuple, list[int]] = {}
    for index, key in enumerate(inputs):
        readers.setdefault(key, []).append(index)
    results: list[Loglikelihood | None] = [None] * len(encoded)
    for start in range(0, len(order), batch_size):
        batch = [distinct[i] for i in order[start : start + batch_size]]
        if seq2seq:
            contexts = [list(context) for context, _ in batch]
            labels = _pad([list(labels) for _, labels in batch], pad).to(device)
            mask = _pad([[1] * len(c) for c in contexts], 0).to(device)
            logits = network(
                input_ids=_pad(contexts, pad).to(device), attention_mask=mask, labels=labels
            ).logits
            offset = 0
        else:  # the LM head runs on the last positions only, from the earliest continuation's
            width = max(len(sequence) for sequence, _ in batch)
            first = min(len(key[0]) - len(encoded[i][1]) for key in batch for i in readers[key])
            offset = max(0, first)
            fed = _pad([list(s) for s, _ in batch], 0).to(device)
            logits = network(input_ids=fed, logits_to_keep=width - offset).logits
        for row, key in enumerate(batch):
            for index in readers[key]:
                continuation = encoded[index][1]
                end = len(continuation) if seq2seq else len(key[0]) - offset
                window = logits[row, end - len(continuation) : end]
                positions = torch.log_softmax(window.float(), dim=-1)
                tokens = torch.tensor(continuation, device=device)
                results[index] = Loglikelihood(
                    loglik=float(positions.gather(-1, tokens[:, None]).sum()),
                    is_greedy=bool((positions.argmax(-1) == tokens).all()),
                )
    return [result for result in results if result is not None]
