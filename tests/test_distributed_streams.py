"""Each stream's command line under two processes, data parallel and with FSDP2, gives the
one-process run's numbers: one stream per backbone family and scoring path (text encoder with
task heads and with one domain head, the class-incremental ViT with its retention probe, a
causal LM answering by likelihood, by generation with TRACE's metrics, and with the
learning-rate search and knowledge probes of lm-evaluation-harness, a seq2seq T5 on O-LoRA's
benchmark layout).

All runs of a side go through one launch of tests/multiprocess_cli.py (start-up is most of a
tiny run's time). Models are tiny, random and without dropout (dropout masks are drawn per
process, so a model with dropout agrees with one process only in distribution).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_backbone, tiny_vit
from llm_fixtures import saved, tiny_llama_dir, tiny_t5
from test_cl_benchmark import write_task as write_benchmark_task
from test_distributed import LAUNCH, _environment, _near
from test_trace import write_task as write_trace_task

from cl_lora.sharding import FSDP2_VARIABLES

HARNESS = Path(__file__).with_name("multiprocess_cli.py")
#: FSDP2's units for every family in one launch: BERT, timm ViT, Llama and T5 blocks
UNITS = "BertLayer,Block,LlamaDecoderLayer,T5Block"
#: ... and only process 0 reading the weights (accelerate's cpu_ram_efficient_loading)
FSDP2 = {
    **FSDP2_VARIABLES,
    "FSDP_TRANSFORMER_CLS_TO_WRAP": UNITS,
    "FSDP_CPU_RAM_EFFICIENT_LOADING": "true",
}
COMMON = ["--epochs", "1", "--max-train-per-task", "8", "--max-test-per-task", "4",
          "--batch-size", "4", "--eval-batch-size", "4", "--quiet"]  # fmt: skip


def _tiny_bert(folder: Path) -> str:
    """The tests' tiny BERT with MiniLM's tokenizer, saved without dropout."""
    from transformers import AutoTokenizer

    from cl_lora.backbones.text import packaged_minilm_path

    encoder = tiny_backbone().encoder
    encoder.config.hidden_dropout_prob = encoder.config.attention_probs_dropout_prob = 0.0
    encoder.save_pretrained(folder)
    AutoTokenizer.from_pretrained(packaged_minilm_path()).save_pretrained(folder)
    return str(folder)


def _yes_no_harness_task(folder: Path) -> str:
    """An lm-evaluation-harness task over a local file (how a user offline runs the harness),
    scored by perplexity of the answers, which moves with every weight: name of the task whose
    YAML is in ``folder``."""
    import yaml

    folder.mkdir()
    rows = [
        {"question": f"Is {n} even?", "answer": " yes" if n % 2 == 0 else " no"} for n in range(6)
    ]
    (folder / "yes_no.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    task = {
        "task": "local_yes_no",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(folder / "yes_no.jsonl")}},
        "test_split": "test",
        "output_type": "loglikelihood",
        "doc_to_text": "{{question}}",
        "doc_to_target": "{{answer}}",
        "metric_list": [{"metric": "perplexity"}],
    }
    (folder / "local_yes_no.yaml").write_text(yaml.safe_dump(task))
    return "local_yes_no"


def _streams(data: Path) -> dict[str, list[str]]:
    """Per stream: its command line (less --output-dir) on tiny models and data in ``data``."""
    from timm.models import save_for_hf

    from cl_lora.backbones.vit import mnist_vit_dir

    bert = _tiny_bert(data / "tiny-bert")
    llama = tiny_llama_dir(data)
    t5_model = tiny_t5()
    t5_model.encoder.config.dropout_rate = 0.0
    t5 = saved(t5_model, data / "tiny-t5")
    save_for_hf(tiny_vit(num_classes=10), mnist_vit_dir(), safe_serialization=True)
    for folder in ("C-STANCE", "FOMC"):
        write_trace_task(data / "trace", folder)
    write_benchmark_task(data / "o-lora", "COPA", "COPA", ["A", "B"])
    write_benchmark_task(data / "o-lora", "TC", "agnews", ["World", "Sports", "Business", "Tech"])
    harness_task = _yes_no_harness_task(data / "harness")
    return {
        "offline-text": ["--stream", "offline-text", "--backbone", bert, "--init", "pissa",
                         "--plugin", "replay"],
        "offline-domains": ["--stream", "offline-domains", "--backbone", bert, "--init", "eva"],
        "offline-vision": ["--stream", "offline-vision", "--init", "milora", "--rank", "2"],
        "offline-commonsense": ["--stream", "offline-commonsense", "--tasks", "boolq,piqa",
                                "--backbone", llama, "--init", "corda-kpm", "--probe-size", "6"],
        "offline-instruct": ["--stream", "offline-instruct", "--tasks",
                             "movie-sentiment,sms-spam", "--backbone", llama, "--init",
                             "lora-null", "--lr-search", "1e-3,1e-2", "--knowledge",
                             f"nq-open,piqa,lm-eval:{harness_task}", "--lm-eval-include",
                             str(data / "harness"), "--probe-size", "6"],
        "trace": ["--stream", "trace", "--data-dir", str(data / "trace"), "--tasks",
                  "C-STANCE,FOMC", "--backbone", llama, "--init", "lora",
                  "--max-new-tokens", "4", "--gradient-checkpointing"],
        "cl-benchmark": ["--stream", "cl-benchmark", "--data-dir", str(data / "o-lora"),
                         "--tasks", "copa,agnews", "--backbone", t5, "--init", "olora",
                         "--max-length", "96"],
    }  # fmt: skip


def _launch(processes: int, streams: dict[str, list[str]], out: Path, variables: dict) -> None:
    runs = [[*argv, *COMMON, "--output-dir", str(out / name)] for name, argv in streams.items()]
    launch = [*LAUNCH, str(processes)] if processes > 1 else [sys.executable]
    done = subprocess.run(
        [*launch, str(HARNESS), json.dumps(runs)],
        capture_output=True,
        text=True,
        env={**_environment(), **variables},
        timeout=1500,
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[tuple[str, str], dict]:
    """Per (launch, stream): the run's result.json, launched as one process, two processes data
    parallel and two with FSDP2."""
    data = tmp_path_factory.mktemp("data")
    cache = {"CL_LORA_CACHE": str(data / "cache")}  # where the offline-vision ViT is found
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CL_LORA_CACHE", cache["CL_LORA_CACHE"])
        streams = _streams(data)
    out = tmp_path_factory.mktemp("runs")
    for launch, processes, variables in (("one", 1, {}), ("ddp", 2, {}), ("fsdp2", 2, FSDP2)):
        _launch(processes, streams, out / launch, {**cache, **variables})
    return {
        (launch, name): json.loads(next((out / launch / name).glob("*/result.json")).read_text())
        for launch in ("one", "ddp", "fsdp2")
        for name in streams
    }


STREAMS = ["offline-text", "offline-domains", "offline-vision", "offline-commonsense",
           "offline-instruct", "trace", "cl-benchmark"]  # fmt: skip


def _curves(retention: dict | None) -> dict[str, list[float]]:
    """Every knowledge curve of a run: the retention probe's, NQ's gold log-likelihood, and
    each probe's."""
    if not retention:
        return {}
    curves = {"retention": retention["curve"]} if retention.get("curve") else {}
    if retention.get("gold_loglik"):
        curves["gold_loglik"] = retention["gold_loglik"]["curve"]
    for name, probe in retention.get("probes", {}).items():
        curves[name] = probe["curve"]
    return curves


