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

import pytest
import torch
from conftest import ExtraLoss

from cl_lora.backbones import Backbone
from cl_lora.backbones.causal_lm import language_model_backbone, smollm2_dir
from cl_lora.lora import ADAPTER, lora_layers
from cl_lora.problems.text_to_text import IGNORE

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


def gold_loglik_by_hand(backbone: Backbone, rows: list[dict[str, Any]]) -> float:
    """The knowledge probe's gold-answer log-likelihood, computed apart from the suite: per
    question, one unpadded sequence through the bare transformers model, the log-softmax
    probability of each token of the first gold answer after the prompt (a causal LM: the
    tokens of `` answer`` after ``prompt``; an encoder-decoder: the decoder's tokens of
    ``answer`` for the encoded prompt), averaged over the answer's tokens, then over the
    questions (nats per token)."""
    model, tokenizer = backbone.encoder.eval(), backbone.tokenizer
    per_question = []
    with torch.no_grad():
        for row in rows:
            prompt = tokenizer(row["prompt"])["input_ids"]
            if model.config.is_encoder_decoder:  # T5 puts its decoder start before the labels
                answer = tokenizer(row["answers"][0], add_special_tokens=False)["input_ids"]
                output = model(input_ids=torch.tensor([prompt]), labels=torch.tensor([answer]))
                logits = output.logits[0]  # position t predicts answer[t]
            else:
                answer = tokenizer(" " + row["answers"][0], add_special_tokens=False)["input_ids"]
                logits = model(input_ids=torch.tensor([prompt + answer])).logits[0]
                logits = logits[len(prompt) - 1 : -1]  # position t predicts token t + 1
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            per_question.append(logprobs[torch.arange(len(answer)), answer].mean().item())
    return sum(per_question) / len(per_question)


def check_gold_loglik(backbone: Backbone, stream: Any, questions: int = 5) -> None:
    """The run's knowledge probe (built as a run builds it, in batches of two, so prompts are
    padded) scores the probe split's first ``questions`` questions with the log-likelihood
    :func:`gold_loglik_by_hand` computes."""
    from cl_lora.problems import build_problem
    from cl_lora.strategy.retention import knowledge_probe_for
    from cl_lora.streams import knowledge_probe

    problem = build_problem(stream, backbone, max_length=64)
    probe = knowledge_probe_for(stream, problem, batch_size=2, max_test=questions)
    probe.score(problem.build_model())
    rows = [dict(row) for row in knowledge_probe(stream.knowledge).test.select(range(questions))]
    assert len({len(row["answers"][0]) for row in rows}) > 1  # answers of several lengths
    expected = gold_loglik_by_hand(backbone, rows)
    assert probe.gold_loglik == [pytest.approx(expected, rel=1e-5, abs=1e-5)]


class PluginObserver(ExtraLoss):
    """Placed after the plugins it watches, on a stream of plain ``lora`` adapters. Per task and
    step: what they added to the loss (``extra``) and, for the plugin it is told about, the same
    term computed here from the model as it stands (``by_hand``):

    - EWC (``ewc_lambda``): ``lambda * sum F (s B A)^2`` over the adapted layers, ``F`` the
      plugin's importance when the task started; the new adapter's ``s B A`` is the effective
      weight's distance from its anchor, the weight the last task's merge wrote;
    - LwF (``lwf = (alpha, temperature)``): ``alpha * KL(teacher || student)`` of the next-token
      distributions at the answer positions, the teacher the model with its adapter switched
      off (the previous task's merged model) in eval mode.

    Also every micro-batch's task ids with its decoded inputs (``batches``), and each adapted
    layer's ``s B A`` at each task's end (``updates``)."""

    def __init__(self, ewc_lambda: float | None = None, lwf: tuple | None = None) -> None:
        super().__init__()
        self.ewc_lambda, self.lwf = ewc_lambda, lwf
        self.importance: dict[str, torch.Tensor] = {}
        self.by_hand: dict[int, list[float]] = {}
        self.batches: dict[int, list[tuple[list[int], list[str]]]] = {}
        self.updates: dict[int, dict[str, torch.Tensor]] = {}

    @staticmethod
    def _updates(strategy: Any) -> dict[str, torch.Tensor]:
        return {
            name: layer.scaling[ADAPTER]
            * layer.lora_B[ADAPTER].weight
            @ layer.lora_A[ADAPTER].weight
            for name, layer in lora_layers(strategy.model.encoder).items()
        }

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        ewc = next((p for p in strategy.plugins if hasattr(p, "importance")), None)
        if ewc is not None:
            self.importance = {k: v.clone() for k, v in ewc.importance.items()}

    def after_forward(self, strategy: Any, **kwargs: Any) -> None:
        texts = strategy.problem.tokenizer.batch_decode(
            strategy.mb_x["input_ids"], skip_special_tokens=True
        )
        self.batches.setdefault(strategy.task_id, []).append((strategy.mb_task_id.tolist(), texts))

    def before_backward(self, strategy: Any, **kwargs: Any) -> None:
        super().before_backward(strategy)
        with torch.no_grad():
            if self.ewc_lambda is not None and self.importance:
                updates = self._updates(strategy)
                term = self.ewc_lambda * sum(
                    (self.importance[name] * update.square()).sum()
                    for name, update in updates.items()
                )
            elif self.lwf is not None and strategy.task_id > 0:
                term = self._distillation(strategy, *self.lwf)
            else:
                term = torch.zeros(())
        self.by_hand.setdefault(strategy.task_id, []).append(float(term))

    @staticmethod
    def _distillation(strategy: Any, alpha: float, temperature: float) -> torch.Tensor:
        encoder, targets = strategy.model.encoder, strategy.mb_y
        if encoder.config.is_encoder_decoder:  # decoder position t predicts answer token t
            answer = targets != IGNORE
        else:  # position t predicts token t + 1
            answer = torch.zeros_like(targets, dtype=torch.bool)
            answer[:, :-1] = targets[:, 1:] != IGNORE
        encoder.eval()
        with encoder.disable_adapter():
            teacher = encoder(**strategy.mb_x).logits[answer].double() / temperature
        encoder.train()
        student = strategy.mb_output[answer].double() / temperature
        p = torch.softmax(teacher, dim=-1)
        kl = (p * (torch.log_softmax(teacher, -1) - torch.log_softmax(student, -1))).sum(-1)
        return alpha * kl.mean()

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        with torch.no_grad():
            self.updates[strategy.task_id] = self._updates(strategy)


