"""LoRA-Dash as a training plugin: silent before step t, then exactly s scalars per layer that
receive gradient, move, and change the model's output."""

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
    """Records, after every optimizer step, what the optimizer trains and the Dash terms: each
    scale's gradient and value, and (on a task's last step) how far the terms move the model's
    output on the step's batch."""

    def __init__(self) -> None:
        super().__init__()
        self.trained: list[int] = []
        self.terms: list[int] = []
        self.d_at_start: list[torch.Tensor] = []
        self.grads: dict[int, list[torch.Tensor]] = {}  # per task, per step with terms
        self.d: dict[int, list[torch.Tensor]] = {}
        self.output_change: dict[int, float] = {}

    def after_update(self, strategy, **kwargs) -> None:
        dash = dash_of(strategy)
        groups = strategy.optimizer.param_groups
        self.trained.append(sum(p.numel() for g in groups for p in g["params"]))
        self.terms.append(len(dash.terms))
        if dash.steps == dash.t:
            self.d_at_start.extend(term.d.detach().clone() for term in dash.terms.values())
        elif dash.terms:  # a step that trained the scales: their gradient and new values
            task = strategy.task_id
            zero = torch.zeros(dash.s)
            grads = [zero if t.d.grad is None else t.d.grad.clone() for t in dash.terms.values()]
            self.grads.setdefault(task, []).append(torch.stack(grads))
            self.d.setdefault(task, []).append(
                torch.stack([t.d.detach().clone() for t in dash.terms.values()])
            )
            self.output_change[task] = self._output_change(strategy, dash)

    @staticmethod
    @torch.no_grad()
    def _output_change(strategy, dash: DashPlugin) -> float:
        """The largest change of the model's outputs (eval mode) on the step's batch that the
        trained scales make, against the same model with every scale at 0."""
        model = strategy.model.eval()
        with_terms = strategy.problem.forward(model, strategy.mb_x, strategy.mb_task_id)
        scales = [term.d.clone() for term in dash.terms.values()]
        for term in dash.terms.values():
            term.d.zero_()
        without = strategy.problem.forward(model, strategy.mb_x, strategy.mb_task_id)
        for term, d in zip(dash.terms.values(), scales, strict=True):
            term.d.copy_(d)
        model.train()
        return (with_terms - without).abs().max().item()


def test_dash_adds_s_trained_scalars_per_layer_after_t_steps(backbone, toy_stream) -> None:
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

    # steps 3-6 of each task train the scales: every scale of every layer gets a gradient and
    # moves on every step (from 0 at step t), and the trained scales change the model's output
    for task in (0, 1):
        grads, values = torch.stack(observer.grads[task]), torch.stack(observer.d[task])
        assert grads.shape == values.shape == (4, layers, 3)  # 4 steps, s = 3 per layer
        assert (grads != 0).all(), task  # every scale of every layer, every step
        steps = torch.cat([torch.zeros(1, layers, 3), values]).diff(dim=0)
        assert (steps != 0).all(), task  # each step moves each scale
        assert values[-1].abs().max() > 1e-3, task  # AdamW at 1e-2: ~1e-2 per step
        assert observer.output_change[task] > 1e-4, task