@pytest.mark.parametrize("launch", ["ddp", "fsdp2"])
@pytest.mark.parametrize("stream", STREAMS)
def test_two_processes_give_the_one_process_numbers(results, stream: str, launch: str) -> None:
    alone, two = results["one", stream], results[launch, stream]
    assert two["processes"]["world_size"] == 2
    assert two["processes"]["sharding"] == (None if launch == "ddp" else "fsdp2")
    # FSDP2 with cpu_ram_efficient_loading: transformers' models are read by process 0 alone
    # and sent to the other (timm's ViT is read by both: timm does not take part)
    alone_reads = launch == "fsdp2" and stream != "offline-vision"
    assert two["processes"]["weights_read_by"] == ([0] if alone_reads else [0, 1])
    assert alone["run_id"] == two["run_id"]
    assert two["matrix"] == alone["matrix"]
    assert two["scores"] == alone["scores"]  # every metric of every cell (TRACE's too)
    curves, theirs = _curves(alone.get("retention")), _curves(two.get("retention"))
    assert curves.keys() == theirs.keys()
    for name, curve in curves.items():
        assert _near(theirs[name], curve), name
    searched = [{**(run.get("lr_search") or {}), "cost": None} for run in (alone, two)]
    assert searched[0] == searched[1]  # the same candidates scored the same, the same choice


def test_the_runs_exercise_what_they_are_there_for(results) -> None:
    """The comparison has something to compare: probes with moving curves, a search that tried
    both rates, and each family's scoring."""
    instruct = results["one", "offline-instruct"]
    assert list(instruct["retention"]["probes"]) == ["nq-open", "piqa", "lm-eval:local_yes_no"]
    search = instruct["lr_search"]
    assert search["candidates"] == [1e-3, 1e-2] and len(search["validation_scores"]) == 2
    for curve in (
        instruct["retention"]["gold_loglik"]["curve"],
        _curves(instruct["retention"])["lm-eval:local_yes_no"],
    ):
        assert len(curve) == 3 and curve[0] != curve[-1]  # training moved it
    assert results["one", "offline-vision"]["stream"]["scenario"] == "class"
    assert results["one", "offline-vision"]["retention"]["probe"] == "mnist"
    assert results["one", "offline-domains"]["stream"]["scenario"] == "domain"
    assert "trace-accuracy" in json.dumps(results["one", "trace"]["scores"])
    assert results["one", "cl-benchmark"]["backbone"]["family"] == "seq2seq-lm"
