"""Text-to-text on a causal language model: the task's answer is text the model generates.

A task example is a ``prompt`` (instruction and input, ending with the answer cue) and a
``target`` (the answer: a label word or an option number). Training reads
``prompt + " " + target + eos`` and takes the loss on the target tokens only (the prompt and the
padding are masked with -100, as in O-LoRA's and most instruction-tuning code). Evaluation
generates greedily with the KV cache (prompts left-padded, batches sorted by prompt length,
at most as many new tokens as the task's longest answer plus the end-of-sequence token), cuts the
generation at the first newline, and maps it to the label whose text it equals after the task's
normalization (``Task.answer_form``: SQuAD's, or O-LoRA's, which keeps articles); a generation
that equals no label is wrong (label id -1). So the task score is exact match, O-LoRA's scoring.

Prompts longer than the token budget (``max_length`` minus the room of the longest answer of
the stream) keep their first tokens and their last :data:`PROMPT_TAIL` tokens (a question and
the answer cue; ``prompt_keep="ends"``, the default), only their first tokens
(``prompt_keep="start"``, as O-LoRA's collator cuts) or only their last tokens
(``prompt_keep="end"``, as TRACE's collator cuts), the same way in training and evaluation.
``max_new_tokens`` (O-LoRA: 50) replaces the longest-answer generation length.

A stream in the ``joined`` text format (``Stream.text_format``; TRACE's collator) is read
differently: training reads ``bos + tokens(prompt + target) + eos``, the prompt and its answer
tokenized as one string, with the loss on the last ``len(tokens(target)) + 1`` tokens;
evaluation generates after ``bos + tokens(prompt)`` and keeps the decoded text as it is (no
strip, no cut at a newline). A task scored by a text metric (ROUGE-L, SARI, ...: see
:mod:`~cl_lora.streams.scoring`) gets each example's value from :meth:`TextToText.predict`
instead of a label id: evaluation batches carry the examples' answers and prompts for it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from avalanche.training.regularization import LearningWithoutForgetting
from torch import nn

from cl_lora import distributed
from cl_lora.backbones.base import Backbone, Inputs
from cl_lora.backbones.language_model import LanguageModel
from cl_lora.errors import BadInputError
from cl_lora.problems.base import Batch, Problem
from cl_lora.streams import Stream
from cl_lora.streams.scoring import ANSWER_FORMS, TEXT_METRICS, is_text_metric

IGNORE = -100  # label of positions without loss (PyTorch's and transformers' convention)
PROMPT_TAIL = 24  # tokens kept from a prompt's end when it is cut (a question, the answer cue)
REFERENCES = "references"  # evaluation inputs' key of each example's (answer, prompt) texts


def shift_targets(targets: torch.Tensor) -> torch.Tensor:
    """Training targets moved one position left (-100 at the end), so that position ``t`` of the
    ``(batch, tokens, vocabulary)`` logits is compared with ``targets[:, t + 1]`` without slicing
    (a copy of) the logits -- the shift transformers' own causal-LM loss makes."""
    return nn.functional.pad(targets, (0, 1), value=IGNORE)[:, 1:]


def _pad(rows: list[list[int]], value: int, left: bool) -> torch.Tensor:
    width = max(len(row) for row in rows)
    padded = [
        [value] * (width - len(row)) + row if left else row + [value] * (width - len(row))
        for row in rows
    ]
    return torch.tensor(padded, dtype=torch.long)


def _label_ids(labels: Sequence[int] | None) -> torch.Tensor | None:
    return None if labels is None else torch.tensor(list(labels))


def check_answer_by(stream: Stream, answer_by: str) -> None:
    """Bad input when ``--answer-by likelihood`` meets tasks that answer in free text (scored
    by a text metric): there are no options to rank. Needs only the stream, so a run checks it
    before loading any weights."""
    free_text = [task.name for task in stream.tasks if is_text_metric(task.metric)]
    if answer_by == "likelihood" and free_text:
        raise BadInputError(
            f"--answer-by likelihood ranks a task's answer options, but {', '.join(free_text)}"
            " of this stream answer in free text (scored by a text metric): drop --answer-by"
        )


