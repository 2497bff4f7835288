"""Encoder-decoder language models (the seq2seq-lm family) on a tiny random T5: family choice,
LoRA targets, decoder batching, the loss against transformers' own, generation, and a run
through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from llm_fixtures import (
    check_ewc_pulls_towards_the_anchor,
    check_gold_loglik,
    check_lwf_distils,
    saved,
    tiny_llama,
    tiny_t5,
    toy_text_to_text_stream,
)

from cl_lora.backbones import family_for
from cl_lora.backbones.seq2seq_lm import is_encoder_decoder
from cl_lora.problems import Seq2SeqTextToText, build_problem
from cl_lora.problems.text_to_text import IGNORE

ROWS = [
    {"prompt": "Does the text mention good? Choose one of: no, yes\nText: good\nAnswer:",
     "target": "yes"},
    {"prompt": "Is it?\nAnswer:", "target": "no thanks"},
]  # fmt: skip


@pytest.fixture(scope="module")
def problem() -> Seq2SeqTextToText:
    built = build_problem(toy_text_to_text_stream(), tiny_t5(), max_length=64)
    assert isinstance(built, Seq2SeqTextToText)
    return built


def test_encoder_decoder_folders_belong_to_the_seq2seq_family(tmp_path: Path) -> None:
    t5 = saved(tiny_t5(), tmp_path / "t5")
    llama = saved(tiny_llama(), tmp_path / "llama")
    assert is_encoder_decoder(t5) and not is_encoder_decoder(llama)
    assert family_for(t5, "text-to-text").name == "seq2seq-lm"
    assert family_for(llama, "text-to-text").name == "causal-lm"
    assert family_for(None, "text-to-text").name == "causal-lm"  # the default stays


def test_lora_targets_t5_attention_and_feed_forward_in_encoder_and_decoder() -> None:
    targets = tiny_t5().target_modules
    suffixes = {name.split(".")[-1] for name in targets}
    assert suffixes == {"q", "k", "v", "o", "wi_0", "wi_1", "wo"}
    assert any(".EncDecAttention." in name for name in targets)  # cross-attention too
    assert len(targets) == 2 * 7 + 2 * 11  # encoder blocks: 4+3, decoder: 4+4+3
    assert not any("lm_head" in name or "shared" in name for name in targets)


def test_training_batches_feed_the_answer_to_the_decoder(problem) -> None:
    inputs, targets = problem.collate(ROWS, [1, 0], training=True)
    tokenizer = problem.tokenizer
    for row, prompt, decoder, answer in zip(
        ROWS, inputs["input_ids"], inputs["decoder_input_ids"], targets, strict=True
    ):
        kept = answer[answer != IGNORE].tolist()
        assert tokenizer.decode(kept[:-1]) == row["target"] and kept[-1] == problem.eos
        assert decoder[0] == problem.decoder_start  # shifted right behind the start token
        assert decoder[1 : len(kept)].tolist() == kept[:-1]
        assert tokenizer(row["prompt"])["input_ids"] == prompt[prompt != problem.pad].tolist()


def test_loss_equals_transformers_own_seq2seq_loss(problem) -> None:
    inputs, targets = problem.collate(ROWS, [1, 0], training=True)
    model = problem.build_model().eval()
    ours = problem.loss(model(inputs), targets)
    theirs = model.encoder(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=targets
    ).loss  # T5 shifts the labels right itself
    torch.testing.assert_close(ours, theirs)


def test_the_knowledge_probes_gold_loglik_is_the_answers_mean_log_probability() -> None:
    """NQ-open's first five probe questions in batches of two (padded), against
    :func:`gold_loglik_by_hand`'s one-question-at-a-time computation with T5's own labels."""
    check_gold_loglik(tiny_t5(), toy_text_to_text_stream())


def test_generation_returns_only_new_text_within_the_budget(problem) -> None:
    inputs, _ = problem.collate(ROWS, None, training=False)
    model = problem.build_model().eval()
    texts = problem.generate(model, inputs, 3)
    assert texts == problem.generate(model, inputs, 3) and len(texts) == 2
    for text in texts:
        assert "Answer" not in text  # the prompt is not repeated
        assert len(problem.tokenizer(text, add_special_tokens=False)["input_ids"]) <= 3 + 1
    assert problem.prompt_budget == 64  # the encoder's budget: answers do not share it


def test_a_t5_run_end_to_end(tmp_path: Path) -> None:
    """``python -m cl_lora.run --stream offline-instruct --backbone <T5 folder>``: trains and
    scores every task, with the knowledge probe, and records the seq2seq family."""
    from cl_lora.run import main

    argv = ["--stream", "offline-instruct", "--backbone", saved(tiny_t5(), tmp_path / "t5"),
            "--init", "pissa", "--max-train-per-task", "4", "--max-test-per-task", "4",
            "--epochs", "1", "--quiet", "--output-dir", str(tmp_path / "runs")]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(next((tmp_path / "runs").glob("*/result.json")).read_text())
    assert result["backbone"]["family"] == "seq2seq-lm"
    assert result["problem"]["format"].startswith("encoder: prompt; decoder: target")
    matrix = result["matrix"]
    assert all(matrix[i][j] is not None for i in range(5) for j in range(i + 1))
    assert len(result["lora"]["targets"]) == 36
    assert len(result["retention"]["gold_loglik"]["curve"]) == 6
    assert all(value < 0 for value in result["retention"]["gold_loglik"]["curve"])


def test_lwf_distils_a_t5s_decoder_tokens() -> None:
    check_lwf_distils(tiny_t5, toy_text_to_text_stream())


def test_ewc_pulls_a_t5_towards_the_anchor() -> None:
    """EWC's Fisher reads the seq2seq loss; its penalty pulls the T5 back to the anchor."""
    check_ewc_pulls_towards_the_anchor(tiny_t5, toy_text_to_text_stream())
