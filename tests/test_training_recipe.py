"""The training knobs a published recipe sets, each checked against what the official stack
does (transformers' Trainer and get_scheduler, PEFT's lora_dropout, O-LoRA's collator): the
learning rate at every step, gradient accumulation, clipping at the accumulated step, dropout,
the kept prompt tokens, and per-task settings applied to the right task."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from avalanche.core import SupervisedPlugin
from conftest import make_strategy, make_toy_stream
from llm_fixtures import tiny_llama, toy_text_to_text_stream

from cl_lora.errors import BadInputError
from cl_lora.problems import build_problem
from cl_lora.strategy import run_stream
from cl_lora.streams import Stream, Task
from cl_lora.streams.base import to_dataset


class Recorder(SupervisedPlugin):
    """Records, per optimizer step, the learning rate it uses and the adapter's gradient
    before and after the step (after: as clipped; the step does not clear it)."""

    def __init__(self) -> None:
        super().__init__()
        self.lrs: list[float] = []
        self.grads: list[dict[str, torch.Tensor]] = []
        self.norms: list[tuple[float, float]] = []
        self.tasks: list[dict] = []

    @staticmethod
    def _grads(strategy) -> dict[str, torch.Tensor]:
        return {
            name: p.grad.detach().clone()
            for name, p in strategy.model.encoder.named_parameters()
            if p.requires_grad and p.grad is not None
        }

    def before_training_exp(self, strategy, **kwargs) -> None:
        keys = ("lambda_orth", "lambda_l2")
        self.tasks.append(
            {"epochs": strategy.train_epochs, "lr": strategy.lr}
            | {key: getattr(strategy, key) for key in keys if hasattr(strategy, key)}
        )

    def before_update(self, strategy, **kwargs) -> None:
        self.lrs.append(strategy.optimizer.param_groups[0]["lr"])
        self.grads.append(self._grads(strategy))
        self.norms.append((_norm(self.grads[-1].values()), 0.0))

    def after_update(self, strategy, **kwargs) -> None:
        groups = strategy.optimizer.param_groups
        after = _norm(p.grad for group in groups for p in group["params"] if p.grad is not None)
        self.norms[-1] = (self.norms[-1][0], after)


def _norm(grads) -> float:
    return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))


ANSWERS = ("no", "yes, the text does mention the cue word")


def uneven_answers_stream() -> Stream:
    """One text-to-text task whose answers differ in length (1 to 9 tokens): micro-batches of
    one step hold different numbers of answer tokens, so their weights matter."""
    names = ANSWERS
    rows = [
        {"prompt": f"Text {i}: {'cue' if i % 2 else 'plain'} item\nAnswer:", "label": i % 2}
        for i in range(32)
    ]
    frame = pd.DataFrame(rows)
    frame["target"] = [names[label] for label in frame["label"]]
    task = Task("uneven", to_dataset(frame[:16], names), to_dataset(frame[16:], names), names,
                "exact_match")  # fmt: skip
    return Stream("uneven", (task,), "task", "text", False, problem="text-to-text")


def test_the_rate_at_every_step_is_get_schedulers() -> None:
    """transformers.get_scheduler(name, optimizer, num_warmup_steps, num_training_steps) gives
    the rate of each step (transformers/optimization.py, get_scheduler), with warm-up from
    --warmup-steps or ceil(ratio * steps) as TrainingArguments.get_warmup_steps computes it."""
    from transformers import get_scheduler

    stream = make_toy_stream(tasks=1)  # 24 training examples: 3 steps of 8 per epoch
    for settings, warmup in [
        ({"lr_scheduler": "cosine", "warmup_steps": 2}, 2),
        ({"lr_scheduler": "linear", "warmup_ratio": 0.2}, 2),  # ceil(0.2 * 6)
        ({"lr_scheduler": "constant", "warmup_steps": 0}, 0),
    ]:
        recorder = Recorder()
        strategy = make_strategy(
            tiny_llama_free_backbone(), stream, epochs=2, plugins=[recorder], **settings
        )
        run_stream(strategy)
        reference = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
        schedule = get_scheduler(
            settings["lr_scheduler"], reference, num_warmup_steps=warmup, num_training_steps=6
        )
        expected = []
        for _ in range(6):
            expected.append(reference.param_groups[0]["lr"])
            reference.step()
            schedule.step()
        assert recorder.lrs == pytest.approx(expected, abs=1e-12), settings
    assert len(set(recorder.lrs)) == 1  # constant: the same rate from the first step


def tiny_llama_free_backbone():
    """The tiny BERT of conftest (a classification stream needs no language model)."""
    from conftest import tiny_backbone

    return tiny_backbone()


def test_the_default_schedule_is_unchanged() -> None:
    """No --lr-scheduler: the suite's own linear warm-up and decay, as before the setting
    existed (first step at 1/warm-up of the rate), so earlier runs reproduce."""
    recorder = Recorder()
    run_stream(make_strategy(tiny_llama_free_backbone(), make_toy_stream(tasks=1), epochs=2,
                             plugins=[recorder]))  # fmt: skip
    warmup, total = round(0.1 * 6) or 1, 6
    expected = [1e-2 * ((s + 1) / warmup if s < warmup else (total - s) / (total - warmup))
                for s in range(total)]  # fmt: skip
    assert recorder.lrs == pytest.approx(expected)


@pytest.mark.parametrize("stream_of", [uneven_answers_stream, lambda: make_toy_stream(tasks=1)])
def test_two_accumulated_micro_batches_equal_one_batch(stream_of) -> None:
    """A step on 16 examples and a step on two accumulated micro-batches of 8 have the same
    gradient (to float tolerance): each micro-batch weighs by its share of the step's loss
    terms (answer tokens for a language model, as transformers' Trainer divides by
    num_items_in_batch since v4.46; examples for heads)."""
    stream = stream_of()
    language_model = stream.problem == "text-to-text"
    grads = []
    for accumulation in (1, 2):
        recorder = Recorder()
        backbone = tiny_llama() if language_model else tiny_llama_free_backbone()
        for module in backbone.encoder.modules():  # BERT's own dropout draws per batch shape
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        torch.manual_seed(0)  # the task head's initial weights, as a run seeds them
        strategy = make_strategy(backbone, stream, plugins=[recorder], batch_size=16,
                                 grad_accumulation=accumulation)  # fmt: skip
        run_stream(strategy)
        assert strategy.training_records[0]["micro_batch"] == 16 // accumulation
        assert strategy.training_records[0]["optimizer_steps"] == len(recorder.lrs)
        grads.append(recorder.grads[0])
    whole, accumulated = grads
    assert whole.keys() == accumulated.keys() and whole
    for name in whole:
        torch.testing.assert_close(accumulated[name], whole[name], rtol=1e-4, atol=1e-7)


def test_accumulation_weighs_micro_batches_by_answer_tokens() -> None:
    """The weights themselves: a micro-batch with more answer tokens weighs more (the mean
    of the two micro-batch means would not equal the whole batch's mean)."""
    stream = uneven_answers_stream()
    problem = build_problem(stream, tiny_llama(), max_length=64)
    rows = [stream.tasks[0].train[i] for i in range(4)]  # answers: no, yes..., no, yes...
    _, short = problem.collate([rows[0], rows[2]], [0, 0], training=True)
    _, long = problem.collate([rows[1], rows[3]], [1, 1], training=True)
    no, yes = (
        len(problem.tokenizer(" " + t)["input_ids"]) + 1 for t in stream.tasks[0].label_names
    )
    assert (problem.loss_terms(short), problem.loss_terms(long)) == (2 * no, 2 * yes)
    assert yes >= 4 * no  # so a plain mean of the two micro-batch means would be far off


def test_a_gradient_above_the_norm_is_clipped_at_the_accumulated_step() -> None:
    """transformers' Trainer clips once per optimizer step, after accumulation
    (trainer.py: clip_grad_norm_(model.parameters(), args.max_grad_norm) before
    optimizer.step()); a step whose norm is above the limit is counted as clipped."""
    recorder = Recorder()
    strategy = make_strategy(tiny_llama_free_backbone(), make_toy_stream(tasks=1),
                             plugins=[recorder], batch_size=16, grad_accumulation=2,
                             max_grad_norm=1e-4)  # fmt: skip
    run_stream(strategy)
    record = strategy.training_records[0]
    assert record["optimizer_steps"] == 2 == len(recorder.norms)  # 3 micro-batches -> 2 steps
    for before, after in recorder.norms:
        assert before > 1e-4 and after == pytest.approx(1e-4, rel=1e-3)
    assert record["clipped_steps"] == 2
    loose = make_strategy(tiny_llama_free_backbone(), make_toy_stream(tasks=1),
                          max_grad_norm=1e6)  # fmt: skip
    run_stream(loose)
    assert loose.training_records[0]["clipped_steps"] == 0


def test_lora_dropout_is_on_in_training_and_off_in_evaluation() -> None:
    """--lora-dropout is PEFT's lora_dropout (an nn.Dropout on the adapter's input): two
    training forwards differ, evaluation forwards do not."""
    from cl_lora import inits
    from cl_lora.backbones import ContinualClassifier
    from cl_lora.config import RunConfig
    from cl_lora.lora import LoRASettings, attach_lora, lora_layers
    from cl_lora.method import adapters

    backbone = tiny_llama_free_backbone()
    _, settings = adapters(RunConfig(lora_dropout=0.5, rank=2), backbone)
    assert settings == LoRASettings(rank=2, alpha=16.0, dropout=0.5)
    model = ContinualClassifier(backbone, shared_head=False)
    model.add_head(0, 2)
    attach_lora(model, settings, backbone.target_modules, inits.get("pissa"), {}, {},
                torch.Generator().manual_seed(0))  # fmt: skip
    assert next(iter(lora_layers(model.encoder).values())).lora_dropout["default"].p == 0.5
    inputs = backbone.collate([{"text": "a short text"}, {"text": "another one"}])
    task = torch.zeros(2, dtype=torch.long)
    model.train()
    assert not torch.allclose(model(inputs, task), model(inputs, task))
    model.eval()
    assert torch.equal(model(inputs, task), model(inputs, task))


def test_prompt_keep_start_keeps_the_first_tokens() -> None:
    """O-LoRA's collator (src/uie_collator.py lines 92-97 and 146-150) keeps the first
    max_source_length tokens of a long input; ``prompt_keep="start"`` does the same through the
    tokenizer's own right-side truncation, in training and evaluation."""
    stream = toy_text_to_text_stream(tasks=1)
    problem = build_problem(stream, tiny_llama(), max_length=64, prompt_keep="start")
    prompt = "Question: " + " ".join(f"w{i}" for i in range(300)) + "\nAnswer:"
    full = problem.tokenizer(prompt)["input_ids"]
    assert problem.prompt_ids(prompt) == full[: problem.prompt_budget]
    inputs, _ = problem.collate([{"prompt": prompt, "target": "yes"}], [1], training=False)
    assert inputs["input_ids"][0].tolist() == full[: problem.prompt_budget]
    ends = build_problem(stream, tiny_llama(), max_length=64)  # the default keeps the cue
    assert ends.prompt_ids(prompt)[-3:] == full[-3:] != full[: ends.prompt_budget][-3:]


def test_max_new_tokens_sets_the_generation_length() -> None:
    stream = toy_text_to_text_stream(tasks=1)
    assert build_problem(stream, tiny_llama(), 64, max_new_tokens=50).max_new_tokens == [50]
    assert build_problem(stream, tiny_llama(), 64).max_new_tokens == [2]  # "yes"/"no" + eos
    with pytest.raises(BadInputError, match="language model"):
        build_problem(make_toy_stream(tasks=1), tiny_llama_free_backbone(), 64, "start")


def test_per_task_settings_apply_to_their_task_only() -> None:
    """--per-task 2:epochs=2 --per-task 2:lambda_orth=7 (long.sh changes O-LoRA's lambdas and
    MNLI's epochs per task): task 2 trains with them, tasks 1 and 3 with the run's values."""
    recorder = Recorder()
    strategy = make_strategy(
        tiny_llama_free_backbone(), make_toy_stream(tasks=3), baseline="o-lora",
        plugins=[recorder], per_task={"2": {"epochs": 2, "lambda_orth": 7.0},
                                      "has-question": {"lr": 1e-3}},
    )  # fmt: skip
    run_stream(strategy)
    assert recorder.tasks == [
        {"epochs": 1, "lr": 1e-2, "lambda_orth": 0.5, "lambda_l2": 0.0},
        {"epochs": 2, "lr": 1e-2, "lambda_orth": 7.0, "lambda_l2": 0.0},
        {"epochs": 1, "lr": 1e-3, "lambda_orth": 0.5, "lambda_l2": 0.0},
    ]
    steps = [strategy.training_records[i]["optimizer_steps"] for i in range(3)]
    assert steps == [3, 6, 3]
    assert strategy.training_records[2]["lr"] == 1e-3


def test_bad_per_task_settings_are_one_line() -> None:
    from cl_lora.config import RunConfig
    from cl_lora.method import check_per_task, resolve

    with pytest.raises(BadInputError, match="a baseline's argument needs its --baseline"):
        resolve(RunConfig(per_task={"1": {"lambda_orth": 1}}))
    with pytest.raises(BadInputError, match="does not take lamda_1"):
        resolve(RunConfig(baseline="o-lora", per_task={"1": {"lamda_1": 1}}))
    with pytest.raises(BadInputError, match="expected an integer"):
        RunConfig(per_task={"1": {"epochs": "two"}})
    config = resolve(RunConfig(per_task={"9": {"epochs": 2}})).config
    with pytest.raises(BadInputError, match="position from 1 to 3"):
        check_per_task(config, make_toy_stream(tasks=3))
    with pytest.raises(BadInputError, match="did you mean 'has-good'"):
        check_per_task(resolve(RunConfig(per_task={"has-god": {"epochs": 2}})).config,
                       make_toy_stream(tasks=3))  # fmt: skip
    with pytest.raises(BadInputError, match="not a multiple of --grad-accumulation"):
        RunConfig(batch_size=10, grad_accumulation=3)


def test_a_baselines_own_rate_survives_the_per_task_settings() -> None:
    """seq-ft trains the encoder at its encoder_lr (not the adapter's --lr): the per-task
    defaults keep the rate the baseline set, for every task."""
    recorder = Recorder()
    strategy = make_strategy(tiny_llama_free_backbone(), make_toy_stream(tasks=2),
                             baseline="seq-ft", baseline_args={"encoder_lr": 1e-3},
                             plugins=[recorder])  # fmt: skip
    run_stream(strategy)
    assert [task["lr"] for task in recorder.tasks] == [1e-3, 1e-3]
    assert strategy.training_records[1]["lr"] == 1e-3


def test_the_warm_up_of_lora_init_steps_as_training_does() -> None:
    """LoRA-Init/TSD's warm-up takes the recipe's steps: two accumulated micro-batches of 4
    give the update of one batch of 8 (weighted by answer tokens); clipping applies."""
    from cl_lora.calibration.warmup import WarmupRecipe, warmup_deltas
    from cl_lora.lora import LoRASettings

    stream = uneven_answers_stream()
    rows = [stream.tasks[0].train[i] for i in (0, 2, 4, 1, 3, 5, 7, 6)]  # 3 "no", then 3 "yes"

    def deltas(recipe: WarmupRecipe, halves: bool) -> dict:
        backbone = tiny_llama()
        problem = build_problem(stream, backbone, max_length=64)
        model = problem.build_model()
        parts = [rows[:4], rows[4:]] if halves else [rows]
        batches = [problem.collate(part, None, training=True) for part in parts]
        recipe = WarmupRecipe(recipe.grad_accumulation, recipe.max_grad_norm, problem.loss_terms)
        return warmup_deltas(
            model, model.head_of(0), lambda m, x, y: problem.batch_loss(m, x, y, 0),
            LoRASettings(rank=2, alpha=4.0), backbone.target_modules, batches, 3, 1e-3,
            torch.Generator().manual_seed(0), recipe,
        )  # fmt: skip

    first_grads: list[list[torch.Tensor]] = []

    def record(optimizer, args, kwargs) -> None:  # the gradient each warm-up step applies
        grads = [
            p.grad.clone()
            for g in optimizer.param_groups
            for p in g["params"]
            if p.grad is not None
        ]
        first_grads.append(grads)

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handle = register_optimizer_step_pre_hook(record)
    try:
        whole = deltas(WarmupRecipe(), halves=False)
        accumulated = deltas(WarmupRecipe(grad_accumulation=2), halves=True)
    finally:
        handle.remove()
    assert len(first_grads) == 6  # 3 steps each
    for left, right in zip(first_grads[3], first_grads[0], strict=True):
        torch.testing.assert_close(left, right, rtol=1e-4, atol=1e-8)
    for name, (left, right) in whole.items():
        torch.testing.assert_close(accumulated[name][0] @ accumulated[name][1], left @ right,
                                   rtol=1e-3, atol=1e-7)  # fmt: skip
    clipped = deltas(WarmupRecipe(max_grad_norm=1e-12), halves=False)
    size = sum(float((a @ b).norm()) for a, b in whole.values())
    assert sum(float((a @ b).norm()) for a, b in clipped.values()) < 0.1 * size


def test_loss_averaged_over_examples_as_o_loras_llama_runs() -> None:
    """O-LoRA's LLaMA scripts (one example per device, 8 accumulated, transformers 4.28) give
    each example's mean answer-token loss (src/model/llama.py line 101: loss.sum() /
    loss_mask.sum() over one example) the same weight; --loss-average examples does that, and
    accumulation then weighs micro-batches by their examples."""
    stream = uneven_answers_stream()
    problem = build_problem(stream, tiny_llama(), 64, loss_average="examples")
    rows = [stream.tasks[0].train[i] for i in range(4)]
    inputs, targets = problem.collate(rows, [r["label"] for r in rows], training=True)
    model = problem.build_model()
    output = problem.forward(model, inputs, torch.zeros(4, dtype=torch.long))
    singles = []
    for i in range(4):
        one_inputs, one_targets = problem.collate([rows[i]], [0], training=True)
        tokens = build_problem(stream, problem.backbone, 64)  # the token mean of one example
        one = tokens.forward(model, one_inputs, torch.zeros(1, dtype=torch.long))
        singles.append(tokens.loss(one, one_targets))
    torch.testing.assert_close(problem.loss(output, targets), torch.stack(singles).mean())
    assert problem.loss_terms(targets) == 4
    token_mean = build_problem(stream, problem.backbone, 64).loss(output, targets)
    assert not torch.allclose(token_mean, problem.loss(output, targets))  # uneven answers
