"""Adapters in PEFT's format: PEFT alone, on a fresh copy of the pretrained model, reproduces
what the suite's own model predicted after each task, for plain and residual inits and for
LoRA-Dash's folded terms, on a causal LM and on a text encoder with task heads; the merged
export computes what the adapter does; each task's own adapter on the model before it gives
the model after it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from avalanche.core import SupervisedPlugin
from conftest import make_strategy, make_toy_stream, tiny_backbone

from cl_lora.export import (
    ADAPTERS,
    HEADS,
    MANIFEST,
    AdapterSaver,
    main,
    read_adapter,
    write_merged,
)
from cl_lora.strategy import run_stream

#: Each method with the init arguments of a quick run (LoRA-Dash's directions after 2 steps;
#: on the LM, 20 of them: more than the 16 of a 16 x 32 layer, so layers differ in rank).
METHODS = {
    "lora": {},
    "pissa": {},
    "lora-null": {},
    "lora-dash": {"t": 2, "s": 4},
}
LM_ARGS = {"lora-dash": {"t": 2, "s": 20}}


class Predictions(SupervisedPlugin):
    """The suite's own evaluation: per task, each batch's inputs and predicted label ids."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: dict[int, list[tuple[dict[str, Any], torch.Tensor]]] = {}

    def before_eval(self, strategy: Any, **kwargs: Any) -> None:
        self.batches = {}

    def after_eval_iteration(self, strategy: Any, **kwargs: Any) -> None:
        task = int(strategy.mb_task_id[0])
        inputs = {k: v for k, v in strategy.mb_x.items() if isinstance(v, torch.Tensor)}
        self.batches.setdefault(task, []).append((inputs, strategy.mb_output.clone()))


