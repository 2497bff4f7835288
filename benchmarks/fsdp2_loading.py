"""CPU memory of loading a backbone under FSDP2: every process reading the whole weights against
process 0 alone reading them and sending each process its shards (accelerate's
``fsdp_cpu_ram_efficient_loading``).

Each side launches N processes (``torch.distributed.run``, gloo) that load the backbone as a run
does (:func:`cl_lora.experiment.load_backbone`: read, fingerprint, shard, and under process-0
loading send) and report how much their peak resident memory grew over the load, its wall time,
and which processes read the weights. The growth of a process that reads is about the whole
model (plus its shard); of one that does not, about its shard.

    python -m benchmarks.fsdp2_loading [--processes 2] [--backbone NAME] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._common import entry_point, run_benchmark, settings_parser
from cl_lora.errors import BadInputError
from cl_lora.sharding import FSDP2_VARIABLES


@dataclass(frozen=True)
class Settings:
    processes: int = 2
    stream: str = "offline-instruct"  # picks the backbone family (and its default model)
    backbone: str = ""  # empty: the stream's model


#: the sides measured: label -> accelerate's cpu_ram_efficient_loading
SIDES = {"every process reads": "false", "process 0 reads, sends": "true"}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(out: Path, family: str, name: str) -> None:
    """One process of a side: load ``name`` with ``family`` as a run does; write what it cost
    to ``out/rank<r>.json``."""
    import torch

    from cl_lora import distributed
    from cl_lora.backbones.registry import FAMILIES
    from cl_lora.config import RunConfig
    from cl_lora.experiment import load_backbone  # (Avalanche) before joining, as a run does

    processes = distributed.start("cpu")
    before = _peak_rss_mb()
    start = time.perf_counter()
    backbone = load_backbone(FAMILIES.get(family), name, RunConfig(), torch.device("cpu"), True)
    seconds = time.perf_counter() - start
    weights = sum(p.numel() * p.element_size() for p in backbone.encoder.parameters())
    record = {
        "rss_growth_mb": _peak_rss_mb() - before,
        "load_s": seconds,
        "weights_mb": weights / 2**20,
        "read_by": distributed.current().record()["weights_read_by"],
    }
    (out / f"rank{processes.rank}.json").write_text(json.dumps(record))


def _backbone(settings: Settings) -> tuple[str, str]:
    """The family and the model name (a folder, once prepared) the stream's run would load."""
    from cl_lora import streams
    from cl_lora.config import RunConfig
    from cl_lora.experiment import prepare_backbone, resolve_config

    config = resolve_config(RunConfig(stream=settings.stream, backbone=settings.backbone or None))
    stream = streams.build(config.stream, streams.StreamOptions(max_train_per_task=1))
    family, name = prepare_backbone(config, stream)
    return family.name, name


def _side(settings: Settings, family: str, name: str, efficient: str, out: Path) -> list[dict]:
    out.mkdir(parents=True)
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
         str(settings.processes), "-m", "benchmarks.fsdp2_loading",
         "--worker", str(out), family, name],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent.parent,  # where ``-m benchmarks...`` is found
        env={**os.environ, "OMP_NUM_THREADS": "1", **FSDP2_VARIABLES,
             "FSDP_CPU_RAM_EFFICIENT_LOADING": efficient},
    )  # fmt: skip
    if done.returncode != 0:
        raise BadInputError(f"the FSDP2 load failed: {done.stderr.strip()[-500:]}")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(settings.processes)]


def measure(settings: Settings) -> dict[str, Any]:
    if settings.processes < 2:
        raise BadInputError("--processes must be at least 2 (sharding needs several processes)")
    family, name = _backbone(settings)
    with tempfile.TemporaryDirectory() as folder:
        sides = {
            label: _side(settings, family, name, efficient, Path(folder) / str(i))
            for i, (label, efficient) in enumerate(SIDES.items())
        }
    return {"settings": vars(settings), "family": family, "backbone": name, "sides": sides}


def table(result: dict[str, Any]) -> str:
    first = next(iter(result["sides"].values()))[0]
    lines = [
        f"{result['backbone']} ({result['family']}), {first['weights_mb']:.0f} MB of weights, "
        f"FSDP2 over {result['settings']['processes']} processes",
        "| loading | process | read the weights | peak RSS growth MB | load s |",
        "|---|---:|---|---:|---:|",
    ]
    for label, processes in result["sides"].items():
        for rank, row in enumerate(processes):
            lines.append(
                f"| {label} | {rank} | {'yes' if rank in row['read_by'] else 'no'} | "
                f"{row['rss_growth_mb']:.0f} | {row['load_s']:.1f} |"
            )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    return settings_parser("fsdp2_loading", __doc__, Settings)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_benchmark(argv, _parser(), Settings, measure, table)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(Path(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        entry_point(main)
