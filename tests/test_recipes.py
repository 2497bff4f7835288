"""Recipe files: the built-in O-LoRA recipes against the official scripts' flags, precedence
(defaults < recipe or config file < flags), a user's file, --print-config, bad files, and a run
that records its recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cl_lora import recipes
from cl_lora.config import RunConfig
from cl_lora.errors import BadInputError
from cl_lora.experiment import resolve_config
from cl_lora.run import build_parser, config_from_command_line, main


def command_line(*argv: str) -> RunConfig:
    return config_from_command_line(build_parser().parse_args(list(argv)))


def test_o_lora_t5_matches_its_scripts() -> None:
    """cmnfriend/O-LoRA @ 07117e1, scripts/order_1.sh (lines 11-43; order_2.sh and order_3.sh
    pass the same flags): --per_device_train_batch_size 8 on CUDA_VISIBLE_DEVICES=0..7 with
    --gradient_accumulation_steps 1, --learning_rate 1e-03, --num_train_epochs 1,
    --max_source_length 512, --generation_max_length 50, --lr_scheduler_type constant,
    --warmup_steps 0, --lamda_1 0.5, --lamda_2 0; src/run_uie_lora.py line 394:
    LoraConfig(r=8 (lora_dim's default, line 116), lora_alpha=32, lora_dropout=0.1) with PEFT's
    T5 targets (q, v); transformers' max_grad_norm 1.0 and seed 42 (defaults, not overridden)."""
    config = resolve_config(command_line("--recipe", "o-lora-t5", "--order", "2"))
    assert (config.stream, config.order, config.backbone) == (
        "cl-benchmark",
        2,
        "google-t5/t5-large",
    )
    assert (config.batch_size, config.grad_accumulation) == (8 * 8, 1)
    assert (config.lr, config.lr_scheduler, config.warmup_steps, config.epochs) == (
        1e-3, "constant", 0, 1,
    )  # fmt: skip
    assert (config.max_length, config.prompt_keep, config.max_new_tokens) == (512, "start", 50)
    assert (config.rank, config.alpha, config.lora_dropout, config.targets) == (
        8, 32.0, 0.1, ("q", "v"),
    )  # fmt: skip
    assert (config.max_grad_norm, config.seed, config.per_task) == (1.0, 42, {})
    assert config.baseline is None and config.baseline_args == {}  # the method is the user's
    olora = resolve_config(command_line("--recipe", "o-lora-t5", "--baseline", "o-lora"))
    assert olora.baseline_args == {"lambda_orth": 0.5, "lambda_l2": 0.0, "penalty": "abs"}
    assert olora.recipe.startswith("o-lora-t5@sha256:")


# scripts/long.sh (order 6), its 15 invocations in order: task, --num_train_epochs,
# --lamda_1, --lamda_2 (lines 17-43, 53-79, 89-115, ..., 521-547).
LONG_SH = [
    ("yelp", 1, 0.0, 0.0), ("amazon", 1, 0.5, 0.0), ("mnli", 2, 0.5, 0.0), ("cb", 1, 0.5, 0.0),
    ("copa", 1, 0.5, 0.1), ("qqp", 1, 0.5, 0.1), ("rte", 1, 0.5, 0.3), ("imdb", 1, 0.5, 0.0),
    ("sst-2", 1, 0.5, 0.1), ("dbpedia", 1, 5.0, 0.0), ("agnews", 1, 5.0, 0.0),
    ("yahoo", 1, 5.0, 0.1), ("multirc", 1, 5.0, 0.0), ("boolqa", 1, 5.0, 0.1), ("wic", 1, 5.0, 0.3),
]  # fmt: skip


def test_o_lora_t5_long_sh_schedule_per_task() -> None:
    """--recipe o-lora-t5 --order 6 --baseline o-lora is long.sh: each task gets its own
    epochs and lambdas, at its position in order 6."""
    from cl_lora.method import resolve, task_index
    from cl_lora.streams.cl_benchmark import ORDERS

    config = resolve(
        command_line("--recipe", "o-lora-t5", "--order", "6", "--baseline", "o-lora")
    ).config
    assert config.stream == "long-15" and ORDERS[6] == tuple(t for t, *_ in LONG_SH)
    defaults = {"epochs": config.epochs, "lambda_orth": 0.5, "lambda_l2": 0.0}
    for position, (_, epochs, lambda_1, lambda_2) in enumerate(LONG_SH, start=1):
        per_task = {**defaults, **config.per_task.get(str(position), {})}
        assert (per_task["epochs"], per_task["lambda_orth"], per_task["lambda_l2"]) == (
            epochs, lambda_1, lambda_2,
        ), position  # fmt: skip
        assert task_index(str(position), ORDERS[6]) == position - 1
    without = resolve_config(command_line("--recipe", "o-lora-t5", "--order", "6"))
    assert without.per_task == {"3": {"epochs": 2}}  # no O-LoRA: no lambdas, MNLI's epochs kept
    assert resolve_config(command_line("--recipe", "o-lora-t5", "--order", "4")).per_task == {}


def test_o_lora_llama_matches_its_scripts() -> None:
    """scripts_llama/order_1.sh (lines 11-43 and 47-79): --per_device_train_batch_size 1
    --gradient_accumulation_steps 8 on 8 GPUs, --learning_rate 1e-03 for the first task and
    1e-04 for the next ones, DeepSpeed stage2_llama.config with bf16 enabled; the rest as T5's;
    src/run_uie_lora.py line 381: LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1) on PEFT's
    LLaMA targets (q_proj, v_proj)."""
    config = resolve_config(command_line("--recipe", "o-lora-llama", "--order", "3"))
    assert (config.batch_size, config.grad_accumulation) == (1 * 8 * 8, 8)
    assert config.lr == 1e-4 and config.per_task == {"1": {"lr": 1e-3}}
    assert (config.precision, config.targets, config.lora_dropout) == (
        "bf16", ("q_proj", "v_proj"), 0.1,
    )  # fmt: skip
    # requirements.txt pins transformers==4.28.0: its Trainer averages micro-batch means (one
    # example each here); src/model/llama.py line 101: loss.sum() / loss_mask.sum() per example
    assert config.loss_average == "examples"
    t5 = resolve_config(command_line("--recipe", "o-lora-t5"))
    assert t5.loss_average == "tokens"  # 8 per device: docs/recipes.md, what cannot match


def test_flags_override_the_recipe_and_dicts_merge() -> None:
    config = resolve_config(
        command_line("--recipe", "o-lora-t5", "--baseline", "o-lora", "--lr", "5e-4",
                     "--baseline-arg", "lambda_orth=1", "--per-task", "2:epochs=3",
                     "--backbone", "./t5-small", "--no-rslora")
    )  # fmt: skip
    assert config.lr == 5e-4 and config.backbone == "./t5-small"
    assert config.baseline_args == {"lambda_orth": 1.0, "lambda_l2": 0.0, "penalty": "abs"}
    assert config.per_task == {"2": {"epochs": 3}}
    assert config.lr_scheduler == "constant"  # what the flags left alone stays the recipe's


def test_a_users_config_file_and_print_config_round_trip(tmp_path: Path, capsys) -> None:
    mine = tmp_path / "my-run.yaml"
    mine.write_text(
        "stream: offline-instruct\nlr: 1e-3\nlr_scheduler: cosine\nwarmup_steps: 5\n"
        "targets: [q_proj, v_proj]\nper_task:\n  trec-question: {epochs: 3}\n"
    )
    config = command_line("--config", str(mine), "--seed", "3")
    assert (config.stream, config.lr, config.seed, config.targets) == (
        "offline-instruct", 1e-3, 3, ("q_proj", "v_proj"),
    )  # fmt: skip
    assert config.recipe.startswith("my-run@sha256:")
    assert main(["--config", str(mine), "--seed", "3", "--print-config"]) == 0
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    again = command_line("--config", str(printed))
    assert {**again.to_dict(), "recipe": None} == {
        **resolve_config(config).to_dict(),
        "recipe": None,
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lrr: 1e-3\n", "'lrr' is not a run setting: did you mean 'lr'?"),
        ("lr: fast\n", "lr 'fast': expected a number"),
        ("epochs: [1, 2]\n", "epochs: expected int"),
        ("lr: [1\n", "is not valid YAML at line"),
        ("- lr\n", "a recipe is a mapping of settings"),
        ("baselines: {o-lorra: {}}\n", "unknown baseline 'o-lorra'"),
        ("orders: {six: {}}\n", "orders maps order numbers"),
        ("lr_scheduler: cosine_annealing\n", "unknown --lr-scheduler 'cosine_annealing'"),
    ],
)
def test_a_bad_config_file_is_one_line_and_exit_2(tmp_path, capsys, text, message) -> None:
    mine = tmp_path / "bad.yaml"
    mine.write_text(text)
    assert main(["--config", str(mine), "--output-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_unknown_recipe_and_missing_file(tmp_path, capsys) -> None:
    assert main(["--recipe", "o-lora-t6"]) == 2
    assert "did you mean 'o-lora-t5'" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "absent.yaml")]) == 2
    assert "cannot read it" in capsys.readouterr().err
    with pytest.raises(BadInputError, match="not allowed with argument --recipe"):
        build_parser().parse_args(["--recipe", "o-lora-t5", "--config", "x.yaml"])


