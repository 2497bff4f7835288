"""The text-to-text problem on a tiny random Llama: batching, the masked loss, prediction by
generation, every init's invariant, and every baseline and plugin on a short stream."""

from __future__ import annotations

import pytest
import torch
from conftest import make_strategy
from llm_fixtures import tiny_llama, toy_text_to_text_stream

from cl_lora import inits
from cl_lora.errors import BadInputError
from cl_lora.lora import LoRASettings, attach_lora, lora_layers
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


@pytest.mark.parametrize(
    ("baseline", "plugin"),
    [("seq-lora", None), ("o-lora", None), ("inflora", None), ("joint", None), ("seq-ft", None),
     (None, "replay"), (None, "ewc"), (None, "lwf")],
)  # fmt: skip
def test_baselines_and_plugins_run_on_a_language_model(stream, baseline, plugin) -> None:
    from baselines import get, get_plugin

    extra = {}
    if baseline is not None:
        entry = get(baseline)
        extra = {"strategy": entry.strategy, **entry.resolve_args({})}
    plugins = [get_plugin(plugin).build({})] if plugin else None
    strategy = make_strategy(tiny_llama(), stream, plugins=plugins, **extra)
    outcome = run_stream(strategy)
    last = outcome.matrix[-1]
    assert all(0.0 <= score <= 1.0 for score in last)  # every task scored after the last one
    assert all(torch.isfinite(p).all() for p in strategy.model.parameters())


def test_a_language_model_run_end_to_end(tmp_path, capsys) -> None:
    """``python -m cl_lora.run --stream offline-instruct`` on a tiny Llama folder: every task
    trained and scored, the NQ-open curve (exact match and log-likelihood) before and after
    each task, and what generation did, in result.json."""
    import json

    from llm_fixtures import tiny_llama_dir

    from cl_lora.run import main

    argv = ["--stream", "offline-instruct", "--backbone", tiny_llama_dir(tmp_path),
            "--init", "lora-null", "--max-train-per-task", "4", "--max-test-per-task", "4",
            "--calib-size", "8", "--epochs", "1", "--max-length", "96", "--quiet",
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


def test_frozen_refuses_a_language_model_in_one_line(tmp_path, capsys) -> None:
    from llm_fixtures import tiny_llama_dir

    from cl_lora.run import main

    argv = ["--stream", "offline-instruct", "--baseline", "frozen", "--backbone",
            tiny_llama_dir(tmp_path), "--output-dir", str(tmp_path / "runs")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no task heads" in err
    assert not list((tmp_path / "runs").glob("*/result.json"))
