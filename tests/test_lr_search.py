"""--lr-search: the default grid, the validation split, the choice, the grid's growth past an
edge, its cache, and a run that trains at, records and shows the chosen rate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import make_toy_stream

from cl_lora.config import DEFAULT_LR_GRID, RunConfig
from cl_lora.errors import BadInputError
from cl_lora.lr_search import (
    LR_CEILING,
    LR_FLOOR,
    SEARCH_FILE,
    search_learning_rate,
    search_stream,
    validation_split,
)
from cl_lora.results import trained_lr
from cl_lora.sweep.grid import parse_overrides


def parsed(*argv: str) -> RunConfig:
    """The config ``python -m cl_lora.run ARGV`` would run."""
    from cl_lora.run import build_parser, config_from_command_line

    return config_from_command_line(build_parser().parse_args(list(argv)))


def test_the_default_grid_is_seven_rates_half_a_decade_apart_over_three_decades() -> None:
    assert DEFAULT_LR_GRID == (1e-5, 3.16e-5, 1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2)
    steps = np.diff(np.log10(DEFAULT_LR_GRID))
    assert np.allclose(steps, 0.5, atol=0.002)  # log-spaced, 10^0.5 apart (3 digits kept)
    assert math.log10(max(DEFAULT_LR_GRID) / min(DEFAULT_LR_GRID)) >= 2  # at least two decades


def test_a_bare_lr_search_searches_the_grid_and_a_list_stays_a_list(tmp_path: Path) -> None:
    """``--lr-search`` alone is the default grid with 2 rates of growth; followed by another
    flag it is still alone; a list is that list, not grown unless --lr-extend says so; a
    recipe's lr_grid replaces the default grid; a sweep writes the bare flag as
    ``lr_search=default``; the settings leave run ids of earlier configs as they were."""
    bare = parsed("--lr-search", "--epochs", "1")
    assert bare.lr_search == DEFAULT_LR_GRID and bare.lr_extend == 2 and bare.epochs == 1
    assert parsed("--lr-search").lr_search == DEFAULT_LR_GRID
    given = parsed("--lr-search", "1e-4,1e-3")
    assert given.lr_search == (1e-4, 1e-3) and given.lr_extend is None
    assert parsed("--lr-search", "1e-4,1e-3", "--lr-extend", "3").lr_extend == 3
    assert parsed("--lr-search", "--lr-extend", "0").lr_extend == 0
    assert parsed("--lr-search", "--lr-grid", "1e-4,3e-4").lr_search == (1e-4, 3e-4)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("lr_grid: [2.0e-4, 2.0e-3]\n")
    assert parsed("--config", str(recipe), "--lr-search").lr_search == (2e-4, 2e-3)
    assert parsed("--config", str(recipe)).lr_search is None  # the grid alone searches nothing
    recipe.write_text("lr_search: default\n")
    assert parsed("--config", str(recipe)).lr_search == DEFAULT_LR_GRID
    overrides = parse_overrides(["lr_search=default"])
    assert RunConfig(**overrides).lr_search == DEFAULT_LR_GRID
    assert RunConfig.from_dict(bare.to_dict()) == bare  # result.json's config reads back
    for name in ("lr_grid", "lr_extend"):
        assert name not in RunConfig().identity() and name not in given.identity()
    assert bare.identity()["lr_extend"] == 2 and "lr_grid" not in bare.identity()


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


def rising(lr: float, search) -> float:
    """A validation score that is higher the higher the rate."""
    return math.log10(lr)


def test_a_best_rate_at_the_top_grows_the_grid_up_to_the_bound(tmp_path: Path) -> None:
    """The best is the highest rate: the grid gains 10^0.5 steps upward while that stays so,
    until the next one would pass 1e-1 (well before the 5 allowed), and the record says the
    bound stopped it, with the search's cost."""
    stream = make_toy_stream(tasks=2)
    result = search_learning_rate([1e-3, 3.16e-3, 1e-2], stream, rising, extend=5)
    assert result.candidates == (1e-3, 3.16e-3, 1e-2, 3.16e-2, 1e-1)
    assert result.chosen == LR_CEILING and max(result.candidates) <= LR_CEILING
    record = result.record()
    assert record["grid"] == [1e-3, 3.16e-3, 1e-2] and record["extended"] == [3.16e-2, 1e-1]
    assert (record["edge"], record["edge_limit"]) == ("high", "bound")
    assert record["cost"]["candidates"] == 5 and record["cost"]["runs"] == 5
    assert len(record["cost"]["candidate_seconds"]) == 5
    assert record["cost"]["seconds"] == pytest.approx(sum(record["cost"]["candidate_seconds"]))
    assert "bound 0.1 is reached" in result.edge_note()


