"""A toy stream trained under ``torch.distributed.run`` (or alone), recording what each process
did, for tests/test_distributed.py.

    python -m torch.distributed.run --nproc_per_node 2 tests/multiprocess_stream.py OUT RUNS

``RUNS`` is a JSON list of runs, one launch for all (start-up is most of a toy run's time),
each an object of ``make_strategy`` settings (init, batch_size, baseline, ...), plus
``"plugins"`` ({name: arguments}), ``"tasks"`` (default 2), ``"fail_on_rank"``: a process that
raises a run failure at its first optimizer step, and ``"seed_per_rank"``: each process seeds
its init with its rank. For run ``i`` each process writes ``OUT/run<i>-rank<r>.json``: per
optimizer step the rows (token ids, padding removed) it trained on (and how many stand-in
micro-batches it ran, whose loss counts 0); per task the adapter factors and the adapted
layers' base weights right after the init and every parameter after the task; per evaluation
batch the predictions it holds; the matrix. Launched with accelerate's FSDP2 variables
(``ACCELERATE_USE_FSDP=true FSDP_VERSION=2``), the backbone's weights are sharded as a run
shards them; the weights are then recorded whole, with ``local_share``: the fraction of the
sharded weights' elements this process holds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from conftest import make_strategy, make_toy_stream, tiny_backbone

from cl_lora import distributed, sharding
from cl_lora.errors import RunFailure
from cl_lora.experiment import seed_everything
from cl_lora.lora import ADAPTER, lora_layers
from cl_lora.plugins import PLUGINS
from cl_lora.sharding import full_weight
from cl_lora.strategy import run_stream

from avalanche.core import SupervisedPlugin  # isort: skip (after cl_lora's torchvision shim)


class Recorder(SupervisedPlugin):
    """What this process trains on, starts from, ends with and predicts."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[list[list[int]]] = []
        self.factors: list[dict[str, list]] = []
        self.weights: list[dict[str, list]] = []
        self.predictions: list[list[int]] = []
        self.stand_ins = 0
        self.bases: list[dict[str, list]] = []

    def before_training_iteration(self, strategy, **kwargs) -> None:
        self.steps.append([])

    def before_forward(self, strategy, **kwargs) -> None:
        if strategy.loss_share == 0:  # a stand-in (sharded weights, empty share): counts 0
            self.stand_ins += 1
            return
        ids, mask = strategy.mb_x["input_ids"], strategy.mb_x["attention_mask"].bool()
        self.steps[-1] += [row[keep].tolist() for row, keep in zip(ids, mask, strict=True)]

    def before_training_epoch(self, strategy, **kwargs) -> None:
        if strategy.clock.train_exp_epochs == 0:  # right after the task's init
            layers = lora_layers(strategy.model.encoder).items()
            self.bases.append(  # the base weights the earlier tasks' merges left
                {
                    name: full_weight(layer.get_base_layer().weight).tolist()
                    for name, layer in layers
                }
            )
            self.factors.append(
                {
                    name: [
                        layer.lora_A[ADAPTER].weight.tolist(),
                        layer.lora_B[ADAPTER].weight.tolist(),
                    ]
                    for name, layer in lora_layers(strategy.model.encoder).items()
                }
            )

    def after_training_exp(self, strategy, **kwargs) -> None:
        self.weights.append(
            {n: full_weight(p).tolist() for n, p in strategy.model.named_parameters()}
        )

    def after_eval_iteration(self, strategy, **kwargs) -> None:
        self.predictions.append(strategy.mb_output.tolist())


class FailingStep(SupervisedPlugin):
    """A run failure at this process's first optimizer step."""

    def before_update(self, strategy, **kwargs) -> None:
        raise RunFailure("injected failure on this process")


def train(settings: dict, processes: distributed.Processes) -> dict:
    """One toy stream trained with ``settings``; what this process recorded."""
    seed_everything(0)  # after joining the group, as a run does (joining draws random numbers)
    fail_on = settings.pop("fail_on_rank", None)
    if settings.pop("seed_per_rank", False):  # each process would draw other adapters
        settings["seed"] = processes.rank
    tasks = settings.pop("tasks", 2)
    backbone = tiny_backbone()
    for module in backbone.encoder.modules():  # dropout draws per process: off, to compare
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    if distributed.sharded():
        sharding.shard(backbone.encoder, processes.fsdp, torch.device("cpu"), processes.world)
    sharded = [p for p in backbone.encoder.parameters() if sharding.is_sharded(p)]
    recorder = Recorder()
    plugins = [PLUGINS.get(name).build(args) for name, args in settings.pop("plugins", {}).items()]
    plugins += [recorder] + ([FailingStep()] if processes.rank == fail_on else [])
    strategy = make_strategy(backbone, make_toy_stream(tasks=tasks), plugins=plugins, **settings)
    outcome = run_stream(strategy)
    return {
        "world": processes.world,
        "steps": recorder.steps,
        "factors": recorder.factors,
        "bases": recorder.bases,
        "weights": recorder.weights,
        "predictions": recorder.predictions,
        "matrix": outcome.matrix.tolist(),
        "stand_ins": recorder.stand_ins,
        "local_share": sum(p.to_local().numel() for p in sharded) / sum(p.numel() for p in sharded)
        if sharded
        else 1.0,
    }


def main(out: Path, runs: list[dict]) -> int:
    processes = distributed.start("cpu")
    for number, settings in enumerate(runs):
        try:
            record = train(settings, processes)
        except RunFailure as failure:
            print(f"process {processes.rank}: run failed: {failure}", file=sys.stderr)
            return 1
        (out / f"run{number}-rank{processes.rank}.json").write_text(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), json.loads(sys.argv[2])))