def test_list_shows_the_recipes_with_their_source(capsys) -> None:
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "o-lora-t5" in out and "o-lora-llama" in out
    assert "cmnfriend/O-LoRA@07117e1 scripts_llama/order_{1,2,3}.sh" in out
    assert set(recipes.available()) >= {"o-lora-t5", "o-lora-llama"}


def test_a_run_records_its_recipe_and_training(tmp_path: Path, tiny_backbone_dir: str) -> None:
    """A run from a config file: result.json has the recipe's name and hash, the knobs in its
    config, and per task what training did (steps, clipped steps, micro-batch)."""
    mine = tmp_path / "tiny.yaml"
    mine.write_text(
        f"backbone: {tiny_backbone_dir}\nmax_train_per_task: 24\nmax_test_per_task: 12\n"
        "epochs: 1\nbatch_size: 8\ngrad_accumulation: 2\nmax_grad_norm: 1.0e-6\n"
        "tasks: [movie-sentiment, sms-spam]\nper_task: {sms-spam: {epochs: 2}}\n"
    )
    assert main(["--config", str(mine), "--quiet", "--output-dir", str(tmp_path / "runs")]) == 0
    (path,) = (tmp_path / "runs").rglob("result.json")
    result = json.loads(path.read_text())
    digest = recipes.load(mine).sha256[:16]
    assert result["config"]["recipe"] == f"tiny@sha256:{digest}"
    assert result["config"]["grad_accumulation"] == 2
    assert [t["optimizer_steps"] for t in result["training"]] == [
        3,
        6,
    ]  # 24 examples in micro-batches of 4, 2 per step
    assert [t["clipped_steps"] for t in result["training"]] == [3, 6]
    assert {t["micro_batch"] for t in result["training"]} == {4}
    sizes = [task["test_size"] for task in result["tasks"]]
    final = result["matrix"][-1]
    assert result["metrics"]["acc_pooled"] == pytest.approx(
        sum(s * r for s, r in zip(sizes, final, strict=True)) / sum(sizes)
    )


def test_committed_runs_keep_their_ids() -> None:
    """Settings added since (recipes, schedules, accumulation, per-task settings, ...) leave the
    id of every committed run as it was: each result file's config hashes to its own run id."""
    from cl_lora.experiment import run_id_of

    root = Path(__file__).resolve().parents[1] / "results"
    files = sorted(root.glob("*-runs/**/result.json"))
    assert len(files) > 100
    for path in files:
        result = json.loads(path.read_text())
        assert run_id_of(RunConfig.from_dict(result["config"])) == result["run_id"], path