def test_a_best_rate_at_the_bottom_grows_the_grid_down_by_at_most_lr_extend() -> None:
    stream = make_toy_stream(tasks=2)

    def falling(lr: float, search) -> float:
        return -math.log10(lr)

    result = search_learning_rate([1e-4, 1e-3], stream, falling, extend=2)
    assert result.candidates == (1e-4, 1e-3, 3.16e-5, 1e-5)  # 2 added, the bound still far
    assert (result.chosen, result.edge, result.edge_limit) == (1e-5, "low", "extend")
    alone = search_learning_rate([1e-4, 1e-3], stream, falling)  # a list: no growth
    assert alone.candidates == (1e-4, 1e-3) and alone.edge_limit == "extend"
    assert "not extended" in alone.edge_note()
    floor = search_learning_rate([1e-6, 1e-5], stream, falling, extend=2)
    assert floor.candidates == (1e-6, 1e-5) and floor.chosen == LR_FLOOR
    assert floor.edge_limit == "bound"


def test_growth_stops_once_the_best_rate_is_inside() -> None:
    """Peaked at 3.16e-5: the first rate added below the grid becomes the best, one more
    below it scores worse, and the search stops with the best rate bracketed (no flag)."""
    stream = make_toy_stream(tasks=2)

    def peaked(lr: float, search) -> float:
        return -abs(math.log10(lr) - math.log10(3.16e-5))

    result = search_learning_rate([1e-4, 1e-3], stream, peaked, extend=3)
    assert result.candidates == (1e-4, 1e-3, 3.16e-5, 1e-5)
    assert result.chosen == 3.16e-5 and result.edge is None and result.edge_limit is None
    inside = search_learning_rate([1e-5, 3.16e-5, 1e-4], stream, peaked, extend=2)
    assert inside.candidates == (1e-5, 3.16e-5, 1e-4) and inside.edge_note() is None


def test_a_stopped_search_resumes_without_training_a_candidate_twice(tmp_path: Path) -> None:
    stream = make_toy_stream(tasks=2)
    calls: list[float] = []

    def dies_at_the_third(lr: float, search) -> float:
        calls.append(lr)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return rising(lr, search)

    cache = tmp_path / SEARCH_FILE
    grid = [1e-4, 3.16e-4, 1e-3]
    with pytest.raises(RuntimeError):
        search_learning_rate(grid, stream, dies_at_the_third, cache, extend=1)
    assert calls == [1e-4, 3.16e-4, 1e-3]
    result = search_learning_rate(grid, stream, dies_at_the_third, cache, extend=1)
    assert calls[3:] == [1e-3, 3.16e-3]  # the two scored ones are read back
    assert result.candidates == (1e-4, 3.16e-4, 1e-3, 3.16e-3) and result.chosen == 3.16e-3
    again = search_learning_rate(grid, stream, dies_at_the_third, cache, extend=1)
    assert len(calls) == 5 and again == result  # a finished search: nothing trains
    search_learning_rate(grid, stream, rising, cache, extend=0)  # another extension: anew
    assert json.loads(cache.read_text())["extend"] == 0


def test_a_nan_score_is_kept_as_null_and_read_back_as_nan(tmp_path: Path) -> None:
    stream = make_toy_stream(tasks=2)
    cache = tmp_path / SEARCH_FILE
    scores = {1e-4: 0.5, 1e-3: math.nan}
    first = search_learning_rate(list(scores), stream, lambda lr, search: scores[lr], cache)
    assert json.loads(cache.read_text())["validation_scores"] == [0.5, None]

    def never(lr: float, search) -> float:
        raise AssertionError("a cached candidate trained again")

    again = search_learning_rate(list(scores), stream, never, cache)
    assert again.chosen == first.chosen == 1e-4 and math.isnan(again.scores[1])
    assert again.edge == "low"  # the NaN rate is tried but no best


def test_the_trained_rate_is_lr_trained_else_the_search_s_choice_else_config_lr() -> None:
    config = {"lr": 5e-4}
    assert trained_lr({"config": config, "lr_trained": 3e-3, "lr_search": {"chosen": 1e-4}}) == 3e-3
    assert trained_lr({"config": config, "lr_search": {"chosen": 1e-4}}) == 1e-4  # older files
    assert trained_lr({"config": config}) == 5e-4