def observed_run(make_backbone, stream, plugins: list, observer: PluginObserver) -> Any:
    """A run of ``stream`` with ``plugins`` then ``observer`` (2 epochs, seeded as every other
    run of this helper, so two runs differ only by their plugins); returns the strategy."""
    from conftest import make_strategy

    from cl_lora.strategy import run_stream

    torch.manual_seed(0)
    strategy = make_strategy(make_backbone(), stream, epochs=2, plugins=[*plugins, observer])
    run_stream(strategy)
    return strategy


def check_ewc_pulls_towards_the_anchor(make_backbone, stream, ewc_lambda: float = 1e4) -> None:
    """EWC on a language model: nothing on the first task; on the second, the penalty EWC adds
    is ``lambda sum F (W_eff - anchor)^2`` computed by hand (0 on the first step, where the
    fresh adapter sits at the anchor, then positive), with a non-zero importance on every
    adapted layer; and the same run without EWC ends the task farther from the anchor (in
    that F-weighted distance), so the penalty pulls towards it."""
    from cl_lora.plugins import PLUGINS

    ewc = PLUGINS.get("ewc").build({"ewc_lambda": ewc_lambda})
    with_ewc = PluginObserver(ewc_lambda=ewc_lambda)
    observed_run(make_backbone, stream, [ewc], with_ewc)
    without = PluginObserver()
    observed_run(make_backbone, stream, [], without)
    assert all(extra == 0 for extra in with_ewc.extra[0])
    assert with_ewc.extra[1][0] == pytest.approx(0, abs=1e-7) and max(with_ewc.extra[1]) > 1e-3
    assert with_ewc.extra[1] == pytest.approx(with_ewc.by_hand[1], rel=1e-4, abs=1e-7)
    importance = with_ewc.importance
    assert importance.keys() == with_ewc.updates[1].keys()
    assert all(f.sum() > 0 for f in importance.values())

    def distance(observer: PluginObserver) -> float:
        return sum(
            (importance[k] * d.square()).sum().item() for k, d in observer.updates[1].items()
        )

    assert distance(with_ewc) < 0.5 * distance(without)


def check_lwf_distils(make_backbone, stream, alpha: float = 50.0, temperature: float = 2.0) -> None:
    """LwF on a language model: nothing on the first task; on the second, the term it adds is
    ``alpha * KL`` from the previous model's softened next-token distributions to the current
    model's at the answer positions, computed by hand, and it is non-zero."""
    from cl_lora.plugins import PLUGINS

    lwf = PLUGINS.get("lwf").build({"alpha": alpha, "temperature": temperature})
    observer = PluginObserver(lwf=(alpha, temperature))
    observed_run(make_backbone, stream, [lwf], observer)
    assert all(extra == 0 for extra in observer.extra[0])
    # float32's KL over a 49k vocabulary is good to about 1e-7 (alpha times that here), and
    # the term is read off a float32 loss of about 11; a large alpha keeps it far above both
    assert observer.extra[1] == pytest.approx(observer.by_hand[1], rel=1e-3, abs=2e-5)
    assert max(observer.extra[1]) > 1e-3


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
