"""The text-to-text problem on a tiny random Llama: batching, the masked loss, prediction by
generation, every init's invariant, and every baseline and plugin on a short stream."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from avalanche.core import SupervisedPlugin
from conftest import make_strategy
from llm_fixtures import (
    PluginObserver,
    check_ewc_pulls_towards_the_anchor,
    check_gold_loglik,
    check_lwf_distils,
    observed_run,
    tiny_llama,
    toy_text_to_text_stream,
)

from cl_lora import inits
from cl_lora.errors import BadInputError
from cl_lora.lora import ADAPTER, LoRASettings, attach_lora, lora_layers
from cl_lora.problems import TextToText, build_problem
from cl_lora.problems.text_to_text import IGNORE, PROMPT_TAIL
from cl_lora.strategy import run_stream

ROWS = [
    {"prompt": "Does the text mention good? Choose one of: no, yes\nText: good\nAnswer:",
     "target": "yes"},
    {"prompt": "Is it?\nAnswer:", "target": "no"},
]  # fmt: skip


@pytest.fixture(scope="module")
def stream():
    return toy_text_to_text_stream()


@pytest.fixture
def problem(stream) -> TextToText:
    return build_problem(stream, tiny_llama(), max_length=64)


def test_training_batches_mask_the_prompt_and_end_with_eos(problem) -> None:
    inputs, targets = problem.collate(ROWS, [1, 0], training=True)
    tokenizer = problem.tokenizer
    for row, ids, mask, labels in zip(
        ROWS, inputs["input_ids"], inputs["attention_mask"], targets, strict=True
    ):
        prompt = tokenizer(row["prompt"])["input_ids"]
        length = int(mask.sum())
        assert mask[:length].all() and not mask[length:].any()  # right padding
        assert ids[: len(prompt)].tolist() == prompt
        assert (labels[: len(prompt)] == IGNORE).all() and (labels[length:] == IGNORE).all()
        answer = labels[len(prompt) : length].tolist()
        assert answer == ids[len(prompt) : length].tolist()
        assert answer[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(answer[:-1]) == " " + row["target"]


def test_evaluation_batches_are_left_padded_prompts_with_label_ids(problem) -> None:
    inputs, targets = problem.collate(ROWS, [1, 0], training=False)
    mask = inputs["attention_mask"]
    assert mask[:, -1].all() and not mask[1, 0]  # the shorter prompt is padded on the left
    assert targets.tolist() == [1, 0]


def test_long_prompts_keep_their_start_and_their_answer_cue(stream) -> None:
    with pytest.raises(BadInputError, match="use --max-length"):
        build_problem(stream, tiny_llama(), max_length=40)  # no room left for a prompt
    problem = build_problem(stream, tiny_llama(), max_length=64)
    prompt = "Question: " + "word " * 200 + "\nAnswer:"
    ids = problem.prompt_ids(prompt)
    full = problem.tokenizer(prompt)["input_ids"]
    assert len(ids) == problem.prompt_budget
    assert ids[:4] == full[:4] and ids[-PROMPT_TAIL:] == full[-PROMPT_TAIL:]


def test_loss_is_the_cross_entropy_of_the_answer_tokens_only(problem) -> None:
    inputs, targets = problem.collate(ROWS, [1, 0], training=True)
    model = problem.build_model().eval()
    logits = model(inputs)
    expected = []
    for row_logits, row_targets in zip(logits, targets, strict=True):
        for position in range(1, len(row_targets)):
            if row_targets[position] != IGNORE:
                log_probs = torch.log_softmax(row_logits[position - 1], dim=-1)
                expected.append(-log_probs[row_targets[position]])
    torch.testing.assert_close(problem.loss(logits, targets), torch.stack(expected).mean())


def test_the_knowledge_probes_gold_loglik_is_the_answers_mean_log_probability(stream) -> None:
    """NQ-open's first five probe questions in batches of two (padded), against
    :func:`gold_loglik_by_hand`'s one-question-at-a-time computation."""
    check_gold_loglik(tiny_llama(), stream)


