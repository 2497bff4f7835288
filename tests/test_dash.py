"""LoRA-Dash as a training plugin: silent before step t, then exactly s scalars per layer."""

from __future__ import annotations

import torch
from avalanche.core import SupervisedPlugin
from conftest import make_strategy

from cl_lora.lora import lora_layers
from cl_lora.strategy import run_stream
from cl_lora.strategy.dash import DashPlugin


def dash_of(strategy) -> DashPlugin:
    return next(p for p in strategy.plugins if isinstance(p, DashPlugin))


class Observer(SupervisedPlugin):
    """Records, after every optimizer step, what the optimizer trains and the Dash terms."""

    def __init__(self) -> None:
        super().__init__()
        self.trained: list[int] = []
        self.terms: list[int] = []
        self.d_at_start: list[torch.Tensor] = []

    def after_update(self, strategy, **kwargs) -> None:
        dash = dash_of(strategy)
        groups = strategy.optimizer.param_groups
        self.trained.append(sum(p.numel() for g in groups for p in g["params"]))
        self.terms.append(len(dash.terms))
        if dash.steps == dash.t:
            self.d_at_start.extend(term.d.detach().clone() for term in dash.terms.values())


def test_dash_adds_s_scalars_per_layer_after_t_steps(backbone, toy_stream) -> None:
    observer = Observer()
    # 3 steps per epoch, 2 epochs: Dash joins at step 2 of 6
    strategy = make_strategy(
        backbone, toy_stream(tasks=2), "lora-dash", {"s": 3, "t": 2}, epochs=2, plugins=[observer]
    )
    dash = dash_of(strategy)
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
