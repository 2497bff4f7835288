"""The init contract on real MiniLM weights, and each method's defining property."""

from __future__ import annotations

import copy

import pytest
import torch

from cl_lora import inits
from cl_lora.backbones import ContinualClassifier, load_text_backbone
from cl_lora.errors import BadInputError
from cl_lora.lora import LoRASettings, attach_lora, lora_layers, merge_lora

SVD_METHODS = ["pissa", "milora", "intermediate"]
SENTENCES = [{"text": "a quiet, moving film"}, {"text": "win a free prize now, text 80082"}]


@pytest.fixture(scope="module")
def backbone():
    return load_text_backbone()


@pytest.fixture(scope="module")
def weight(backbone) -> torch.Tensor:
    """A real 1536 x 384 MLP weight of all-MiniLM-L6-v2."""
    return backbone.encoder.encoder.layer[0].intermediate.dense.weight.detach().clone()


@pytest.mark.parametrize("name", ["lora", *SVD_METHODS])
def test_residual_identity_and_shapes(name: str, weight: torch.Tensor) -> None:
    factors = inits.get(name)(weight, rank=8, scale=2.0, generator=torch.Generator())
    assert factors.A.shape == (8, 384) and factors.B.shape == (1536, 8)
    assert factors.trainable == {"A", "B"}
    rebuilt = factors.residual + 2.0 * factors.B @ factors.A
    torch.testing.assert_close(rebuilt, weight, atol=1e-5, rtol=1e-5)


def test_lora_starts_at_zero_with_kaiming_a(weight: torch.Tensor) -> None:
    factors = inits.get("lora")(weight, rank=8, scale=2.0, generator=torch.Generator())
    assert torch.equal(factors.B, torch.zeros_like(factors.B))
    assert torch.equal(factors.residual, weight)
    assert factors.A.abs().max() <= 1 / 384**0.5


def test_windows_hold_the_right_singular_components(weight: torch.Tensor) -> None:
    S = torch.linalg.svdvals(weight)
    k, r, s = len(S), 8, 2.0
    expected = {"pissa": S[:r], "milora": S[k - r :], "intermediate": S[(k - r) // 2 :][:r]}
    for name, singular_values in expected.items():
        factors = inits.get(name)(weight, rank=r, scale=s)
        torch.testing.assert_close(
            torch.linalg.svdvals(s * factors.B @ factors.A)[:r],
            singular_values,
            atol=1e-4,
            rtol=1e-4,
        )


def test_intermediate_ends_are_pissa_and_milora(weight: torch.Tensor) -> None:
    intermediate = inits.get("intermediate")
    for f, name in [(0.0, "pissa"), (1.0, "milora")]:
        ours = intermediate(weight, rank=8, scale=2.0, f=f)
        theirs = inits.get(name)(weight, rank=8, scale=2.0)
        torch.testing.assert_close(ours.B @ ours.A, theirs.B @ theirs.A)
    by_start = intermediate(weight, rank=8, scale=2.0, start=100)
    by_f = intermediate(weight, rank=8, scale=2.0, f=100 / (384 - 8))
    torch.testing.assert_close(by_start.A, by_f.A)


def test_bad_arguments_are_one_line_errors(weight: torch.Tensor) -> None:
    with pytest.raises(BadInputError, match="rank 400 does not fit"):
        inits.get("pissa")(weight, rank=400, scale=1.0)
    with pytest.raises(BadInputError, match="does not take g"):
        inits.get("intermediate")(weight, rank=8, scale=1.0, g=0.5)
    with pytest.raises(BadInputError, match="outside"):
        inits.get("intermediate")(weight, rank=8, scale=1.0, f=1.5)
    with pytest.raises(BadInputError, match="did you mean 'pissa'"):
        inits.get("pisa")


def test_methods_give_different_factors(weight: torch.Tensor) -> None:
    products = [
        inits.get(n)(weight, rank=8, scale=2.0).B @ inits.get(n)(weight, rank=8, scale=2.0).A
        for n in SVD_METHODS
    ]
    assert not torch.allclose(products[0], products[1])
    assert not torch.allclose(products[0], products[2])


@pytest.mark.parametrize("name", ["lora", *SVD_METHODS])
def test_model_outputs_unchanged_at_init(name: str, backbone) -> None:
    """Attaching a freshly initialized LoRA to the real encoder changes nothing it computes."""
    model = ContinualClassifier(copy.deepcopy(backbone), shared_head=False)
    model.add_head(0, 2)
    model.eval()
    inputs = backbone.collate(SENTENCES)
    before = model(inputs, 0)
    attach_lora(
        model,
        LoRASettings(rank=8, alpha=16),
        backbone.target_modules,
        inits.get(name),
        {},
        stats={},
        generator=torch.Generator().manual_seed(0),
    )
    assert len(lora_layers(model.encoder)) == 36
    torch.testing.assert_close(model(inputs, 0), before, atol=1e-4, rtol=1e-4)
    merge_lora(model)
    assert not lora_layers(model.encoder)
    torch.testing.assert_close(model(inputs, 0), before, atol=1e-4, rtol=1e-4)