def test_generations_map_to_label_ids_after_normalization(problem, monkeypatch) -> None:
    monkeypatch.setattr(problem, "generate", lambda *args: ["Yes.", "the no", "maybe"])
    predicted = problem.predict(None, {}, torch.tensor([0, 0, 0]))
    assert predicted.tolist() == [1, 0, -1]


def test_generate_is_greedy_and_stops_at_the_budget(problem) -> None:
    inputs, _ = problem.collate(ROWS, None, training=False)
    model = problem.build_model().eval()
    first = problem.generate(model, inputs, 3)
    assert first == problem.generate(model, inputs, 3) and len(first) == 2
    budget = len(problem.tokenizer(" " + first[0], add_special_tokens=False)["input_ids"])
    assert budget <= 3 + 1  # decoding may merge tokens; never more than asked for


@pytest.mark.parametrize("name", inits.available())
def test_every_init_keeps_the_language_models_outputs(stream, name) -> None:
    strategy = make_strategy(tiny_llama(), stream, init=name, init_args=_fast(name))
    model = strategy.model
    model.add_head(0)
    inputs, _ = strategy.problem.collate([dict(r) for r in ROWS], None, training=True)
    before = model.eval()(inputs)
    generator = torch.Generator().manual_seed(0)
    strategy.calibrator.init_args = _fast(name)
    stats = strategy.calibrator.collect(model, 0, generator)
    attach_lora(model, LoRASettings(rank=2, alpha=4), strategy.target_modules,
                inits.get(name), _fast(name), stats, generator)  # fmt: skip
    assert len(lora_layers(model.encoder)) == 2 * 7
    torch.testing.assert_close(model.eval()(inputs), before, rtol=1e-4, atol=1e-4)


def _fast(name: str) -> dict:
    return {"warmup_steps": 2} if "warmup_steps" in inits.get(name).arguments else {}


class TaskEnds(SupervisedPlugin):
    """The first adapted layer's A at each task's start and end, and its frozen weight."""

    def __init__(self) -> None:
        super().__init__()
        self.starts, self.ends, self.bases = [], [], []

    @staticmethod
    def _layer(strategy):
        layers = lora_layers(strategy.model.encoder)
        return next(iter(layers.values())) if layers else None

    def before_training_epoch(self, strategy, **kwargs) -> None:
        if strategy.clock.train_exp_epochs == 0 and (layer := self._layer(strategy)):
            self.starts.append(layer.lora_A[ADAPTER].weight.detach().clone())

    def after_training_exp(self, strategy, **kwargs) -> None:
        if layer := self._layer(strategy):
            self.ends.append(layer.lora_A[ADAPTER].weight.detach().clone())
            self.bases.append(layer.base_layer.weight.detach().clone())


@pytest.mark.parametrize("baseline", ["seq-lora", "o-lora", "inflora", "joint", "seq-ft"])
def test_baselines_do_what_defines_them_on_a_language_model(stream, baseline) -> None:
    """Each baseline's defining behaviour on the causal-LM path (the encoder-path tests in
    tests/test_baselines.py check the same on the tiny BERT)."""
    strategy = make_strategy(tiny_llama(), stream, baseline=baseline)
    ends = TaskEnds()
    strategy.plugins.insert(0, ends)
    pretrained = copy.deepcopy(strategy.model.encoder.state_dict())
    outcome = run_stream(strategy)
    assert np.isfinite(outcome.matrix[-1]).all()  # every task scored after the last one
    if baseline == "seq-lora":  # one adapter through the stream, never merged or re-drawn
        assert torch.equal(ends.starts[1], ends.ends[0])
        assert not torch.equal(ends.ends[1], ends.ends[0])
        assert torch.equal(ends.bases[0], ends.bases[1])
    elif baseline == "o-lora":  # the finished tasks' A kept (taken at each task's start)
        rank = strategy.lora.rank
        assert {a.shape[0] for a in strategy.earlier_A.values()} == {rank * (len(stream.tasks) - 1)}
        kept = [a.to(ends.ends[0].device) for a in strategy.earlier_A.values()]
        assert any(torch.equal(a, ends.ends[0]) for a in kept)  # task 1's trained A
    elif baseline == "inflora":  # a subspace of the finished tasks' inputs kept per input
        assert strategy.basis and all(b.shape[1] > 0 for b in strategy.basis.values())
    elif baseline == "joint":  # one training phase on the union, scored after it only
        assert np.isnan(outcome.matrix[0]).all() and outcome.trainable_params[0] == 0
    else:  # seq-ft: every weight trains, no adapter
        after = strategy.model.encoder.state_dict()
        assert not lora_layers(strategy.model.encoder)
        changed = [k for k in pretrained if not torch.equal(pretrained[k], after[k])]
        assert len(changed) == len(pretrained), set(pretrained) - set(changed)


