"""--lr-search: the validation split, the choice, its cache, and a run that records it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_toy_stream

from cl_lora.config import RunConfig
from cl_lora.errors import BadInputError
from cl_lora.lr_search import (
    SEARCH_FILE,
    search_learning_rate,
    search_stream,
    validation_split,
)
from cl_lora.sweep.grid import parse_overrides


def test_validation_is_a_balanced_fifth_of_the_training_data_never_the_test_set() -> None:
    task = make_toy_stream(tasks=1).tasks[0]
    split = validation_split(task)
    train_texts, test_texts = set(task.train["text"]), set(task.test["text"])
    fit, held = list(split.train["text"]), list(split.test["text"])
    assert len(held) == round(0.2 * len(task.train)) and len(fit) + len(held) == len(task.train)
    assert not set(fit) & set(held) and set(fit) | set(held) == train_texts
    assert not set(held) & test_texts  # validation comes from training data only
    counts = np.bincount(split.test["label"], minlength=task.num_labels)
    assert counts.max() - counts.min() <= 1  # class-balanced
    assert list(validation_split(task).test["text"]) == held  # fixed split, any run seed


def test_the_search_trains_the_first_task_only() -> None:
    stream = make_toy_stream(tasks=3)
    search = search_stream(stream)
    assert [task.name for task in search.tasks] == [stream.tasks[0].name]
    assert search.shared_head == stream.shared_head and search.name.endswith(":lr-search")


def test_the_best_validation_score_wins_and_the_search_is_cached(tmp_path: Path) -> None:
    stream = make_toy_stream(tasks=2)
    scores = {1e-4: 0.5, 1e-3: 0.75, 1e-2: 0.75, 1e-1: float("nan")}
    calls = []

    def score_at(lr, search):
        calls.append(lr)
        return scores[lr]

    cache = tmp_path / SEARCH_FILE
    result = search_learning_rate(list(scores), stream, score_at, cache)
    assert result.chosen == 1e-3  # the first of the best; NaN never wins
    assert calls == list(scores)
    record = result.record()
    assert record["validation_scores"][:3] == [0.5, 0.75, 0.75]
    assert record["fit_sizes"][0] + record["validation_sizes"][0] == len(stream.tasks[0].train)
    again = search_learning_rate(list(scores), stream, score_at, cache)  # a resumed run
    assert again.chosen == 1e-3 and len(calls) == 4
    search_learning_rate([1e-4, 1e-3], stream, score_at, cache)  # other candidates: search
    assert len(calls) == 6


def test_bad_candidates_are_one_line_errors() -> None:
    with pytest.raises(BadInputError, match="two or more positive rates"):
        RunConfig(lr_search=(1e-3,))
    with pytest.raises(BadInputError, match="two or more positive rates"):
        RunConfig(lr_search=(1e-3, -1.0))
    assert parse_overrides(["lr_search=1e-4,5e-4"]) == {"lr_search": (1e-4, 5e-4)}
    with pytest.raises(BadInputError, match="expected comma-separated numbers"):
        parse_overrides(["lr_search=1e-4,fast"])


def test_a_run_with_lr_search_trains_at_the_chosen_rate(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """Every optimizer step of the run is observed (a global step hook on torch's optimizers):
    each candidate's search run trains at that candidate, and the real stream at the chosen
    one. The validation scores are rigged to choose the middle candidate, which is neither the
    first, the last, nor the default rate."""
    from llm_fixtures import tiny_llama_dir
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from cl_lora import experiment
    from cl_lora.run import main

    real_score = experiment._validation_score

    def rigged(method, config, family, name, search, device, lr):
        real_score(method, config, family, name, search, device, lr)  # trains as it would
        return 1.0 if lr == 3e-3 else 0.0

    monkeypatch.setattr(experiment, "_validation_score", rigged)
    optimizers: list = []  # held, so that no later optimizer can reuse an earlier one's id
    steps: list[list[tuple[float, float]]] = []  # per optimizer: (rate, base rate) per step

    def observe(optimizer, args, kwargs) -> None:
        if not any(optimizer is seen for seen in optimizers):
            optimizers.append(optimizer)
            steps.append([])
        index = next(i for i, seen in enumerate(optimizers) if seen is optimizer)
        adapter = optimizer.param_groups[0]  # the encoder's (adapter's) parameters
        steps[index].append((adapter["lr"], adapter["initial_lr"]))

    argv = ["--stream", "offline-instruct", "--backbone", tiny_llama_dir(tmp_path),
            "--lr-search", "1e-5,3e-3,1e-4", "--max-train-per-task", "5",
            "--max-test-per-task", "4", "--epochs", "1", "--quiet",
            "--output-dir", str(tmp_path / "runs")]  # fmt: skip
    handle = register_optimizer_step_pre_hook(observe)
    try:
        assert main(argv) == 0
    finally:
        handle.remove()
    run = next((tmp_path / "runs").iterdir())
    result = json.loads((run / "result.json").read_text())
    search = result["lr_search"]
    assert search["candidates"] == [1e-5, 3e-3, 1e-4] and search["chosen"] == 3e-3
    assert search["validation_scores"] == [0.0, 1.0, 0.0]
    # three one-task search runs, then the stream's five tasks: one optimizer per task, one
    # step each (4 or 5 examples, batch 16), the rate's warm-up peak on that step
    trained = [max(rate for rate, _ in each) for each in steps]
    assert trained == [1e-5, 3e-3, 1e-4] + [3e-3] * 5
    assert all(base == rate for each in steps for rate, base in each)
    assert [task["lr"] for task in result["training"]] == [3e-3] * 5
    assert search["tasks"] == ["movie-sentiment"]
    assert search["fit_sizes"] == [4] and search["validation_sizes"] == [1]
    assert result["config"]["lr_search"] == [1e-5, 3e-3, 1e-4]
    assert len(result["backbone"]["fingerprint"]) == 16  # the weights as loaded
    assert not (run / SEARCH_FILE).exists()  # folded into result.json
    capsys.readouterr()
    assert main([*argv[:4], "--lr-search", "1e-4,fast", "--quiet"]) == 2
    assert "expected comma-separated numbers" in capsys.readouterr().err