class TextToText(Problem):
    """A causal LM that learns each task as prompt -> answer text (see the module docstring)."""

    kind = "text-to-text"
    joins_answer = True  # the joined format puts prompt and answer in one sequence

    def __init__(
        self,
        backbone: Backbone,
        stream: Stream,
        max_length: int,
        prompt_keep: str = "ends",
        max_new_tokens: int | None = None,
        loss_average: str = "tokens",
        answer_by: str = "generate",
    ) -> None:
        super().__init__(backbone, stream)
        self.tokenizer = backbone.tokenizer
        self.max_length = max_length
        self.prompt_keep = prompt_keep
        self.loss_average = loss_average
        self.answer_by = answer_by
        self.verbatim = stream.text_format == "joined"  # generations kept as decoded
        self.joined = self.verbatim and self.joins_answer
        self.eos = self.tokenizer.eos_token_id
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        bos = self.tokenizer.bos_token_id
        self.bos = [bos] if self.joined and bos is not None else []  # TRACE's collator adds it
        self.normalizers = [ANSWER_FORMS[task.answer_form] for task in stream.tasks]
        self.answers = [
            {normalize(name): label for label, name in enumerate(task.label_names)}
            for task, normalize in zip(stream.tasks, self.normalizers, strict=True)
        ]
        self.text_metrics = [
            TEXT_METRICS.get(task.metric) if is_text_metric(task.metric) else None
            for task in stream.tasks
        ]
        self.answer_lengths = [self._longest_answer(task.label_names) for task in stream.tasks]
        self.max_new_tokens = [max_new_tokens or length for length in self.answer_lengths]
        self.prompt_budget = self._prompt_budget(max_length)
        check_answer_by(stream, answer_by)
        if self.prompt_budget < (2 * PROMPT_TAIL if prompt_keep == "ends" else 1):
            raise BadInputError(
                f"--max-length {max_length} leaves {self.prompt_budget} tokens for a prompt "
                f"after the longest answer: use --max-length {max(self.max_new_tokens) + 64} "
                "or more"
            )

    def build_model(self) -> LanguageModel:
        return LanguageModel(self.backbone)

    def _prompt_budget(self, max_length: int) -> int:
        """Prompt tokens per example: prompt and answer share ``max_length`` in one sequence
        (the room of the longest answer, whatever the generation length)."""
        return max_length - max(self.answer_lengths, default=1)

    def _longest_answer(self, names: Sequence[str]) -> int:
        """Tokens of the longest of ``names`` as an answer, end-of-sequence token included
        (1 without names)."""
        if not names:
            return 1
        texts = [self._answer_text(name) for name in names]
        return (
            max(len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"])
            + 1
        )

    # -- batching ---------------------------------------------------------------------------
    def _answer_text(self, target: str) -> str:
        """What follows the prompt: `` target`` (``target`` alone in the ``joined`` format)."""
        return target if self.joined else " " + target

    def _target_ids(self, target: str) -> list[int]:
        """The answer's tokens and the end-of-sequence token: what the model learns to emit."""
        ids = self.tokenizer(self._answer_text(target), add_special_tokens=False)["input_ids"]
        return ids + [self.eos]

    def _cut(self, ids: list[int], budget: int) -> list[int]:
        """``ids`` cut to ``budget`` tokens as ``prompt_keep`` says (see :meth:`prompt_ids`)."""
        if len(ids) <= budget:
            return ids
        if self.prompt_keep == "start":
            return ids[:budget]
        if self.prompt_keep == "end":
            return ids[len(ids) - budget :]
        return ids[: budget - PROMPT_TAIL] + ids[-PROMPT_TAIL:]

    def prompt_ids(self, prompt: str) -> list[int]:
        """The prompt's tokens, cut to the budget: the first tokens plus the last few
        (``ends``), the first tokens with the tokenizer's special tokens kept (``start``, the
        tokenizer's own right-side truncation, as O-LoRA's collator cuts) or the last tokens
        (``end``, as TRACE's collator cuts). In the ``joined`` format the prompt is tokenized
        without special tokens and follows the beginning-of-sequence token."""
        if self.joined:
            ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            return self.bos + self._cut(ids, self.prompt_budget - len(self.bos))
        if self.prompt_keep == "start":
            return self.tokenizer(prompt, truncation=True, max_length=self.prompt_budget)[
                "input_ids"
            ]
        return self._cut(self.tokenizer(prompt)["input_ids"], self.prompt_budget)

    def _joined_example(self, prompt: str, target: str) -> tuple[list[int], list[int]]:
        """One training sequence and its loss targets the way TRACE's collator builds them:
        ``bos + tokens(prompt + target) + eos``, the loss on its last ``len(tokens(target))
        + 1`` tokens; the prompt's part is cut to the budget as :meth:`prompt_ids` cuts."""
        whole = self.tokenizer(prompt + target, add_special_tokens=False)["input_ids"]
        answer = min(len(self.tokenizer(target, add_special_tokens=False)["input_ids"]), len(whole))
        head = self._cut(whole[: len(whole) - answer], self.prompt_budget - len(self.bos))
        answer_ids = whole[len(whole) - answer :] + [self.eos]
        return self.bos + head + answer_ids, [IGNORE] * (len(self.bos) + len(head)) + answer_ids

    def _training_example(self, example: dict[str, Any]) -> tuple[list[int], list[int]]:
        """Token ids of ``prompt + " " + target + eos`` (or the ``joined`` format's) and the
        loss targets: the answer's tokens, -100 elsewhere."""
        if self.joined:
            return self._joined_example(example["prompt"], example["target"])
        prompt = self.prompt_ids(example["prompt"])
        answer = self._target_ids(example["target"])
        return prompt + answer, [IGNORE] * len(prompt) + answer

    def collate(
        self, examples: Sequence[dict[str, Any]], labels: Sequence[int] | None, training: bool
    ) -> Batch:
        if not training:  # prompts only, left-padded for generation; targets are label ids
            prompts = [self.prompt_ids(example["prompt"]) for example in examples]
            return self._evaluation_inputs(prompts, examples, labels), _label_ids(labels)
        sequences, answers = zip(*map(self._training_example, examples), strict=True)
        ids = _pad(list(sequences), self.pad, left=False)
        mask = _pad([[1] * len(sequence) for sequence in sequences], 0, left=False)
        return {"input_ids": ids, "attention_mask": mask}, _pad(list(answers), IGNORE, left=False)

    def _evaluation_inputs(
        self,
        prompts: list[list[int]],
        examples: Sequence[dict[str, Any]],
        labels: Sequence[int] | None,
    ) -> Inputs:
        """Left-padded prompts and, for a labelled batch (a task of the stream, not a probe's
        prompts) where a task of the stream is scored by a text metric, each example's
        ``(answer, prompt)`` texts: what :meth:`predict` scores a generation against."""
        inputs = self._prompt_inputs(prompts)
        if labels is not None and any(self.text_metrics):
            inputs[REFERENCES] = [(e["target"], e["prompt"]) for e in examples]
        return inputs

    def _prompt_inputs(self, prompts: list[list[int]]) -> Inputs:
        """Token ids of prompts alone, left-padded (generation continues from the right)."""
        return {
            "input_ids": _pad(prompts, self.pad, left=True),
            "attention_mask": _pad([[1] * len(p) for p in prompts], 0, left=True),
        }

    def eval_order(self, dataset: Sequence[tuple[dict[str, Any], int, int]]) -> list[int]:
        """Longest prompts first: batches of similar length waste little on padding, and an
        out-of-memory error, if any, comes on the first batch."""
        lengths = [len(dataset[i][0]["prompt"]) for i in range(len(dataset))]
        return sorted(range(len(lengths)), key=lambda i: -lengths[i])

    # -- training ---------------------------------------------------------------------------
    def forward(self, model: nn.Module, inputs: Inputs, task_labels: Any) -> torch.Tensor:
        return model(inputs, task_labels)

    def answer_targets(self, targets: torch.Tensor) -> torch.Tensor:
        """The token each output position must predict (``IGNORE`` where none): a causal LM's
        position ``t`` predicts token ``t + 1`` of the sequence."""
        return shift_targets(targets)

    def loss_terms(self, targets: torch.Tensor) -> int:
        """What :meth:`loss` averages: the batch's answer tokens, or (``loss_average =
        "examples"``) its examples that have an answer token."""
        answer = self.answer_targets(targets) != IGNORE
        return int(answer.any(dim=1).sum() if self.loss_average == "examples" else answer.sum())

    def loss(self, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the next-token predictions on the answer tokens: their mean over
        the batch (``tokens``), or each example's mean, averaged over the examples
        (``examples``: what a micro-batch of one example per device does, as in O-LoRA's LLaMA
        scripts under transformers 4.28)."""
        answers = self.answer_targets(targets)
        logits = output.reshape(-1, output.shape[-1]).float()
        if self.loss_average == "tokens":
            return nn.functional.cross_entropy(logits, answers.reshape(-1), ignore_index=IGNORE)
        per_token = nn.functional.cross_entropy(
            logits, answers.reshape(-1), ignore_index=IGNORE, reduction="none"
        ).view(answers.shape)
        mask = answers != IGNORE
        answered = mask.any(dim=1)
        per_example = (per_token * mask).sum(dim=1)[answered] / mask.sum(dim=1)[answered]
        return per_example.mean()

    def distillation(self, lwf: LearningWithoutForgetting, strategy: Any) -> torch.Tensor | float:
        """KL divergence from the previous model's next-token distributions to the current
        model's, at the target positions (temperature and alpha as in Avalanche's LwF)."""
        if lwf.prev_model is None:
            return 0.0
        with torch.no_grad():
            teacher = lwf.prev_model(strategy.mb_x, None)
        answer = self.answer_targets(strategy.mb_y) != IGNORE
        student = strategy.mb_output[answer].float() / lwf.temperature
        teacher = teacher[answer].float() / lwf.temperature
        kl = nn.functional.kl_div(
            torch.log_softmax(student, dim=-1), torch.softmax(teacher, dim=-1),
            reduction="batchmean",
        )  # fmt: skip
        alpha = lwf.alpha[lwf.expcount] if isinstance(lwf.alpha, list | tuple) else lwf.alpha
        return alpha * kl

    # -- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        model: nn.Module,
        inputs: Inputs,
        max_new_tokens: int,
        stops: Sequence[str] = ("\n",),
        verbatim: bool = False,
    ) -> list[str]:
        """Greedy continuations of left-padded prompts (KV cache on), decoded and cut before
        the first of ``stops``; ``verbatim``: decoded as they are (special tokens dropped,
        nothing stripped or cut, spaces as the tokens have them: TRACE's decoding)."""
        output = model.encoder.generate(
            **self._generation_inputs(model, inputs),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            use_cache=True,
            pad_token_id=self.pad,
            eos_token_id=self.eos,
            synced_gpus=distributed.sharded(),  # sharded weights: all processes step together
        )
        if verbatim:
            return self.tokenizer.batch_decode(
                self._continuation(output, inputs),
                skip_special_tokens=True,
                clean_up_tokenization_spaces=False,
            )
        texts = self.tokenizer.batch_decode(
            self._continuation(output, inputs), skip_special_tokens=True
        )
        return [re.split("|".join(map(re.escape, stops)), text.strip(), maxsplit=1)[0].strip()
                for text in texts]  # fmt: skip

    def _generation_inputs(self, model: nn.Module, inputs: Inputs) -> dict[str, Any]:
        """What ``generate`` reads of a batch of prompts."""
        return {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}

    def _continuation(self, output: torch.Tensor, inputs: Inputs) -> torch.Tensor:
        """The generated tokens of ``generate``'s output (a causal LM repeats the prompt)."""
        return output[:, inputs["input_ids"].shape[1] :]

    def predict(self, model: nn.Module, inputs: Inputs, task_labels: Any) -> torch.Tensor:
        """The label id each generation equals after normalization (-1: none), or, for a task
        scored by a text metric, each example's value of that metric."""
        task = int(torch.as_tensor(task_labels).reshape(-1)[0])
        if self.answer_by == "likelihood":
            return self.rank_answers(model, inputs, task)
        texts = self.generate(model, inputs, self.max_new_tokens[task], ("\n",), self.verbatim)
        metric = self.text_metrics[task]
        if metric is not None:
            pairs = zip(texts, inputs[REFERENCES], strict=True)
            values = [metric.score(text, answer, prompt) for text, (answer, prompt) in pairs]
            return torch.tensor(values, dtype=torch.float64)
        answers, normalize = self.answers[task], self.normalizers[task]
        return torch.tensor([answers.get(normalize(text), -1) for text in texts])

    @torch.no_grad()
    def answer_logliks(self, model: nn.Module, inputs: Inputs, task: int) -> torch.Tensor:
        """``[examples, labels]``: the summed log-probability of each label's answer tokens (as
        training writes them, without the end-of-sequence token) after each prompt."""
        from cl_lora.problems.likelihood import token_loglikelihoods

        names = self.stream.tasks[task].label_names
        answers = [self._target_ids(name)[:-1] for name in names]
        ids, mask = inputs["input_ids"].cpu(), inputs["attention_mask"].bool().cpu()
        prompts = [row[keep].tolist() for row, keep in zip(ids, mask, strict=True)]
        network = model.encoder
        network = network.get_base_model() if hasattr(network, "get_base_model") else network
        scores = token_loglikelihoods(
            network,
            [(prompt, answer) for prompt in prompts for answer in answers],
            seq2seq=isinstance(self, Seq2SeqTextToText),
            batch_size=max(len(prompts), 1),
            pad=self.pad,
            max_length=self.max_length + max(map(len, answers)),
        )
        return torch.tensor([s.loglik for s in scores]).reshape(len(prompts), len(names))

    def rank_answers(self, model: nn.Module, inputs: Inputs, task: int) -> torch.Tensor:
        """Per example, the most likely label (:meth:`answer_logliks`), as
        lm-evaluation-harness's ``acc`` ranks options."""
        return self.answer_logliks(model, inputs, task).argmax(1)

    def record(self) -> dict[str, Any]:
        joined = "bos + tokens(prompt + target) + eos (TRACE's collator)"
        return {
            "kind": self.kind,
            "max_length": self.max_length,
            "prompt_budget": self.prompt_budget,
            "prompt_keep": self.prompt_keep,
            "loss_average": self.loss_average,
            "answer_by": self.answer_by,
            "text_format": self.stream.text_format,
            "format": (joined if self.joined else "prompt + ' ' + target + eos")
            + "; loss on the target tokens only",
            "generation": {
                "decoding": "greedy",
                "kv_cache": True,
                "stop": "end-of-sequence token"
                + ("; kept as decoded" if self.verbatim else ", then cut at the first newline"),
                "max_new_tokens": dict(
                    zip([t.name for t in self.stream.tasks], self.max_new_tokens, strict=True)
                ),
                "scoring": "exact match against the task's label texts after its answer "
                "form's normalization (squad: lower case, no punctuation or articles; o-lora: "
                "articles kept), or the task's text metric (tasks[].metric) averaged over its "
                "examples",
                "answer_forms": {task.name: task.answer_form for task in self.stream.tasks},
            },
        }


class Seq2SeqTextToText(TextToText):
    """An encoder-decoder LM (T5, Flan-T5, BART) that learns each task as prompt -> answer text.

    The encoder reads the prompt (cut to ``max_length`` tokens, like O-LoRA's
    ``max_source_length``); the decoder reads the answer shifted right behind the model's
    decoder-start token and learns each answer token at its own position (teacher forcing), so
    the loss, LwF's distillation and the knowledge probe's log-likelihood take the targets as
    they are. Generation and scoring are the causal LM's; in the ``joined`` format the encoder
    still reads the prompt alone, and generations are kept as decoded.
    """

    joins_answer = False

    def __init__(self, backbone: Backbone, stream: Stream, max_length: int, **options: Any) -> None:
        config = backbone.encoder.config
        start = config.decoder_start_token_id
        self.decoder_start = start if start is not None else backbone.tokenizer.pad_token_id
        super().__init__(backbone, stream, max_length, **options)

    def _prompt_budget(self, max_length: int) -> int:
        return max_length

    def _answer_text(self, target: str) -> str:
        return target

    def collate(
        self, examples: Sequence[dict[str, Any]], labels: Sequence[int] | None, training: bool
    ) -> Batch:
        prompts = [self.prompt_ids(e["prompt"]) for e in examples]
        if not training:
            return self._evaluation_inputs(prompts, examples, labels), _label_ids(labels)
        inputs = self._prompt_inputs(prompts)
        answers = [self._target_ids(example["target"]) for example in examples]
        inputs["decoder_input_ids"] = _pad(
            [[self.decoder_start, *a[:-1]] for a in answers], self.pad, left=False
        )
        return inputs, _pad(answers, IGNORE, left=False)

    def answer_targets(self, targets: torch.Tensor) -> torch.Tensor:
        """Decoder position ``t`` predicts answer token ``t``: the targets as they are."""
        return targets

    def _generation_inputs(self, model: nn.Module, inputs: Inputs) -> dict[str, Any]:
        """With sharded weights (FSDP2), also the encoder's outputs, computed through the
        model's own forward: FSDP2 gathers the weights no layer unit holds (the shared
        embedding) in that forward's hook, where ``generate`` would run the encoder stack alone
        and find them sharded."""
        given = super()._generation_inputs(model, inputs)
        if not distributed.sharded():
            return given
        from transformers.modeling_outputs import BaseModelOutput

        start = torch.full_like(given["input_ids"][:, :1], self.decoder_start)
        encoded = model.encoder(**given, decoder_input_ids=start).encoder_last_hidden_state
        return {**given, "encoder_outputs": BaseModelOutput(last_hidden_state=encoded)}

    def _continuation(self, output: torch.Tensor, inputs: Inputs) -> torch.Tensor:
        """All of the decoder's output (its start token is special and decodes to nothing)."""
        return output

    def record(self) -> dict[str, Any]:
        return {
            **super().record(),
            "format": "encoder: prompt; decoder: target + eos (teacher forcing); loss on the "
            "target tokens",
        }