def test_replay_batches_hold_earlier_tasks_examples_on_a_language_model(stream) -> None:
    """Every step of the second task trains on examples of the first task too, each a real
    training example of it (prompt and answer), routed with its own task id."""
    from cl_lora.plugins import PLUGINS

    observer = PluginObserver()
    observed_run(tiny_llama, stream, [PLUGINS.get("replay").build({"mem_size": 8})], observer)
    examples = [{f"{row['prompt']} {row['target']}" for row in task.train} for task in stream.tasks]
    assert all(set(tasks) == {0} for tasks, _ in observer.batches[0])
    replayed = []
    for tasks, texts in observer.batches[1]:
        assert set(tasks) == {0, 1}  # each step: the task's batch plus one from the memory
        assert all(text in examples[task] for task, text in zip(tasks, texts, strict=True))
        replayed += [text for task, text in zip(tasks, texts, strict=True) if task == 0]
    assert len(set(replayed)) == 8  # the whole memory, and nothing else, comes back


def test_ewc_pulls_a_language_model_towards_the_anchor(stream) -> None:
    check_ewc_pulls_towards_the_anchor(tiny_llama, stream)


def test_lwf_distils_a_language_models_next_tokens(stream) -> None:
    check_lwf_distils(tiny_llama, stream)


def test_a_language_model_run_end_to_end(tmp_path, capsys) -> None:
    """``python -m cl_lora.run --stream offline-instruct`` on a tiny Llama folder: every task
    trained and scored, the NQ-open curve (exact match and log-likelihood) before and after
    each task, and what generation did, in result.json."""
    import json

    from llm_fixtures import tiny_llama_dir

    from cl_lora.run import main

    argv = ["--stream", "offline-instruct", "--backbone", tiny_llama_dir(tmp_path),
            "--init", "lora-null", "--max-train-per-task", "4", "--max-test-per-task", "4",
            "--calib-size", "8", "--epochs", "1", "--quiet",
            "--output-dir", str(tmp_path / "runs")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "retention" in out and "gold log-likelihood" in out
    result = json.loads(next((tmp_path / "runs").glob("*/result.json")).read_text())
    assert result["problem"]["kind"] == "text-to-text"
    assert result["backbone"]["family"] == "causal-lm"
    assert set(result["problem"]["generation"]["max_new_tokens"]) == {
        task["name"] for task in result["tasks"]
    }
    assert result["tasks"][1]["metric"] == "exact_match"
    matrix = result["matrix"]
    assert all(matrix[i][j] is not None for i in range(5) for j in range(i + 1))
    retention = result["retention"]
    assert retention["probe"] == "nq-open" and len(retention["curve"]) == 6
    assert len(retention["gold_loglik"]["curve"]) == 6
    assert all(value < 0 for value in retention["gold_loglik"]["curve"])
    assert result["init"]["calibration"]["per_task"][0]["input_cov_examples"] == {"probe": 8}
    assert result["config"]["max_length"] == 96  # the stream's recipe
    from cl_lora.leaderboard.collect import collect_runs

    runs = collect_runs(tmp_path / "runs")
    assert not runs.skipped and list(runs.table["method"]) == ["lora-null"]
    assert runs.table["retention_drop"][0] == retention["drop"]


def test_frozen_refuses_a_language_model_in_one_line(tmp_path, capsys) -> None:
    from llm_fixtures import tiny_llama_dir

    from cl_lora.run import main

    argv = ["--stream", "offline-instruct", "--baseline", "frozen", "--backbone",
            tiny_llama_dir(tmp_path), "--output-dir", str(tmp_path / "runs")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no task heads" in err
    assert not list((tmp_path / "runs").glob("*/result.json"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--knowledge", "trivia"], "unknown knowledge probe 'trivia'"),
        (["--knowledge", "lm-eval:nq_open", "--stream", "offline-text"], "probes a language"),
        (["--knowledge", "lm-eval:nq_open"], "lm-eval"),  # not installed, or no Hub here
        (["--backbone", "all-minilm-l6-v2"], "cannot learn a text-to-text stream"),
        (["--stream", "offline-text", "--backbone", "smollm2-135m"], "cannot learn a text"),
    ],
)
def test_language_model_bad_input_is_one_line(argv, message, tmp_path, capsys) -> None:
    from cl_lora.run import main

    argv = ["--stream", "offline-instruct", *argv] if "--stream" not in argv else argv
    assert main([*argv, "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err
    assert not list(tmp_path.glob("*/result.json"))


def test_a_language_model_run_resumes_to_the_same_weights_and_knowledge_curve(tmp_path) -> None:
    """Stopped after its first task and resumed in a fresh strategy (with another global RNG
    state), a causal-LM run ends with the weights and the NQ-open log-likelihood curve of an
    unbroken one (a random tiny model scores 0 on every task, so the matrix alone would not
    tell)."""
    from cl_lora.plugins import PLUGINS
    from cl_lora.strategy.retention import knowledge_probe_for

    stream = toy_text_to_text_stream(tasks=3)

    def run(checkpoint=None, stop=None, resume=False):
        strategy = make_strategy(tiny_llama(), stream, plugins=[PLUGINS.get("lwf").build({})])
        probe = knowledge_probe_for(stream, strategy.problem, batch_size=4, max_test=4)
        outcome = run_stream(strategy, checkpoint, stop, resume, probe)
        weights = {k: v.clone() for k, v in strategy.model.encoder.state_dict().items()}
        return outcome, probe, weights

    class Interrupted(Exception):
        pass

    def stop_after_first(task: int, _outcome) -> None:
        if task == 0:
            raise Interrupted

    torch.manual_seed(0)
    _, unbroken_probe, unbroken_weights = run()
    checkpoint = tmp_path / "checkpoint.safetensors"
    torch.manual_seed(0)
    with pytest.raises(Interrupted):
        run(checkpoint, stop_after_first)
    torch.manual_seed(123)
    outcome, probe, weights = run(checkpoint, resume=True)
    assert outcome.resumed_after == 0
    assert len(probe.gold_loglik) == 4 and probe.gold_loglik == unbroken_probe.gold_loglik
    assert weights.keys() == unbroken_weights.keys()
    assert all(torch.equal(weights[k], unbroken_weights[k]) for k in weights)


def test_every_init_keeps_the_real_smollm2s_outputs() -> None:
    """Once on real weights (SmolLM2-135M, the first decoder block's seven projections, with
    the 4-bit rounding noise of its GGUF): every init leaves the next-token logits unchanged."""
    from cl_lora import streams
    from cl_lora.backbones.causal_lm import load_causal_lm

    backbone = load_causal_lm()
    layer = [name for name in backbone.target_modules if name.startswith("model.layers.0.")]
    stream = streams.build(
        "offline-instruct", streams.StreamOptions(max_train_per_task=4, max_test_per_task=2)
    )
    inputs, _ = build_problem(stream, backbone, 96).collate(ROWS, None, training=True)
    before = backbone.encoder.eval()(**inputs).logits
    for name in inits.available():
        strategy = make_strategy(backbone, stream, init=name, init_args=_fast(name))
        strategy.target_modules = strategy.calibrator.target_modules = layer
        strategy.calibrator.size = 4
        model = strategy.model
        model.add_head(0)
        generator = torch.Generator().manual_seed(0)
        stats = strategy.calibrator.collect(model, 0, generator)
        attach_lora(model, LoRASettings(rank=8, alpha=16), layer, inits.get(name), _fast(name),
                    stats, generator)  # fmt: skip
        after = model.eval()(inputs)
        scale = before.abs().max()
        assert (after - before).abs().max() / scale < 1e-3, name
        model.encoder = model.encoder.merge_and_unload()  # W again (residual + s B A)
