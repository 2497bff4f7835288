"""Knowledge probes of a language model: lm-evaluation-harness's prompts and scores on the
packaged data, several probes in one run, and the harness itself offline on local tasks."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from llm_fixtures import tiny_llama, tiny_llama_dir, toy_text_to_text_stream

from cl_lora.errors import BadInputError
from cl_lora.probes import PROBES, ProbeContext, ProbeSet, parse_knowledge
from cl_lora.probes.multiple_choice import TASKS, MultipleChoiceProbe
from cl_lora.problems import build_problem
from cl_lora.problems.likelihood import encode_pair, loglikelihoods

lm_eval = pytest.importorskip("lm_eval")  # an extra that CI installs (pip install -e ".[lm-eval]")
HARNESS_TASKS = Path(lm_eval.__file__).parent / "tasks"

#: The harness's YAML of each probe (lm-eval 0.4.13), whose templates the probe must follow.
OFFICIAL_YAML = {
    "mmlu": "mmlu/default/_default_template_yaml",
    "boolq": "super_glue/boolq/default.yaml",
    "piqa": "piqa/piqa.yaml",
    "siqa": "siqa/siqa.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml",
    "commonsenseqa": "commonsense_qa/default.yaml",
}
TEMPLATE_KEYS = ("doc_to_text", "doc_to_choice", "doc_to_target")


def official_templates(name: str) -> dict[str, object]:
    """The harness YAML's templates for probe ``name``, read from the installed package."""
    text = (HARNESS_TASKS / OFFICIAL_YAML[name]).read_text()
    config = yaml.safe_load(text)
    return {key: config[key] for key in TEMPLATE_KEYS}


def render(template: object, document: dict) -> object:
    """A harness template on ``document`` as the harness renders it: a field name, a Jinja
    string (``lm_eval.utils.apply_template``), or a literal list."""
    from lm_eval.utils import apply_template

    if isinstance(template, list):
        return template
    if template in document:
        return document[template]
    value = apply_template(template, document)
    return eval(value) if value.startswith("[") else value  # noqa: S307 -- the harness does too


@pytest.mark.parametrize("name", list(OFFICIAL_YAML))
def test_probe_prompts_are_the_harness_templates_on_the_same_documents(name) -> None:
    """Each probe's text, options and answer equal the installed harness's templates rendered
    on the same documents (the first 50 of the probe's file)."""
    task = TASKS[name]
    templates = official_templates(name)
    documents = task.documents()[:50]
    assert len(documents) == 50
    for document in documents:
        assert task.text(document) == render(templates["doc_to_text"], document)
        choices = render(templates["doc_to_choice"], document)
        assert task.choices(document) == choices
        target = render(templates["doc_to_target"], document)
        target = choices.index(target) if isinstance(target, str) and target in choices else target
        assert task.target(document) == int(target)


def test_context_continuation_split_is_the_harness_one() -> None:
    """lm_eval/api/model.py TemplateLM._encode_pair: trailing spaces move to the continuation;
    a causal model's continuation is the whole string's tokens beyond the context's."""
    from lm_eval.api.model import TemplateLM

    backbone = tiny_llama()
    harness = SimpleNamespace(
        backend="causal", tok_encode=lambda text, **kw: backbone.tokenizer.encode(text, **kw)
    )
    for context, continuation in [("Question: 2+2?\nAnswer:", " 4"), ("Say it ", "again")]:
        expected = TemplateLM._encode_pair(harness, context, continuation)
        assert encode_pair(backbone.tokenizer, context, continuation, False) == expected


def _local_task(tmp_path: Path, name: str, documents: list[dict]) -> str:
    """A harness task YAML in ``tmp_path`` over ``documents`` (a local JSON-lines file) with
    the official templates of probe ``name``: how a user offline runs the harness."""
    data = tmp_path / f"{name}.jsonl"
    data.write_text("\n".join(json.dumps(d) for d in documents))
    config = {
        "task": f"local_{name}",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        **official_templates(name),
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
    }
    (tmp_path / f"local_{name}.yaml").write_text(yaml.safe_dump(config))
    return f"local_{name}"


