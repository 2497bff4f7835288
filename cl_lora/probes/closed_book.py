"""``nq-open``: closed-book question answering, the knowledge probe of a language model.

What a language model knew before the stream is measured the way LoRA-Null and CorDA measure
it: closed-book NQ-open (questions from Natural Questions, answered from the model's weights
alone). Two numbers per evaluation, before the first task and after each task:

- ``exact_match``: greedy generation (at most :data:`MAX_NEW_TOKENS` new tokens, cut before the
  first newline, period or comma, as lm-evaluation-harness's ``nq_open`` task stops) equals one
  of the gold answers after SQuAD-style normalization -- the research's metric. SmolLM2-135M
  answers almost none of NQ-open this way (measured: 0 of 100 before any training), so on
  small models this number is coarse.
- ``gold_loglik``: the mean log-probability per token of the first gold answer's tokens (after
  a space, without the end-of-sequence token) given the prompt, averaged over questions -- it
  moves measurably with every change of the weights, which makes it the sensitive one on small
  models. Caveat: text-to-text tasks train the same ``Answer: <short answer>`` format, which
  makes any short answer more likely after the cue; the first task's change therefore mixes
  format and knowledge, and methods are best compared on the same stream, point by point.

Exact match is the probe's primary score (the retention curve of ``result.json``); the
log-likelihood curve sits beside it. Questions come from the probe split of NQ-open, disjoint
from the calibration split that knowledge-preserving inits read.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from cl_lora.distributed import map_shared
from cl_lora.metrics import retention_summary
from cl_lora.probes.registry import ProbeContext, register_probe
from cl_lora.streams.knowledge_qa import nq_open
from cl_lora.streams.scoring import normalize_answer

if TYPE_CHECKING:  # (the problems load on first use: --list registers probes)
    from cl_lora.problems import TextToText

MAX_NEW_TOKENS = 16
STOPS = ("\n", ".", ",")  # lm-evaluation-harness nq_open's "until" strings
DEFAULT_QUESTIONS = 100  # probe questions scored per evaluation (fewer with --max-test-per-task)


class ClosedBookQAProbe:
    """Scores NQ-open on the model as it stands (see the module docstring)."""

    def __init__(self, data: Any, problem: TextToText, batch_size: int = 32) -> None:
        self.data = data
        self.rows = [dict(row) for row in data]
        self.problem = problem
        self.batch_size = batch_size
        self.gold_loglik: list[float] = []

    @torch.no_grad()
    def _scores(self, model: nn.Module) -> tuple[float, float]:
        """Exact match and mean gold log-likelihood over the questions (longest prompts
        first; in a multi-process run each process scores its share)."""
        order = sorted(range(len(self.rows)), key=lambda i: -len(self.rows[i]["prompt"]))
        was_training = model.training
        model.eval()
        try:
            scored = map_shared([self.rows[i] for i in order], partial(self._row_scores, model))
        finally:
            model.train(was_training)
        hits, logliks = zip(*scored, strict=True)
        return float(np.mean(hits)), float(np.mean(logliks))

    def _row_scores(self, model: nn.Module, rows: Sequence[dict[str, Any]]) -> list[tuple]:
        """Per question, in order: (exact match, mean log-probability of its gold answer's
        tokens), batched by ``batch_size``."""
        from cl_lora.problems.text_to_text import IGNORE

        device = next(model.parameters()).device
        scores = []
        for begin in range(0, len(rows), self.batch_size):
            batch = rows[begin : begin + self.batch_size]
            inputs, _ = self.problem.collate(batch, None, training=False)
            inputs = {k: v.to(device) for k, v in inputs.items()}
            texts = self.problem.generate(model, inputs, MAX_NEW_TOKENS, STOPS)
            hits = [
                normalize_answer(text) in {normalize_answer(a) for a in row["answers"]}
                for row, text in zip(batch, texts, strict=True)
            ]
            inputs, targets = self.problem.collate(batch, None, training=True)
            logits = model({k: v.to(device) for k, v in inputs.items()}).float()
            targets = self.problem.answer_targets(targets).to(device)
            answer = (targets != IGNORE) & (targets != self.problem.eos)
            logprobs = torch.log_softmax(logits[answer], dim=-1)  # answer positions only
            token = logprobs.gather(-1, targets[answer].unsqueeze(-1))[:, 0]
            row = answer.nonzero()[:, 0]  # which question each answer token belongs to
            sums = torch.zeros(len(batch), device=device).index_add_(0, row, token)
            scores += zip(hits, (sums / answer.sum(1)).tolist(), strict=True)
        return scores

    def start(self, model: nn.Module) -> float:
        """The score before the first task (nothing to fit: generation needs no head)."""
        return self.score(model)

    def score(self, model: nn.Module) -> float:
        """Exact match now; the gold-answer log-likelihood is appended to its own curve."""
        exact, loglik = self._scores(model)
        self.gold_loglik.append(loglik)
        return exact

    def checkpoint_state(self) -> dict[str, Any]:
        return {"gold_loglik": list(self.gold_loglik)}

    def restore_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.gold_loglik = list(state["gold_loglik"])

    def record(self, curve: Sequence[float]) -> dict[str, Any]:
        """The ``retention`` entry: exact-match curve plus the log-likelihood curve."""
        loglik = retention_summary(self.gold_loglik)
        return {
            "probe": "nq-open",
            "head": "none (closed-book generation)",
            "fit_examples": 0,
            "test_size": len(self.rows),
            "metric": "exact_match",
            **retention_summary(curve),
            "gold_loglik": {"curve": loglik["curve"], "drop": loglik["drop"]},
            "generation": {
                "decoding": "greedy",
                "max_new_tokens": MAX_NEW_TOKENS,
                "cut_before": list(STOPS),
            },
        }


@register_probe(
    "nq-open", "closed-book NQ-open: exact match of greedy answers, gold log-likelihood", chance="0"
)
def nq_open_probe(context: ProbeContext) -> ClosedBookQAProbe:
    test = nq_open("probe")
    test = test.select(range(min(context.size, len(test))))
    return ClosedBookQAProbe(test, context.problem, batch_size=context.batch_size)