def _same(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


# -- a causal language model ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> str:
    from llm_fixtures import tiny_llama_dir

    return tiny_llama_dir(tmp_path_factory.mktemp("pretrained"))


def _fresh_llama(folder: str) -> torch.nn.Module:
    """The pretrained model as transformers loads it: no cl_lora code."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).eval()


def _peft(model: torch.nn.Module, adapter: Path) -> torch.nn.Module:
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter)).eval()


@pytest.mark.parametrize("init", list(METHODS))
def test_peft_reproduces_a_language_models_predictions_after_each_task(
    init: str, llama_dir: str, tmp_path: Path
) -> None:
    from llm_fixtures import toy_text_to_text_stream

    from cl_lora.backbones.base import weights_fingerprint
    from cl_lora.backbones.causal_lm import load_causal_lm

    backbone = load_causal_lm(llama_dir)
    backbone.source["fingerprint"] = weights_fingerprint(backbone.encoder)
    stream = toy_text_to_text_stream(tasks=2)
    recorder = Predictions()
    strategy = make_strategy(
        backbone, stream, init, LM_ARGS.get(init, METHODS[init]), epochs=2, plugins=[recorder]
    )
    run_dir = tmp_path / "run"
    saver = AdapterSaver(strategy, run_dir / ADAPTERS, own=True)
    problem = strategy.problem
    checked: list[int] = []

    def after_task(task: int) -> None:
        folder = saver.save(task)
        assert not (folder / HEADS).exists()  # a language model has no heads
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["task_type"] == "CAUSAL_LM" and config["use_rslora"] is False
        assert config["lora_alpha"] == config["r"]  # scaling 1, the scale is in B
        assert config["alpha_pattern"] == config["rank_pattern"]
        adapted = _peft(_fresh_llama(llama_dir), folder)
        strategy.model.eval()
        for seen, batches in recorder.batches.items():
            for inputs, predicted in batches:
                with torch.no_grad():
                    want = strategy.model(inputs)
                    got = adapted(**inputs, use_cache=False).logits
                _same(got, want)
                peft_says = problem.predict(SimpleNamespace(encoder=adapted), inputs, seen)
                assert torch.equal(peft_says, predicted)  # the suite's own predictions
        if task > 0:  # the model before the task (merged) with the task's own adapter
            before = saver.folder / f"after-{task}-{stream.tasks[task - 1].name}"
            merged = _peft(_fresh_llama(llama_dir), before).merge_and_unload()
            own = _peft(merged, saver.folder / f"task-{task + 1}-{stream.tasks[task].name}")
            inputs = recorder.batches[0][0][0]
            with torch.no_grad():
                _same(own(**inputs).logits, adapted(**inputs).logits)
        checked.append(task)

    run_stream(strategy, save_task=after_task)
    assert checked == [0, 1]
    if init == "pissa":  # residual: two terms per episode, rank 2 r per task
        config = json.loads((saver.folder / "after-2-has-spam" / "adapter_config.json").read_text())
        assert config["r"] == 2 * 2 * 2 and config["rank_pattern"] == {}
    if init == "lora-dash":  # 20 directions, but k_proj and v_proj have 16
        config = json.loads((saver.folder / "after-2-has-spam" / "adapter_config.json").read_text())
        assert config["r"] == 2 * (2 + 20)
        assert set(config["rank_pattern"].values()) == {2 * (2 + 16)}
        assert len(config["rank_pattern"]) == 2 * 2  # k and v of 2 blocks

    # the merged export: what the adapter computes, as a plain transformers folder
    out = write_merged(run_dir, 2, tmp_path / "merged")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    adapted = _peft(_fresh_llama(llama_dir), saver.folder / "after-2-has-spam")
    inputs = recorder.batches[1][0][0]
    with torch.no_grad():
        _same(merged(**inputs).logits, adapted(**inputs).logits)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer("yes")["input_ids"] == backbone.tokenizer("yes")["input_ids"]


# -- a text encoder with task heads ---------------------------------------------------------------
def _heads_logits(
    adapted: torch.nn.Module, heads_file: Path, inputs: dict[str, torch.Tensor], task: int
) -> torch.Tensor:
    """Task ``task``'s (1-based) logits from the PEFT model and the saved heads, computed here
    as the file's metadata describes them: the head's linear map of the mean of the last
    hidden states over real tokens."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(heads_file), "pt") as handle:
        info = json.loads(handle.metadata()["cl_lora"])
    assert info["features"].startswith("cl_lora.backbones.text.mean_pool: Mean of the last")
    heads = load_file(str(heads_file))
    key = info["task_heads"][str(task)]
    hidden = adapted(**inputs).last_hidden_state
    mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    features = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    return features @ heads[key + "weight"].T + heads[key + "bias"]


@pytest.mark.parametrize("init", list(METHODS))
def test_peft_and_the_heads_file_reproduce_a_text_encoders_predictions(
    init: str, tiny_backbone_dir: str, tmp_path: Path
) -> None:
    from transformers import AutoModel

    stream = make_toy_stream(tasks=3)
    recorder = Predictions()
    strategy = make_strategy(tiny_backbone(), stream, init, METHODS[init], plugins=[recorder])
    saver = AdapterSaver(strategy, tmp_path / ADAPTERS)
    checked: list[int] = []

    def after_task(task: int) -> None:
        folder = saver.save(task)
        adapted = _peft(AutoModel.from_pretrained(tiny_backbone_dir).eval(), folder)
        strategy.model.eval()
        assert sorted(recorder.batches) == list(range(task + 1))
        for seen, batches in recorder.batches.items():
            for inputs, predicted in batches:
                with torch.no_grad():
                    want = strategy.model(inputs, seen)
                    got = _heads_logits(adapted, folder / HEADS, inputs, seen + 1)
                _same(got, want)
                assert torch.equal(got.argmax(-1), predicted)
        checked.append(task)

    run_stream(strategy, save_task=after_task)
    assert checked == [0, 1, 2]
    manifest = json.loads((saver.folder / MANIFEST).read_text())
    assert manifest["problem"] == "classification"
    assert [entry["adapter"] for entry in manifest["saved"].values()] == [
        "after-1-has-good", "after-2-has-spam", "after-3-has-question"
    ]  # fmt: skip
    message = _export_error(tmp_path, ["--task", "1", "--merged", str(tmp_path / "m")])
    assert "trained task heads" in message and not (tmp_path / "m").exists()


@pytest.mark.parametrize("baseline", [None, "seq-lora"])
def test_a_tasks_own_adapter_takes_the_model_before_it_to_the_model_after_it(
    baseline: str | None, tiny_backbone_dir: str, tmp_path: Path
) -> None:
    """On the merged model after task t - 1, task t's own adapter gives the model after task t:
    a fresh LoRA per task (its own adapter is its episode alone), and seq-lora's one adapter
    trained on through every task (the change is its new factors minus its old ones)."""
    from transformers import AutoModel

    def fresh() -> torch.nn.Module:
        return AutoModel.from_pretrained(tiny_backbone_dir).eval()

    stream = make_toy_stream(tasks=3)
    strategy = make_strategy(tiny_backbone(), stream, "pissa", baseline=baseline)
    saver = AdapterSaver(strategy, tmp_path / ADAPTERS, own=True)
    inputs = dict(strategy.backbone.collate([{"text": "good item 3"}, {"text": "plain item"}]))
    ranks = []

    def after_task(task: int) -> None:
        after = saver.save(task)
        own = saver.folder / f"task-{task + 1}-{stream.tasks[task].name}"
        ranks.append(json.loads((own / "adapter_config.json").read_text())["r"])
        if task == 0:  # the model it started from is the pretrained one
            assert torch.equal(read_adapter(own)["encoder.layer.0.output.dense"][1],
                               read_adapter(after)["encoder.layer.0.output.dense"][1])  # fmt: skip
            return
        before = after.parent / f"after-{task}-{stream.tasks[task - 1].name}"
        merged = _peft(fresh(), before).merge_and_unload()
        with torch.no_grad():
            want = _peft(fresh(), after)(**inputs).last_hidden_state
            _same(_peft(merged, own)(**inputs).last_hidden_state, want)

    run_stream(strategy, save_task=after_task)
    # pissa: B A and -B_0 A_0 per adapter; seq-lora's later changes: new factors minus old ones
    assert ranks == ([4, 4, 4] if baseline is None else [4, 8, 8])


def test_a_resumed_run_saves_the_adapters_of_an_unbroken_one(tmp_path: Path) -> None:
    """Stopped after its first task and resumed from the checkpoint, a run writes the same
    adapters, heads and manifest, bit for bit, as one that never stopped: the replayed LoRA
    history is the history."""
    from safetensors.torch import load_file

    stream = make_toy_stream(tasks=3)

    def build():
        return make_strategy(tiny_backbone(), stream, "lora-dash", METHODS["lora-dash"])

    class Interrupted(Exception):
        pass

    def stop(task: int, _outcome: Any) -> None:
        if task == 0:
            raise Interrupted

    torch.manual_seed(0)
    unbroken = build()
    run_stream(unbroken, save_task=AdapterSaver(unbroken, tmp_path / "a", own=True).save)
    checkpoint = tmp_path / "checkpoint.safetensors"
    torch.manual_seed(0)
    first = build()
    with pytest.raises(Interrupted):
        saver = AdapterSaver(first, tmp_path / "b", own=True)
        run_stream(first, checkpoint=checkpoint, on_task_end=stop, save_task=saver.save)
    torch.manual_seed(123)
    resumed = build()
    saver = AdapterSaver(resumed, tmp_path / "b", own=True)
    run_stream(resumed, checkpoint=checkpoint, resume=True, save_task=saver.save)
    want = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*"))
    assert sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*")) == want
    assert Path("after-3-has-question", HEADS) in want and Path("task-3-has-question") in want
    for name in want:
        a, b = tmp_path / "a" / name, tmp_path / "b" / name
        if name.suffix == ".safetensors":
            got, expected = load_file(str(b)), load_file(str(a))
            assert got.keys() == expected.keys()
            assert all(torch.equal(got[key], expected[key]) for key in expected), name
        elif a.is_file():
            assert b.read_text() == a.read_text(), name


def _export_error(run_dir: Path, argv: list[str]) -> str:
    """``python -m cl_lora.export RUN_DIR ARGV`` must fail with exit 2 and one line."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main([str(run_dir), *argv]) == 2
    message = err.getvalue().strip()
    assert "\n" not in message and message.startswith("error: ")
    return message


# -- the command lines ----------------------------------------------------------------------------
def test_a_run_saves_adapters_and_the_export_merges_one(llama_dir: str, tmp_path: Path) -> None:
    """``python -m cl_lora.run ... --save-adapters --save-task-adapters`` on a tiny Llama
    folder, then ``python -m cl_lora.export RUN --task 2 --merged DIR``; bad input to the
    export is one line, exit 2, and leaves nothing behind."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cl_lora.run import main as run

    argv = ["--stream", "offline-instruct", "--tasks", "sms-spam,trec-question",
            "--backbone", llama_dir, "--init", "pissa", "--rank", "2",
            "--max-train-per-task", "4", "--max-test-per-task", "4", "--epochs", "1",
            "--probe-size", "2", "--quiet", "--save-adapters", "--save-task-adapters",
            "--output-dir", str(tmp_path / "runs")]  # fmt: skip
    assert run(argv) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    adapters = run_dir / ADAPTERS
    manifest = json.loads((adapters / MANIFEST).read_text())
    assert manifest["saved"] == {
        "1": {"adapter": "after-1-sms-spam", "own": "task-1-sms-spam"},
        "2": {"adapter": "after-2-trec-question", "own": "task-2-trec-question"},
    }
    assert manifest["backbone"]["name"] == llama_dir and manifest["backbone"]["fingerprint"]
    assert sorted(p.name for p in adapters.iterdir()) == [
        MANIFEST, "after-1-sms-spam", "after-2-trec-question", "task-1-sms-spam",
        "task-2-trec-question",
    ]  # fmt: skip
    own = json.loads((adapters / "task-2-trec-question" / "adapter_config.json").read_text())
    assert own["r"] == 2 * 2  # task 2's own adapter: its B A and -B_0 A_0, nothing of task 1

    out = tmp_path / "model-after-task-2"
    assert main([str(run_dir), "--task", "2", "--merged", str(out)]) == 0
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    adapted = _peft(_fresh_llama(llama_dir), adapters / "after-2-trec-question")
    tokenizer = AutoTokenizer.from_pretrained(out, padding_side="left")
    inputs = tokenizer(["Is this spam? Win a prize now", "What is a question?"],
                       return_tensors="pt", padding=True)  # fmt: skip
    with torch.no_grad():
        _same(merged(**inputs).logits, adapted(**inputs).logits)

    before = sorted(p.name for p in tmp_path.iterdir())
    merged_to = ["--merged", str(tmp_path / "m")]
    assert "no run folder" in _export_error(tmp_path / "none", ["--task", "1", *merged_to])
    assert "tasks 1..2" in _export_error(run_dir, ["--task", "3", *merged_to])
    assert "tasks 1..2" in _export_error(run_dir, ["--task", "0", *merged_to])
    (tmp_path / "plain").mkdir()
    message = _export_error(tmp_path / "plain", ["--task", "1", *merged_to])
    assert "saved no adapters: rerun it with --save-adapters" in message
    assert "exists" in _export_error(run_dir, ["--task", "1", "--merged", str(out)])
    assert "--task" in _export_error(run_dir, ["--merged", str(tmp_path / "m")])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "plain"])


def test_save_adapters_is_refused_where_there_is_no_adapter() -> None:
    from cl_lora.config import RunConfig
    from cl_lora.errors import BadInputError
    from cl_lora.method import resolve

    with pytest.raises(BadInputError, match="goes with --save-adapters"):
        RunConfig(save_task_adapters=True)
    for baseline in ("seq-ft", "frozen"):
        config = RunConfig(baseline=baseline, init=None, save_adapters=True)
        with pytest.raises(BadInputError, match=f"--baseline {baseline} has no adapter to save"):
            resolve(config)
    assert resolve(RunConfig(baseline="seq-lora", save_adapters=True)).config.save_adapters
