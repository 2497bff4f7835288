"""What each knowledge probe costs and what the packaged language model scores on it before any
training: SmolLM2-135M (the offline-instruct stream's model) on each registered probe's
held-out sample, against the probe's chance level, with the seconds one evaluation takes (a
run evaluates each probe once before the stream and once after every task).

    python -m benchmarks.probes [--size 100] [--probes nq-open mmlu ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from typing import Any

from benchmarks._common import benchmark_parser, entry_point, run_benchmark


@dataclass(frozen=True)
class Settings:
    size: int = 100
    batch_size: int = 16
    probes: tuple[str, ...] = field(default_factory=tuple)  # empty: every registered probe


def measure(settings: Settings) -> dict[str, Any]:
    import torch

    from cl_lora import streams
    from cl_lora.backbones import FAMILIES, LoadOptions
    from cl_lora.probes import PROBES, ProbeContext
    from cl_lora.problems import build_problem

    stream = streams.build("offline-instruct")
    backbone = FAMILIES.get("causal-lm").load("smollm2-135m", LoadOptions(max_length=256))
    problem = build_problem(stream, backbone, 256)
    model = problem.build_model()
    context = ProbeContext(problem, stream, settings.size, settings.batch_size)
    rows = {}
    for name in settings.probes or PROBES.available():
        entry = PROBES.get(name)
        probe = entry.build(context)
        start = time.perf_counter()
        with torch.no_grad():
            score = probe.start(model)
        rows[name] = {
            "score": score,
            "chance": entry.chance,
            "seconds": time.perf_counter() - start,
            "size": len(getattr(probe, "rows", None) or getattr(probe, "documents", [])),
            "record": probe.record([score]),
        }
    return {"settings": vars(settings) | {"threads": torch.get_num_threads()}, "probes": rows}


def table(result: dict[str, Any]) -> str:
    lines = [
        f"SmolLM2-135M before any training, {result['settings']['threads']} threads",
        "| probe | examples | metric | score | chance | other | seconds per evaluation |",
        "|---|---:|---|---:|---:|---|---:|",
    ]
    for name, row in result["probes"].items():
        record = row["record"]
        others = {k: v["curve"][0] for k, v in record.get("other_metrics", {}).items()}
        if "gold_loglik" in record:
            others["gold_loglik"] = record["gold_loglik"]["curve"][0]
        other = ", ".join(f"{k} {v:.3f}" for k, v in others.items())
        lines.append(
            f"| {name} | {row['size']} | {record['metric']} | {row['score']:.3f} | "
            f"{row['chance']} | {other} | {row['seconds']:.1f} |"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = benchmark_parser("probes", __doc__)
    parser.add_argument("--size", type=int, default=Settings.size)
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=Settings.batch_size)
    parser.add_argument("--probes", nargs="+", default=[])
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_benchmark(argv, _parser(), Settings, measure, table)


if __name__ == "__main__":
    entry_point(main)
