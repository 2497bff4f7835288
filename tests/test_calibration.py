"""Calibration on the real MiniLM: covariances per distinct input, gradients, warm-ups, and
every init method attached with its real statistics leaving the model's outputs unchanged."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from cl_lora import inits, streams
from cl_lora.backbones import ContinualClassifier, load_text_backbone
from cl_lora.calibration import collect_gradients, collect_input_covariances, warmup_deltas
from cl_lora.calibration.covariance import covariance_passes
from cl_lora.lora import LoRASettings, attach_lora, lora_layers
from cl_lora.problems.classification import Classification, cross_entropy_on
from cl_lora.strategy.calibrate import Calibrator

SETTINGS = LoRASettings(rank=4, alpha=8)
FROZEN = {"lora-null-v2": "A", "mica": "B"}  # the factor each of these keeps frozen
ROWS = [
    {"text": "a quiet, moving film about grief"},
    {"text": "win a free prize now, text 80082"},
    {"text": "What is the capital of Peru?"},
]


@pytest.fixture(scope="module")
def minilm():
    return load_text_backbone()


@pytest.fixture(scope="module")
def stream():
    options = streams.StreamOptions(max_train_per_task=16, max_test_per_task=8)
    return streams.build("offline-text", options)


def classifier(minilm) -> ContinualClassifier:
    model = ContinualClassifier(copy.deepcopy(minilm), shared_head=False)
    model.add_head(0, 2)
    return model.eval()


def test_one_covariance_per_distinct_input(minilm) -> None:
    model = classifier(minilm)
    inputs = minilm.collate(ROWS)
    collector = collect_input_covariances(model, minilm.target_modules, [inputs])
    covs = collector.covariances()
    layer = "encoder.layer.0.attention.self."
    assert covs[layer + "query"] is covs[layer + "key"] is covs[layer + "value"]
    assert len(collector.sums) == 4 * 6  # q/k/v, attention output, MLP in, MLP out per block
    assert collector.nbytes() < collector.nbytes_per_module()
    # the query's C is X^T X over the real (unpadded) tokens entering block 0
    hidden = model.encoder(**inputs, output_hidden_states=True).hidden_states[0]
    X = hidden[inputs["attention_mask"].bool()]
    torch.testing.assert_close(covs[layer + "query"], X.T @ X, rtol=1e-4, atol=1e-3)


def test_gradients_match_autograd_and_leave_the_model_as_it_was(minilm) -> None:
    model = classifier(minilm)
    inputs, labels = minilm.collate(ROWS[:2]), torch.tensor([0, 1])
    name = "encoder.layer.1.intermediate.dense"
    flags = [p.requires_grad for p in model.parameters()]
    grads = collect_gradients(model, cross_entropy_on(0), [name], [(inputs, labels)])
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    torch.nn.functional.cross_entropy(model(inputs, 0), labels).backward()
    weight = model.encoder.get_submodule(name).weight
    torch.testing.assert_close(grads[name], weight.grad)


def test_warmup_leaves_no_trace(minilm) -> None:
    model = classifier(minilm)
    inputs, labels = minilm.collate(ROWS[:2]), torch.tensor([0, 1])
    before = model(inputs, 0)
    deltas = warmup_deltas(
        model,
        model.head_of(0),
        cross_entropy_on(0),
        SETTINGS,
        minilm.target_modules,
        [(inputs, labels)],
        3,
        1e-2,
        torch.Generator(),
    )
    assert len(deltas) == 36 and all(
        (left @ right).abs().sum() > 0 for left, right in deltas.values()
    )
    assert not lora_layers(model.encoder)
    torch.testing.assert_close(model.eval()(inputs, 0), before)


def calibrator(method, stream, minilm, sources=None) -> Calibrator:
    return Calibrator(
        init=method,
        init_args={"warmup_steps": 2} if "warmup_steps" in method.arguments else {},
        sources=sources or method.calibration,
        size=8,
        stream=stream,
        problem=Classification(minilm, stream),
        lora=SETTINGS,
        target_modules=minilm.target_modules,
        batch_size=4,
        train_batch_size=2,
        lr=1e-3,
        device=torch.device("cpu"),
    )


@pytest.mark.parametrize("name", inits.available())
def test_every_method_keeps_the_real_model_unchanged_at_init(name, minilm, stream) -> None:
    """Residual identity and function preserved, with the statistics calibration collects."""
    method = inits.get(name)
    model = classifier(minilm)
    inputs = minilm.collate(ROWS)
    before = model(inputs, 0)
    cal = calibrator(method, stream, minilm)
    generator = torch.Generator().manual_seed(0)
    stats = cal.collect(model, 0, generator)
    assert all(set(layer) == set(method.needs) for layer in stats.values())
    attach_lora(model, SETTINGS, minilm.target_modules, method, cal.init_args, stats, generator)
    torch.testing.assert_close(model(inputs, 0), before, atol=2e-4, rtol=2e-4)
    declared = {"A", "B"} - {FROZEN.get(name)}
    for layer in lora_layers(model.encoder).values():
        trains = {
            "A": layer.lora_A["default"].weight.requires_grad,
            "B": layer.lora_B["default"].weight.requires_grad,
        }
        assert {factor for factor, on in trains.items() if on} == declared


def test_lora_null_reads_almost_nothing_of_its_calibration_inputs(minilm, stream) -> None:
    method = inits.get("lora-null")
    model = classifier(minilm)
    cal = calibrator(method, stream, minilm)
    stats = cal.collect(model, 0, torch.Generator())
    name = "encoder.layer.2.intermediate.dense"
    factors = method(model.encoder.get_submodule(name).weight, rank=4, scale=2.0, stats=stats[name])
    # the calibration activations entering that layer
    C = stats[name]["input_cov"].double()
    random = torch.randn(512, C.shape[0], dtype=torch.float64)
    A = factors.A.double()
    on_calibration = torch.trace(A @ C @ A.T)  # = ||A X^T||^2 over calibration tokens
    on_random = (random @ A.T).pow(2).sum() * (torch.trace(C) / random.pow(2).sum())
    assert on_calibration < 1e-3 * on_random
    assert cal.reports[0]["input_cov_examples"] == {"probe": 8}


def test_memory_calibration_reads_earlier_tasks(minilm, stream) -> None:
    cal = calibrator(inits.get("lora-null"), stream, minilm, sources=("probe", "memory"))
    model = classifier(minilm)
    model.add_head(2, 6)
    cal.collect(model, 2, torch.Generator())
    assert cal.reports[0]["input_cov_examples"] == {"probe": 8, "memory": 8}


def test_normalized_covariance_scales_each_sequence_by_its_largest_entry() -> None:
    """LoRA-Null's reference (adapterlib/act_aware_utils.py): input / torch.max(input).abs()
    per calibration sequence, then X^T X; padding stays out."""
    from torch import nn

    from cl_lora.calibration import CovarianceCollector

    encoder = nn.ModuleDict({"lin": nn.Linear(4, 2)})
    x = torch.tensor([[[1.0, -2, 0, 4], [0, 1, 1, 1], [9, 9, 9, 9]],  # last token: padding
                      [[-8.0, 1, 1, 1], [2, 0, 0, -1], [1, 1, 1, 1]]])  # fmt: skip
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    with CovarianceCollector(encoder, ["lin"], normalize=True) as collector:
        collector.start_batch(mask)
        encoder["lin"](x)
    first, second = x[0, :2] / 4.0, x[1] / 2.0  # max entries 4 and 2 (not the largest |x|: 8)
    expected = first.T @ first + second.T @ second
    torch.testing.assert_close(collector.covariances()["lin"], expected)
    with CovarianceCollector(encoder, ["lin"]) as plain:
        plain.start_batch(mask)
        encoder["lin"](x)
    rows = x[mask.bool()]
    torch.testing.assert_close(plain.covariances()["lin"], rows.T @ rows)


def test_lora_null_normalize_argument_parses_like_a_flag() -> None:
    from cl_lora import inits
    from cl_lora.errors import BadInputError

    lora_null = inits.get("lora-null")
    assert lora_null.resolve_args({}) == {"normalize": False}
    assert lora_null.resolve_args({"normalize": "false"}) == {"normalize": False}
    assert lora_null.resolve_args({"normalize": "true"}) == {"normalize": True}
    with pytest.raises(BadInputError, match="use true or false"):
        lora_null.resolve_args({"normalize": "sometimes"})


def test_covariance_passes_keep_siblings_together_within_the_budget(minilm) -> None:
    names = minilm.target_modules  # per block: q k v (one parent), attention out, two MLP
    width = minilm.encoder.get_submodule(names[0]).weight.shape[1]
    one_matrix = 4 * width**2
    assert covariance_passes(minilm.encoder, names, 10**12) == [list(names)]
    passes = covariance_passes(minilm.encoder, names, 3 * one_matrix)  # fits q, k, v only
    assert [name for group in passes for name in group] == list(names)  # order kept, all there
    for group in passes:
        parents = {name.rpartition(".")[0] for name in group}
        held = sum(4 * minilm.encoder.get_submodule(n).weight.shape[1] ** 2 for n in group)
        assert held <= 3 * one_matrix or len(parents) == 1  # over budget only a lone parent
    siblings = [n for n in names if n.rpartition(".")[0] == names[0].rpartition(".")[0]]
    assert any(set(siblings) <= set(group) for group in passes)  # q/k/v never split


@pytest.mark.parametrize(
    ("init", "passes"),
    [("lora-null", 8), ("corda-kpm", 8), ("lora-ga", 12)],  # 2 blocks x 4 parents / 6 layers
)
def test_calibration_in_several_passes_gives_the_same_model(init, passes) -> None:
    """A memory budget that forces one pass per parent module (covariances) or per layer
    (gradients) changes nothing but the passes."""
    from conftest import make_strategy, make_toy_stream, tiny_backbone

    from cl_lora.strategy import run_stream

    stream = make_toy_stream(tasks=2)
    runs = {}
    for budget in (None, "1KB"):
        torch.manual_seed(0)
        strategy = make_strategy(tiny_backbone(), stream, init, calib_max_memory=budget)
        outcome = run_stream(strategy)
        runs[budget] = (outcome.matrix, strategy.model.state_dict(), strategy.calibrator.reports)
    (matrix, weights, reports), (split_matrix, split_weights, split_reports) = runs.values()
    assert [r["passes"] for r in reports] == [1, 1]
    assert [r["passes"] for r in split_reports] == [passes, passes]
    if "input_cov_bytes" in reports[0]:
        assert split_reports[0]["input_cov_bytes"] < reports[0]["input_cov_bytes"]
    np.testing.assert_array_equal(split_matrix, matrix)
    assert all(torch.equal(split_weights[k], weights[k]) for k in weights)


@pytest.mark.parametrize(
    ("init", "module", "function"),
    [
        ("lora-null", "cl_lora.inits.lora_null", "smallest_eigenvectors"),
        ("corda-kpm", "cl_lora.inits.corda", "damped_inverse"),
        ("eva", "cl_lora.inits.eva", "largest_eigenvectors"),
    ],
)
def test_layers_that_share_an_input_decompose_it_once(
    init, module, function, minilm, stream, monkeypatch
) -> None:
    """q/k/v read one covariance: one decomposition for the three, freed with the statistics."""
    import gc
    import importlib
    import weakref

    owner = importlib.import_module(module)
    original = getattr(owner, function)
    results: list[weakref.ref] = []

    def counted(cov, *args):
        value = original(cov, *args)
        results.append(weakref.ref(value[0] if isinstance(value, tuple) else value))
        return value

    monkeypatch.setattr(owner, function, counted)
    method = inits.get(init)
    model = classifier(minilm)
    cal = calibrator(method, stream, minilm, sources=("probe", "task"))
    generator = torch.Generator().manual_seed(0)
    stats = cal.collect(model, 0, generator)
    distinct = {id(layer["input_cov"]) for layer in stats.values()}
    attach_lora(model, SETTINGS, minilm.target_modules, method, cal.init_args, stats, generator)
    assert len(stats) == 36 and len(distinct) == 24
    assert len(results) == 24  # one per distinct input, not one per layer
    del stats
    gc.collect()
    assert all(ref() is None for ref in results)  # nothing kept once the covariances are gone


def test_free_cuda_memory_counts_the_allocators_cached_blocks(monkeypatch) -> None:
    """The driver counts PyTorch's cached blocks as used; the calibration budget may use them."""
    from cl_lora.calibration.covariance import free_memory

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (10 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 50 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 20 * 2**30)
    assert free_memory(torch.device("cuda")) == 40 * 2**30