def test_bad_candidates_are_one_line_errors() -> None:
    with pytest.raises(BadInputError, match="two or more positive rates"):
        RunConfig(lr_search=(1e-3,))
    with pytest.raises(BadInputError, match="--lr-grid takes two or more positive rates"):
        RunConfig(lr_search=(), lr_grid=(1e-3,))
    with pytest.raises(BadInputError, match="--lr-extend must be 0 or more"):
        RunConfig(lr_search=(1e-4, 1e-3), lr_extend=-1)
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
    assert result["lr_trained"] == 3e-3 and result["config"]["lr"] == 5e-4  # the id's default
    assert search["tasks"] == ["movie-sentiment"]
    assert search["fit_sizes"] == [4] and search["validation_sizes"] == [1]
    assert result["config"]["lr_search"] == [1e-5, 3e-3, 1e-4]
    assert len(result["backbone"]["fingerprint"]) == 16  # the weights as loaded
    assert not (run / SEARCH_FILE).exists()  # folded into result.json
    capsys.readouterr()
    assert main([*argv[:4], "--lr-search", "1e-4,fast", "--quiet"]) == 2
    assert "expected comma-separated numbers" in capsys.readouterr().err


def test_a_bare_search_grows_to_the_floor_and_every_reader_shows_the_trained_rate(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """``--lr-search`` alone on a language-model stream, with a validation score rigged to
    favour the lowest rate (no candidate trains): the default grid, then two rates down to
    the 1e-6 floor, where the search stops (5 would be allowed) and says so in result.json
    and on the summary. The stream trains at the chosen rate, ``lr_trained`` records it
    (``config.lr`` keeps the default the run id hashes), and the leaderboard's runs and
    method table show it."""
    from llm_fixtures import tiny_llama_dir

    from cl_lora import experiment
    from cl_lora.leaderboard.aggregate import aggregate
    from cl_lora.leaderboard.collect import collect_runs
    from cl_lora.leaderboard.report import method_table
    from cl_lora.run import main

    tried: list[float] = []

    def falling(method, config, family, name, search, device, lr) -> float:
        tried.append(lr)
        return -math.log10(lr)

    monkeypatch.setattr(experiment, "_validation_score", falling)
    argv = ["--stream", "offline-instruct", "--backbone", tiny_llama_dir(tmp_path),
            "--tasks", "movie-sentiment,sms-spam", "--lr-search", "--lr-extend", "5",
            "--max-train-per-task", "5", "--max-test-per-task", "4", "--epochs", "1",
            "--quiet", "--output-dir", str(tmp_path / "runs")]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    run = next((tmp_path / "runs").iterdir())
    result = json.loads((run / "result.json").read_text())
    search = result["lr_search"]
    assert tried == [*DEFAULT_LR_GRID, 3.16e-6, 1e-6]
    assert search["grid"] == list(DEFAULT_LR_GRID) and search["extend"] == 5
    assert search["extended"] == [3.16e-6, 1e-6] and search["chosen"] == 1e-6
    assert (search["edge"], search["edge_limit"]) == ("low", "bound")
    assert search["cost"]["candidates"] == 9 and search["cost"]["runs"] == 9
    assert result["lr_trained"] == 1e-6 and result["config"]["lr"] == 5e-4
    assert [task["lr"] for task in result["training"]] == [1e-6, 1e-6]
    assert "lr (trained)         1e-06  (searched: best of 7 + 2 added rates" in printed
    assert "the search's bound 1e-06 is reached" in printed
    runs = collect_runs(tmp_path / "runs").table
    assert runs["lr"].tolist() == [1e-6]
    assert method_table(aggregate(runs))["lr (trained)"].tolist() == ["1e-06"]


def test_a_rate_that_diverges_scores_nan_and_the_run_goes_on(tmp_path: Path, monkeypatch) -> None:
    """The loss turns NaN whenever the adapter trains at 1e-2 (through the real check that ends
    a run on a NaN loss): the search scores that candidate NaN (null in result.json), chooses
    among the others, and the stream trains at the choice."""
    from llm_fixtures import tiny_llama_dir

    from cl_lora.run import main
    from cl_lora.strategy import LoRAStrategy

    criterion = LoRAStrategy.criterion

    def diverges_at_1e_2(self):
        loss = criterion(self)
        return loss * float("nan") if self.lr == 1e-2 else loss

    monkeypatch.setattr(LoRAStrategy, "criterion", diverges_at_1e_2)
    argv = ["--stream", "offline-instruct", "--backbone", tiny_llama_dir(tmp_path),
            "--tasks", "movie-sentiment,sms-spam", "--lr-search", "1e-4,1e-3,1e-2",
            "--max-train-per-task", "5", "--max-test-per-task", "4", "--epochs", "1",
            "--quiet", "--output-dir", str(tmp_path / "runs")]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(next((tmp_path / "runs").rglob("result.json")).read_text())
    search = result["lr_search"]
    assert search["validation_scores"][2] is None  # NaN, written as null
    assert all(score is not None for score in search["validation_scores"][:2])
    assert search["chosen"] in (1e-4, 1e-3) and result["lr_trained"] == search["chosen"]
    assert search["edge"] != "high"  # a diverged rate is no best at the top
