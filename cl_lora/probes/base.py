"""What the likelihood-scored probes share: a fixed held-out sample outside the stream, the
model's transformers network, and one record per evaluation.

The sample is drawn once per probe with a fixed seed (independent of the run seed, so every run
scores the same questions), after leaving out every question whose text occurs in one of the
stream's prompts (the commonsense stream trains on PIQA's validation file, which the PIQA probe
also reads; BoolQ's questions recur in the ``boolq-relevance`` task): a probe measures what the
model keeps of what it was not trained on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from torch import nn

from cl_lora.distributed import map_shared
from cl_lora.metrics import retention_summary
from cl_lora.streams.commonsense import squash
from cl_lora.streams.sampling import SPLIT_SEED

if TYPE_CHECKING:  # (the problems and PEFT load on first use: --list registers probes)
    from cl_lora.problems import TextToText
    from cl_lora.problems.likelihood import Loglikelihood
    from cl_lora.streams import Stream

T = TypeVar("T")


def stream_text(stream: Stream) -> str:
    """Every prompt of the stream's tasks (train and test), white space squashed, lower case,
    joined: what a probe question must not occur in."""
    prompts = [
        squash(str(prompt)).lower()
        for task in stream.tasks
        for split in (task.train, task.test)
        if "prompt" in split.column_names
        for prompt in split["prompt"]
    ]
    return "\n".join(prompts)


def held_out_sample(
    items: Sequence[T], keys: Sequence[str], stream: Stream, size: int
) -> tuple[list[T], int]:
    """``size`` of ``items`` in a fixed shuffled order, leaving out those whose ``key`` (the
    question's text) occurs in a prompt of ``stream``; also how many were left out."""
    text = stream_text(stream)
    outside = [i for i, key in enumerate(keys) if squash(key).lower() not in text]
    order = np.random.default_rng(SPLIT_SEED).permutation(len(outside))
    return [items[outside[i]] for i in order[:size]], len(items) - len(outside)


class LikelihoodProbe(ABC):
    """A probe scored from log-likelihoods of continuations (lm-evaluation-harness's way, see
    :mod:`cl_lora.problems.likelihood`); subclasses say what is asked and how it is scored.

    Each evaluation's metrics are kept (``evaluations``); the primary one (``metric``) is the
    retention curve the run loop keeps, the others sit beside it in :meth:`record`.
    """

    metric = "acc"

    def __init__(
        self, name: str, problem: TextToText, batch_size: int, chance: float, left_out: int
    ) -> None:
        self.name = name
        self.problem = problem
        self.batch_size = batch_size
        self.chance = chance
        self.left_out = left_out
        self.evaluations: list[dict[str, float]] = []

    def loglikelihoods(
        self, model: nn.Module, requests: Sequence[tuple[str, str]]
    ) -> list[Loglikelihood]:
        """The requests scored on ``model``'s network as it stands, in evaluation mode."""
        from peft import PeftModel

        from cl_lora.problems import Seq2SeqTextToText
        from cl_lora.problems.likelihood import loglikelihoods

        network = model.encoder
        if isinstance(network, PeftModel):  # the LoRA layers live inside the base model
            network = network.get_base_model()
        was_training = model.training
        model.eval()
        try:  # each process scores its share of the requests (all of them in one process)
            return map_shared(
                requests,
                lambda part: loglikelihoods(
                    network,
                    self.problem.tokenizer,
                    part,
                    seq2seq=isinstance(self.problem, Seq2SeqTextToText),
                    batch_size=self.batch_size,
                ),
            )
        finally:
            model.train(was_training)

    @abstractmethod
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """This probe's metrics on the model as it stands (``self.metric`` among them)."""

    @property
    @abstractmethod
    def size(self) -> int:
        """How many examples the probe scores."""

    def start(self, model: nn.Module) -> float:
        return self.score(model)

    def score(self, model: nn.Module) -> float:
        evaluation = self.evaluate(model)
        self.evaluations.append(evaluation)
        return evaluation[self.metric]

    def checkpoint_state(self) -> dict[str, Any]:
        return {"evaluations": list(self.evaluations)}

    def restore_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.evaluations = list(state["evaluations"])

    def record(self, curve: Sequence[float]) -> dict[str, Any]:
        """The probe's ``result.json`` entry: the primary curve and every other metric's."""
        others = {
            key: retention_summary([e[key] for e in self.evaluations])
            for key in (self.evaluations[0] if self.evaluations else {})
            if key != self.metric
        }
        return {
            "probe": self.name,
            "head": "none (log-likelihood, as lm-evaluation-harness)",
            "fit_examples": 0,
            "test_size": self.size,
            "metric": self.metric,
            "chance": self.chance,
            "left_out_in_stream": self.left_out,
            **retention_summary(curve),
            "other_metrics": {
                key: {"curve": value["curve"], "drop": value["drop"]}
                for key, value in others.items()
            },
        }