def _well_separated_covariance(n: int = 32, seed: int = 0) -> torch.Tensor:
    """``C = Q diag(1..n)^2 Q^T``: every eigenvalue at least 3 from the next (float32 resolves
    its eigenvectors to ~1e-6), as a float32 statistic like calibration's."""
    generator = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64)).Q
    values = torch.arange(1, n + 1, dtype=torch.float64) ** 2
    return ((Q * values) @ Q.T).float()


@pytest.mark.parametrize("init", ["lora-null", "corda-kpm", "corda-ipm", "eva"])
def test_float32_decompositions_give_the_float64_adapter(init) -> None:
    """--decompose-dtype float32 decomposes in float32 (the reference codes' type) and, on a
    covariance whose eigenvalues are well apart, gives float64's adapter to float32 round-off."""
    from cl_lora.inits.factors import decomposing_in, decomposition_dtype

    cov = _well_separated_covariance()
    weight = torch.randn(24, 32, generator=torch.Generator().manual_seed(1))
    seen: list[torch.dtype] = []
    method = inits.get(init)
    products = {}  # B A, and A^T A (sign-free: EVA's B is 0)
    for dtype in (torch.float64, torch.float32):
        with decomposing_in(dtype):
            seen.append(decomposition_dtype())
            factors = method(weight, rank=4, scale=2.0, stats={"input_cov": cov})
        torch.testing.assert_close(factors.residual + 2.0 * factors.B @ factors.A, weight)
        products[dtype] = (factors.B @ factors.A, factors.A.T @ factors.A)
    assert seen == [torch.float64, torch.float32] and decomposition_dtype() == torch.float64
    for single, double in zip(products[torch.float32], products[torch.float64], strict=True):
        assert (single - double).norm() <= 1e-4 * double.norm()
    assert products[torch.float64][1].norm() > 0


@pytest.mark.parametrize(("init", "baseline"), [("lora-null", None), (None, "inflora")])
def test_a_run_decomposes_in_the_chosen_float_type(init, baseline, monkeypatch) -> None:
    """The run's --decompose-dtype reaches every covariance decomposition of its inits
    (calibration statistics stay float32 either way)."""
    from conftest import make_strategy, make_toy_stream, tiny_backbone

    from cl_lora.strategy import run_stream

    seen: set[torch.dtype] = set()
    eigh = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda m, *a, **k: seen.add(m.dtype) or eigh(m))
    import scipy.linalg

    scipy_eigh = scipy.linalg.eigh
    monkeypatch.setattr(
        scipy.linalg,
        "eigh",
        lambda m, **k: seen.add(torch.from_numpy(m).dtype) or scipy_eigh(m, **k),
    )
    args = {"init": init} if init else {"baseline": baseline}
    strategy = make_strategy(
        tiny_backbone(), make_toy_stream(tasks=2), decompose_dtype="float32", **args
    )
    run_stream(strategy)
    assert seen == {torch.float32}
