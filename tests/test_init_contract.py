"""The init contract: every registered method passes the conformance check plugin authors run,
and on real MiniLM weights the residual identity holds, arguments are checked and the model's
outputs do not move at init."""

from __future__ import annotations

import copy

import pytest
import torch

from cl_lora import inits
from cl_lora.backbones import ContinualClassifier, load_text_backbone
from cl_lora.errors import BadInputError
from cl_lora.inits import Argument, InitMethod, LoRAFactors
from cl_lora.inits.testing import check_init_method
from cl_lora.lora import LoRASettings, attach_lora, lora_layers, merge_lora

RANK, ALPHA = 8, 16.0
SCALE = ALPHA / RANK
SVD_METHODS = ["pissa", "milora", "intermediate"]
TRAINABLE = {
    "lora": {"A", "B"},
    "pissa": {"A", "B"},
    "milora": {"A", "B"},
    "intermediate": {"A", "B"},
    "gaussian": {"A", "B"},
    "olora": {"A", "B"},
    "mica": {"A"},
    "lora-null": {"A", "B"},
    "lora-null-v2": {"B"},
    "corda-kpm": {"A", "B"},
    "corda-ipm": {"A", "B"},
    "eva": {"A", "B"},
    "lora-ga": {"A", "B"},
}
SENTENCES = [{"text": "a quiet, moving film"}, {"text": "win a free prize now, text 80082"}]


@pytest.fixture(scope="module")
def minilm():
    return load_text_backbone()


@pytest.mark.parametrize("name", sorted(TRAINABLE))
def test_residual_identity_shapes_and_trainable(
    name: str, weight: torch.Tensor, stats: dict[str, torch.Tensor]
) -> None:
    method = inits.get(name)
    needed = {key: stats[key] for key in method.needs}
    factors = method(
        weight, rank=RANK, scale=SCALE, stats=needed, generator=torch.Generator().manual_seed(0)
    )
    assert factors.A.shape == (RANK, 384) and factors.B.shape == (1536, RANK)
    assert factors.A.dtype == factors.B.dtype == factors.residual.dtype == torch.float32
    assert factors.trainable == TRAINABLE[name]
    rebuilt = factors.residual + SCALE * factors.B @ factors.A
    torch.testing.assert_close(rebuilt, weight, atol=1e-4, rtol=1e-4)


def test_bad_arguments_are_one_line_errors(weight: torch.Tensor) -> None:
    with pytest.raises(BadInputError, match="rank 400 does not fit"):
        inits.get("pissa")(weight, rank=400, scale=1.0)
    with pytest.raises(BadInputError, match="does not take g"):
        inits.get("intermediate")(weight, rank=8, scale=1.0, g=0.5)
    with pytest.raises(BadInputError, match="outside"):
        inits.get("intermediate")(weight, rank=8, scale=1.0, f=1.5)
    with pytest.raises(BadInputError, match="did you mean 'pissa'"):
        inits.get("pisa")


@pytest.mark.parametrize("name", ["lora", *SVD_METHODS])
def test_model_outputs_unchanged_at_init(name: str, minilm) -> None:
    """Attaching a freshly initialized LoRA to the real encoder changes nothing it computes."""
    model = ContinualClassifier(copy.deepcopy(minilm), shared_head=False)
    model.add_head(0, 2)
    model.eval()
    inputs = minilm.collate(SENTENCES)
    before = model(inputs, 0)
    attach_lora(
        model,
        LoRASettings(rank=8, alpha=16),
        minilm.target_modules,
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


@pytest.mark.parametrize("name", inits.available())
def test_builtin_method_conforms(name: str) -> None:
    check_init_method(name)


class _Broken(InitMethod):
    """Forgets to take the update out of the residual."""

    arguments = {"k": Argument(int, 1, "unused")}

    def factors(self, weight, *, rank, scale, stats, generator, k):
        A = torch.randn(rank, weight.shape[1], generator=generator)
        B = torch.randn(weight.shape[0], rank, generator=generator)
        return LoRAFactors(A=A, B=B, residual=weight.clone())


def test_a_broken_method_is_caught() -> None:
    with pytest.raises(AssertionError, match="residual \\+ s B A differs"):
        check_init_method(_Broken())
