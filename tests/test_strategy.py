"""The per-task LoRA life cycle inside the Avalanche strategy, on a tiny BERT and a toy stream."""

from __future__ import annotations

import copy

import numpy as np
import torch
from conftest import make_strategy, tiny_backbone

from cl_lora.lora import lora_layers
from cl_lora.strategy import run_stream


def test_each_task_merges_the_last_adapter_and_starts_a_fresh_one(backbone, toy_stream) -> None:
    stream = toy_stream()
    strategy = make_strategy(backbone, stream)
    seen_adapters = []
    merged_weights = []

    def after_task(i, outcome) -> None:
        layers = lora_layers(strategy.model.encoder)
        seen_adapters.append(copy.deepcopy(layers["encoder.layer.0.attention.self.query"]))
        base = strategy.model.encoder.get_base_model()
        merged_weights.append({k: v.clone() for k, v in base.state_dict().items()})

    run_stream(strategy, on_task_end=after_task)
    assert len(seen_adapters) == 3
    # the LoRA of task 1 is not the trained LoRA of task 0: it was re-initialized
    a0 = seen_adapters[0].lora_A["default"].weight
    a1 = seen_adapters[1].lora_A["default"].weight
    assert not torch.allclose(a0, a1)
    # the base weight of task 1 is task 0's base plus task 0's trained update (merged)
    layer0 = seen_adapters[0]
    delta0 = layer0.scaling["default"] * (
        layer0.lora_B["default"].weight @ layer0.lora_A["default"].weight
    )
    key = "encoder.layer.0.attention.self.query.base_layer.weight"
    expected = merged_weights[0][key] + delta0
    torch.testing.assert_close(merged_weights[1][key], expected, atol=1e-5, rtol=1e-5)


def test_earlier_heads_are_left_alone(backbone, toy_stream) -> None:
    stream = toy_stream()
    strategy = make_strategy(backbone, stream)
    heads = {}

    def after_task(i, outcome) -> None:
        heads[i] = copy.deepcopy(strategy.model.heads[str(0)].state_dict())

    run_stream(strategy, on_task_end=after_task)
    for key, value in heads[0].items():
        assert torch.equal(heads[2][key], value)


def test_matrix_shape_by_scenario(backbone, toy_stream) -> None:
    per_task = run_stream(make_strategy(backbone, toy_stream()))
    assert np.isnan(per_task.matrix[np.triu_indices(3, k=1)]).all()
    assert not np.isnan(per_task.matrix[np.tril_indices(3)]).any()
    assert per_task.before == [None, None, None]

    stream = toy_stream(shared_head=True)
    strategy = make_strategy(tiny_backbone(), stream)
    shared = run_stream(strategy)
    unread = np.triu(np.ones((3, 3), dtype=bool), k=2)  # R[0][2]: no metric reads it
    assert np.isnan(shared.matrix[unread]).all() and not np.isnan(shared.matrix[~unread]).any()
    assert all(b is not None for b in shared.before)


def test_toy_tasks_are_learned(backbone, toy_stream) -> None:
    """The loop really trains: every toy task ends well above chance right after training."""
    stream = toy_stream()
    strategy = make_strategy(backbone, stream, epochs=8)
    outcome = run_stream(strategy)
    assert (np.diag(outcome.matrix) >= 0.75).all(), outcome.matrix


def test_same_seed_gives_the_same_matrix(toy_stream) -> None:
    """Seeded head, LoRA init and batch order: two runs agree exactly on the same machine."""
    matrices = []
    for _ in range(2):
        torch.manual_seed(0)
        strategy = make_strategy(tiny_backbone(), toy_stream(), init="pissa", epochs=2)
        matrices.append(run_stream(strategy).matrix)
    np.testing.assert_array_equal(matrices[0], matrices[1])
