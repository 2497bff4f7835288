"""How many input directions InfLoRA's subspace memory keeps after the first task, under the
official rule (GPM's energy criterion on the squared spectrum of the covariance, threshold 0.95
after the first task) and the ``eigenvalue`` rule (the same threshold on the eigenvalues).

It collects, as the ``inflora`` baseline does before task 1, the input covariance of every
adapted layer of the offline text backbone (all-MiniLM-L6-v2) on ``--calib-size`` training
examples of the first ``offline-text`` task, and grows an empty memory with each rule. Layers
that read one input (query/key/value) share one covariance, so the table has one row per
distinct input.

    python -m benchmarks.inflora_memory [--calib-size 256] [--json OUT]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import entry_point, finish
from cl_lora import streams
from cl_lora.backbones import ContinualClassifier, load_text_backbone
from cl_lora.baselines.inflora import extend_basis, extend_basis_official
from cl_lora.calibration import collect_input_covariances
from cl_lora.problems import Classification

THRESHOLD = 0.95  # the baseline's default (the official code's lamb)
RANK = 8


def measure(calib_size: int) -> dict[str, Any]:
    backbone = load_text_backbone()
    stream = streams.build("offline-text")
    problem = Classification(backbone, stream)
    model = ContinualClassifier(backbone, shared_head=False).eval()
    rows = [dict(row) for row in stream.tasks[0].train.select(range(calib_size))]
    batches = [
        problem.collate(rows[i : i + 64], None, training=True)[0] for i in range(0, len(rows), 64)
    ]
    collector = collect_input_covariances(model, backbone.target_modules, batches)
    layers, seen = [], set()
    for name, cov in collector.covariances().items():
        if id(cov) in seen:
            continue
        seen.add(id(cov))
        max_dim = cov.shape[0] - RANK
        layers.append(
            {
                "input_of": name,
                "dim": cov.shape[0],
                "official": extend_basis_official(None, cov, THRESHOLD, max_dim).shape[1],
                "eigenvalue": extend_basis(None, cov, THRESHOLD, max_dim).shape[1],
            }
        )
    return {"task": stream.tasks[0].name, "calib_size": len(rows), "layers": layers}


def report(result: dict[str, Any]) -> str:
    lines = [
        f"InfLoRA memory after task 0 ({result['task']}, {result['calib_size']} examples, "
        f"threshold {THRESHOLD})",
        f"{'input of':<52} {'dim':>4} {'official':>8} {'eigenvalue':>10}",
    ]
    lines += [
        f"{row['input_of']:<52} {row['dim']:>4} {row['official']:>8} {row['eigenvalue']:>10}"
        for row in result["layers"]
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib-size", type=int, default=256)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    result = measure(args.calib_size)
    return finish(result, report(result), args.json)


if __name__ == "__main__":
    entry_point(main)
