"""LoRA-Dash as a training plugin: silent before step t, then exactly s scalars per layer."""

from __future__ import annotations

import torch
from avalanche.core import SupervisedPlugin

from cl_lora import inits
from cl_lora.backbones import ContinualClassifier
from cl_lora.experiment import _evaluator
from cl_lora.lora import LoRASettings, lora_layers
from cl_lora.strategy import LoRAStrategy, run_stream
from cl_lora.strategy.dash import DashPlugin


class Observer(SupervisedPlugin):
    """Records, after every optimizer step, what the optimizer trains and the Dash terms."""

    def __init__(self) -> None:
        super().__init__()
        self.trained: list[int] = []
        self.terms: list[int] = []
        self.d_at_start: list[torch.Tensor] = []

    def after_update(self, strategy, **kwargs) -> None:
        dash = next(p for p in strategy.plugins if isinstance(p, DashPlugin))
        groups = strategy.optimizer.param_groups
        self.trained.append(sum(p.numel() for g in groups for p in g["params"]))
        self.terms.append(len(dash.terms))
        if dash.steps == dash.t:
            self.d_at_start.extend(term.d.detach().clone() for term in dash.terms.values())


def test_dash_adds_s_scalars_per_layer_after_t_steps(backbone, toy_stream) -> None:
    stream = toy_stream(tasks=2)
    observer = Observer()
    strategy = LoRAStrategy(
        model=ContinualClassifier(backbone, shared_head=False),
        backbone=backbone,
        stream=stream,
        init=inits.get("lora-dash"),
        init_args={"s": 3, "t": 2},
        lora=LoRASettings(rank=2, alpha=4),
        target_modules=backbone.target_modules,
        lr=1e-2,
        head_lr=1e-2,
        weight_decay=0.0,
        warmup_ratio=0.1,
        seed=0,
        train_mb_size=8,
        train_epochs=2,  # 3 steps per epoch: Dash joins at step 2 of 6
        eval_mb_size=16,
        device="cpu",
        plugins=[observer],
        evaluator=_evaluator(verbose=False),
    )
    dash = next(p for p in strategy.plugins if isinstance(p, DashPlugin))
    assert strategy.plugins.index(dash) < strategy.plugins.index(observer)
    layers = len(backbone.target_modules)
    run_stream(strategy)

    first_task = slice(0, 6)
    assert observer.terms[first_task] == [0, layers, layers, layers, layers, layers]
    before, after = observer.trained[0], observer.trained[1]
    assert after - before == 3 * layers  # exactly s trainable scalars per adapted layer
    assert all(torch.equal(d, torch.zeros(3)) for d in observer.d_at_start)
    # at the end of each task the terms are folded into the weights and the hooks removed
    assert not dash.terms
    assert all(not layer._forward_hooks for layer in lora_layers(strategy.model.encoder).values())