@pytest.mark.parametrize("name", ["piqa", "mmlu"])
def test_our_scores_are_the_harness_scores_example_by_example(name, tmp_path) -> None:
    """The probe's choice per question, and its acc and acc_norm, equal lm-evaluation-harness's
    on the same documents and the same (tiny, random) model: 0 examples differ."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    backbone = tiny_llama(seed=3)
    stream = toy_text_to_text_stream()
    problem = build_problem(stream, backbone, 64)
    probe = PROBES.get(name).build(ProbeContext(problem, stream, size=24, batch_size=8))
    model = problem.build_model()
    ours, ours_norm = probe.predictions(model)
    task = _local_task(tmp_path, name, probe.documents)
    harness = HFLM(pretrained=backbone.encoder, tokenizer=backbone.tokenizer, batch_size=8)
    results = simple_evaluate(
        model=harness,
        tasks=[task],
        task_manager=TaskManager(include_path=str(tmp_path)),
        log_samples=True,
    )
    samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
    logliks = [np.array([r[0] for r in s["filtered_resps"]]) for s in samples]
    lengths = [np.array([len(c) for c in TASKS[name].choices(d)]) for d in probe.documents]
    theirs = [int(np.argmax(ll)) for ll in logliks]
    theirs_norm = [int(np.argmax(ll / n)) for ll, n in zip(logliks, lengths, strict=True)]
    assert sum(a != b for a, b in zip(ours, theirs, strict=True)) == 0
    assert sum(a != b for a, b in zip(ours_norm, theirs_norm, strict=True)) == 0
    scores = probe.evaluate(model)
    assert scores["acc"] == pytest.approx(results["results"][task]["acc,none"])
    assert scores["acc_norm"] == pytest.approx(results["results"][task]["acc_norm,none"])
    if name == "piqa":  # (a random model answers every lettered question with one letter)
        assert len(set(ours)) > 1


def test_loglikelihood_equals_a_hand_computed_sum() -> None:
    """One request: the sum of the continuation tokens' log-softmax after the context, computed
    apart with the bare model; batching with a longer request changes nothing."""
    import torch

    backbone = tiny_llama(seed=1)
    tokenizer, network = backbone.tokenizer, backbone.encoder
    context, continuation = "The capital of France is", " Paris"
    ids, cont = encode_pair(tokenizer, context, continuation, False)
    with torch.no_grad():
        logits = network(input_ids=torch.tensor([ids + cont])).logits[0, len(ids) - 1 : -1]
    by_hand = torch.log_softmax(logits, -1)[torch.arange(len(cont)), cont].sum().item()
    heads: list[int] = []  # positions the LM head computes logits for, per forward
    hook = network.lm_head.register_forward_hook(lambda m, i, o: heads.append(o.shape[1]))
    alone, batched = (
        loglikelihoods(network, tokenizer, requests, batch_size=4)[0]
        for requests in ([(context, continuation)], [(context, continuation), ("A " * 30, "b")])
    )
    hook.remove()
    assert alone.loglik == pytest.approx(by_hand, abs=1e-5)
    assert batched.loglik == pytest.approx(by_hand, abs=1e-4)
    # only the continuation's positions: alone, those of " Paris"; batched, from the earliest
    # continuation position of the batch (the short request's) to the longest sequence's end
    long_ids, long_cont = encode_pair(tokenizer, "A " * 30, "b", False)
    longest = len(long_ids) + len(long_cont) - 1
    assert heads == [len(cont), longest - (len(ids) - 1)]


def test_probe_questions_never_occur_in_the_stream() -> None:
    """The PIQA probe leaves out the questions the commonsense stream trains on (both read
    PIQA's validation file); what remains occurs in no prompt of the stream."""
    from cl_lora import streams
    from cl_lora.probes.base import stream_text
    from cl_lora.streams.commonsense import squash

    stream = streams.build("offline-commonsense")
    problem = build_problem(stream, tiny_llama(), 64)
    probe = MultipleChoiceProbe("piqa", TASKS["piqa"], ProbeContext(problem, stream, 200, 8))
    assert probe.left_out > 0 and probe.size == 200
    text = stream_text(stream)
    assert not any(squash(d["goal"]).lower() in text for d in probe.documents)
    again = MultipleChoiceProbe("piqa", TASKS["piqa"], ProbeContext(problem, stream, 200, 8))
    assert again.documents == probe.documents  # a fixed sample, whatever the run


def test_parse_knowledge() -> None:
    assert parse_knowledge(None) is None and parse_knowledge("nq-open") is None
    spec = parse_knowledge("nq-open,mmlu,lm-eval:nq_open,triviaqa")
    assert spec.probes == ("nq-open", "mmlu") and spec.harness == ("nq_open", "triviaqa")
    with pytest.raises(BadInputError, match="unknown knowledge probe 'mmlx'.*'mmlu'"):
        parse_knowledge("nq-open,mmlx")
    with pytest.raises(BadInputError, match="twice"):
        parse_knowledge("piqa,piqa")


class Scripted:
    """A probe whose scores are given: what the probe set must record of them."""

    def __init__(self, scores: list[float]) -> None:
        self.scores = iter(scores)
        self.seen = 0

    def start(self, model):
        return self.score(model)

    def score(self, model):
        self.seen += 1
        return next(self.scores)

    def checkpoint_state(self):
        return {"seen": self.seen}

    def restore_checkpoint_state(self, state):
        self.seen = state["seen"]

    def record(self, curve):
        return {"probe": "x", "metric": "acc", "curve": list(curve), "drop": curve[0] - curve[-1]}


def test_probe_set_keeps_every_curve_and_the_general_ability_change() -> None:
    """The first probe's curve is the run's retention curve; TRACE's Delta R^G is the mean of
    each probe's change from before the stream to after its last task."""
    probes = ProbeSet({"a": Scripted([0.5, 0.4, 0.3]), "b": Scripted([0.2, 0.3, 0.4])})
    curve = [probes.start(None), probes.score(None), probes.score(None)]
    assert curve == [0.5, 0.4, 0.3]
    record = probes.record(curve)
    assert record["probes"]["b"]["curve"] == [0.2, 0.3, 0.4]
    assert record["general_ability"]["delta"] == pytest.approx(((0.3 - 0.5) + (0.4 - 0.2)) / 2)
    resumed = ProbeSet({"a": Scripted([0.1]), "b": Scripted([0.9])})
    resumed.restore_checkpoint_state(probes.checkpoint_state())
    assert resumed.curves == probes.curves and resumed.probes["b"].seen == 3


def test_a_run_scores_several_probes_and_a_local_harness_task(tmp_path, capsys, monkeypatch):
    """End to end offline: NQ-open, PIQA and a harness task from a local YAML (--lm-eval-
    include), each with its curve in result.json and on the summary; the harness's task index
    built once for the run's check and its three evaluations."""
    import lm_eval.tasks

    from cl_lora.run import main

    built = []

    class CountedTaskManager(lm_eval.tasks.TaskManager):
        def __init__(self, *args, **kwargs) -> None:
            built.append(kwargs.get("include_path"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", CountedTaskManager)

    stream = toy_text_to_text_stream()
    problem = build_problem(stream, tiny_llama(), 64)
    documents = PROBES.get("boolq").build(ProbeContext(problem, stream, 6, 4)).documents
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    task = _local_task(tasks, "boolq", documents)
    argv = ["--stream", "offline-instruct", "--backbone", tiny_llama_dir(tmp_path),
            "--knowledge", f"nq-open,piqa,lm-eval:{task}", "--lm-eval-include", str(tasks),
            "--max-train-per-task", "4", "--max-test-per-task", "4", "--epochs", "1",
            "--tasks", "movie-sentiment,sms-spam",
            "--output-dir", str(tmp_path / "runs")]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(next((tmp_path / "runs").glob("*/result.json")).read_text())
    probes = result["retention"]["probes"]
    assert list(probes) == ["nq-open", "piqa", f"lm-eval:{task}"]
    assert all(len(p["curve"]) == 3 for p in probes.values())
    assert probes["piqa"]["test_size"] == 4 and probes["piqa"]["chance"] == 0.5
    assert probes[f"lm-eval:{task}"]["metric"] == f"mean of {task}:acc,none"  # not its stderr
    assert result["retention"]["curve"] == probes["nq-open"]["curve"]
    assert result["retention"]["general_ability"]["delta"] is not None
    assert built == [str(tasks)]  # indexing the harness's ~15k YAMLs takes 10-45 s
    out = capsys.readouterr().out
    assert "probe piqa" in out and "general ability" in out
    from cl_lora.leaderboard.__main__ import main as leaderboard

    assert leaderboard([str(tmp_path / "runs"), "--out", str(tmp_path / "board")]) == 0
    board = next((tmp_path / "board").glob("*.md")).read_text()
    delta = result["retention"]["general_ability"]["delta"]
    assert "general ability change" in board and f"{delta:.3f}" in board


def test_a_harness_task_that_needs_the_hub_offline_is_one_line(tmp_path, capsys, monkeypatch):
    """Offline, a harness task on a Hub dataset stops before any work: one line naming the task
    and --lm-eval-include, exit 2, no run folder."""
    import datasets

    from cl_lora.run import main

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))
    argv = ["--stream", "offline-instruct", "--knowledge", "lm-eval:piqa",
            "--output-dir", str(tmp_path / "runs")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "lm-eval:piqa" in err and "--lm-eval-include" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("family", ["causal", "seq2seq"])
def test_likelihood_answers_pick_the_most_likely_option_by_hand(family) -> None:
    """--answer-by likelihood: per example, the label whose answer tokens (as training writes
    them) have the largest summed log-probability after the prompt, computed apart with the
    bare model one example and one option at a time."""
    import torch
    from llm_fixtures import tiny_t5

    backbone = tiny_llama(seed=5) if family == "causal" else tiny_t5(seed=5)
    stream = toy_text_to_text_stream()
    problem = build_problem(stream, backbone, 64, answer_by="likelihood")
    model = problem.build_model()
    rows = [dict(stream.tasks[0].test[i]) for i in range(6)]
    inputs, _ = problem.collate(rows, [r["label"] for r in rows], training=False)
    chosen = problem.predict(model, inputs, torch.zeros(len(rows), dtype=torch.long))
    logliks = problem.answer_logliks(model, inputs, 0)
    network, tokenizer = backbone.encoder.eval(), backbone.tokenizer
    expected, by_hand = [], []
    with torch.no_grad():
        for row in rows:
            prompt = problem.prompt_ids(row["prompt"])
            scores = []
            for name in ("no", "yes"):
                if family == "causal":
                    answer = tokenizer(" " + name, add_special_tokens=False)["input_ids"]
                    logits = network(input_ids=torch.tensor([prompt + answer])).logits[0]
                    logits = logits[len(prompt) - 1 : -1]
                else:
                    answer = tokenizer(name, add_special_tokens=False)["input_ids"]
                    logits = network(
                        input_ids=torch.tensor([prompt]), labels=torch.tensor([answer])
                    ).logits[0]
                logprobs = torch.log_softmax(logits, -1)
                scores.append(logprobs[torch.arange(len(answer)), answer].sum().item())
            expected.append(int(np.argmax(scores)))
            by_hand.append(scores)
    assert chosen.tolist() == expected
    np.testing.assert_allclose(logliks.numpy(), np.array(by_hand), atol=1e-4)


def test_likelihood_answers_are_refused_for_free_text_and_head_streams(tmp_path, capsys) -> None:
    from cl_lora.run import main

    argv = ["--stream", "offline-text", "--answer-by", "likelihood", "--output-dir", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--answer-by" in err and "trains task heads" in err
