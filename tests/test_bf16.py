"""A language model in bf16 (as a CUDA run loads it), checked on CPU with a tiny random Llama:
the inits leave the model's function as it was, and what the run merges is summed in float32."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from llm_fixtures import TINY_LLAMA

from cl_lora.inits import INITS
from cl_lora.inits.testing import synthetic_stats
from cl_lora.lora import (
    LoRASettings,
    add_fold,
    attach_adapters,
    initial_adapters,
    lora_layers,
    merge_lora,
)

RESIDUAL_INITS = ["pissa", "milora", "olora", "lora-null", "corda-kpm", "intermediate"]


def bf16_llama(seed: int = 0) -> SimpleNamespace:
    """A 2-layer Llama with random weights in bf16, as ``model.encoder`` (what the LoRA calls
    take)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=256, **{**TINY_LLAMA, "hidden_size": 64})
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        encoder = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    return SimpleNamespace(encoder=encoder)


TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def logits(model: SimpleNamespace) -> torch.Tensor:
    tokens = torch.arange(48).reshape(3, 16) * 5 % 256
    with torch.no_grad():
        return model.encoder(input_ids=tokens).logits


def attach(model: SimpleNamespace, init: str, settings: LoRASettings) -> None:
    """Attach a fresh adapter initialized by ``init`` on every projection (synthetic input
    statistics for the methods that read them)."""
    method = INITS.get(init)
    names = [n for n, m in model.encoder.named_modules() if n.split(".")[-1] in TARGETS]
    stats = {}
    for name in names:
        out_features, in_features = model.encoder.get_submodule(name).weight.shape
        stats[name] = synthetic_stats(method.needs, out_features, in_features, seed=0)
    generator = torch.Generator().manual_seed(0)
    adapters = initial_adapters(
        model.encoder, settings, names, method, method.resolve_args({}), stats, generator
    )
    attach_adapters(model, settings, TARGETS, adapters)


@pytest.mark.parametrize("init", RESIDUAL_INITS)
def test_a_residual_init_leaves_a_bf16_model_computing_what_it_did(init) -> None:
    """Right after the init the bf16 model's logits are bit for bit the pre-init logits (the
    float32 tolerance would be round-off of ``s B_0 A_0 x - s B_0 A_0 x``, which is exactly 0:
    both products are the same operations on the same numbers). Writing ``W - s B_0 A_0`` into
    the bf16 weights instead moves them by ~2^-9 relative and the logits by far more than 0."""
    model = bf16_llama()
    before = logits(model)
    weights = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    attach(model, init, LoRASettings(rank=4, alpha=8.0))
    assert torch.equal(logits(model), before)
    for name, layer in lora_layers(model.encoder).items():
        assert torch.equal(layer.get_base_layer().weight, weights[f"{name}.weight"])


def test_the_merge_of_an_untrained_adapter_changes_no_bf16_weight() -> None:
    """The merge adds ``s (B A - B_0 A_0)``, exactly 0 before training, so an init and its
    merge leave every bf16 weight as it was (the old ``(W - s B_0 A_0) + s B A`` rounded twice)."""
    model = bf16_llama()
    weights = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    attach(model, "pissa", LoRASettings(rank=4, alpha=8.0))
    merge_lora(model)
    merged = model.encoder.state_dict()
    assert [k for k in weights if not torch.equal(weights[k], merged[k])] == []


def test_a_fold_is_summed_in_float32_and_cast_once() -> None:
    """A low-rank term folded mid-task (LoRA-Dash) joins the function at once and reaches the
    bf16 weight in the merge, rounded once from float32."""
    model = bf16_llama()
    attach(model, "pissa", LoRASettings(rank=4, alpha=8.0))
    name, layer = next(iter(lora_layers(model.encoder).items()))
    weight = layer.get_base_layer().weight.clone()
    left = torch.full((weight.shape[0], 1), 1e-4)
    right = torch.ones(1, weight.shape[1])
    before = logits(model)
    add_fold(layer, left, right)
    assert not torch.equal(logits(model), before)
    merge_lora(model)
    merged = model.encoder.get_submodule(name).weight
    assert torch.equal(merged, (weight.float() + left @ right).to(torch.bfloat16))


# -- seq-ft: float32 master weights -----------------------------------------------------------
def _steps_on_bf16_weight(masters: bool, steps: int = 50) -> torch.Tensor:
    """A bf16 weight of ones after ``steps`` AdamW steps of lr 1e-4 (each step ~1e-4, far below
    half of bf16's spacing 2^-8 just under 1.0), with or without float32 masters."""
    from cl_lora.baselines.seq_ft import keep_float32_masters

    weight = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    optimizer = torch.optim.AdamW([weight], lr=1e-4, weight_decay=0.0)
    if masters:
        keep_float32_masters(optimizer)
    for _ in range(steps):
        optimizer.zero_grad()
        weight.sum().backward()
        optimizer.step()
    return weight.detach()


def test_steps_below_bf16_resolution_still_move_a_weight_through_its_master() -> None:
    assert torch.equal(_steps_on_bf16_weight(masters=False), torch.ones(4, dtype=torch.bfloat16))
    moved = _steps_on_bf16_weight(masters=True)  # 50 steps of ~1e-4 in float32, rounded once
    assert torch.equal(moved, torch.full((4,), 1 - 50e-4).to(torch.bfloat16))
    assert moved[0] == 1 - 2**-8


def test_seq_ft_in_bf16_trains_float32_masters(toy_stream) -> None:
    """A seq-ft run on a bf16 encoder: AdamW's moments are float32 (they belong to the
    masters) and the bf16 weights change."""
    from avalanche.core import SupervisedPlugin
    from conftest import make_strategy, tiny_backbone

    from cl_lora.strategy import run_stream

    class MomentDtypes(SupervisedPlugin):
        def __init__(self) -> None:
            super().__init__()
            self.dtypes: set[torch.dtype] = set()

        def after_update(self, strategy, **kwargs) -> None:
            self.dtypes |= {s["exp_avg"].dtype for s in strategy.optimizer.state.values()}

    backbone = tiny_backbone()
    backbone.encoder.to(torch.bfloat16)
    before = {k: v.clone() for k, v in backbone.encoder.state_dict().items()}
    observer = MomentDtypes()
    strategy = make_strategy(
        backbone, toy_stream(tasks=1), baseline="seq-ft", plugins=[observer], precision="bf16"
    )
    run_stream(strategy)
    assert observer.dtypes == {torch.float32}
    after = strategy.model.encoder.state_dict()
    assert after["encoder.layer.0.attention.self.query.weight"].dtype == torch.bfloat16
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_seq_ft_that_cannot_fit_the_gpu_is_refused_in_one_line(monkeypatch) -> None:
    from cl_lora.baselines.seq_ft import check_master_memory
    from cl_lora.errors import BadInputError

    encoder = torch.nn.Linear(1000, 1000).to(torch.bfloat16)  # 1M parameters: 16 MB to train
    gpu = SimpleNamespace(total_memory=10_000_000)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: gpu)
    with pytest.raises(BadInputError, match="at most 0.0B parameters or a LoRA method"):
        check_master_memory(encoder, torch.device("cuda"))
    gpu.total_memory = 20_000_000
    check_master_memory(encoder, torch.device("cuda"))
    check_master_memory(encoder.float(), torch.device("cuda"))  # float32 trains as it is
