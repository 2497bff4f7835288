"""Each init method's defining property on real MiniLM weights, and agreement with PEFT where PEFT
has the method."""

from __future__ import annotations

# isort: off
import cl_lora  # noqa: F401  (its torchvision shim must run before peft imports transformers)

# isort: on
import dataclasses
import importlib
import importlib.util
import sys
import types

import pytest
import torch
from conftest import low_rank_inputs
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraGAConfig
from peft.tuners.lora.config import CordaConfig
from peft.utils.incremental_pca import IncrementalPCA
from scipy.stats import kstest
from torch import nn

from cl_lora import inits
from cl_lora.errors import BadInputError
from cl_lora.inits.corda import damped_inverse
from cl_lora.inits.factors import window_svd

RANK, ALPHA = 8, 16.0
SCALE = ALPHA / RANK
SVD_METHODS = ["pissa", "milora", "intermediate"]


class OneLinear(nn.Module):
    """The smallest model PEFT can wrap: one ``nn.Linear`` holding ``weight``."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            self.lin.weight.copy_(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def peft_init(
    model: OneLinear, **config: object
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(A, B, residual)`` that PEFT's own init writes into the wrapped layer."""
    lora_config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=["lin"], **config)
    layer = get_peft_model(model, lora_config).base_model.model.lin
    assert layer.scaling["default"] == SCALE
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    return A.detach(), B.detach(), layer.get_base_layer().weight.detach()


def align_signs(ours: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
    """``ours`` with each row's sign flipped to match ``theirs`` (singular vectors have no sign)."""
    return ours * torch.sign((ours * theirs).sum(dim=1, keepdim=True))


def test_gaussian_draws_a_with_variance_one_over_r(weight: torch.Tensor) -> None:
    gaussian = inits.get("gaussian")
    factors = gaussian(weight, rank=RANK, scale=SCALE, generator=torch.Generator().manual_seed(0))
    assert torch.equal(factors.B, torch.zeros_like(factors.B))
    assert torch.equal(factors.residual, weight)
    assert abs(factors.A.std().item() * RANK**0.5 - 1) < 0.05
    assert abs(factors.A.mean().item()) < 0.05
    again = gaussian(weight, rank=RANK, scale=SCALE, generator=torch.Generator().manual_seed(0))
    assert torch.equal(factors.A, again.A)


def test_olora_equals_peft(weight: torch.Tensor) -> None:
    A, B, residual = peft_init(OneLinear(weight), init_lora_weights="olora")
    ours = inits.get("olora")(weight, rank=RANK, scale=SCALE)
    torch.testing.assert_close(ours.A, A, atol=0, rtol=0)
    torch.testing.assert_close(ours.B, B, atol=0, rtol=0)
    torch.testing.assert_close(ours.residual, residual, atol=0, rtol=0)
    torch.testing.assert_close(ours.B.T @ ours.B, torch.eye(RANK), atol=1e-5, rtol=0)


def test_mica_equals_peft_and_freezes_b(weight: torch.Tensor) -> None:
    model = OneLinear(weight)
    A, B, residual = peft_init(model, init_lora_weights="mica")
    ours = inits.get("mica")(weight, rank=RANK, scale=SCALE)
    torch.testing.assert_close(ours.A, A, atol=0, rtol=0)
    torch.testing.assert_close(ours.B, B, atol=0, rtol=0)
    torch.testing.assert_close(ours.residual, residual, atol=0, rtol=0)
    peft_trainable = {
        factor
        for factor in ("A", "B")
        if getattr(model.lin, f"lora_{factor}")["default"].weight.requires_grad
    }
    assert ours.trainable == peft_trainable == {"A"}
    minor = torch.linalg.svd(weight, full_matrices=False)[0][:, -RANK:]
    torch.testing.assert_close(ours.B @ ours.B.T, minor @ minor.T, atol=1e-5, rtol=0)


def test_lora_null_reads_nothing_of_the_calibration_inputs(
    weight: torch.Tensor, calibration: torch.Tensor, stats: dict[str, torch.Tensor]
) -> None:
    factors = inits.get("lora-null")(weight, rank=RANK, scale=SCALE, stats=stats)
    random_inputs = torch.randn(calibration.shape, generator=torch.Generator().manual_seed(2))
    random_inputs *= calibration.norm() / random_inputs.norm()
    on_knowledge = (factors.A @ calibration.T).norm()
    on_random = (factors.A @ random_inputs.T).norm()
    assert on_knowledge < 1e-2 * on_random
    # The frozen residual alone reproduces the layer on the calibration inputs.
    drift = (calibration @ (factors.residual - weight).T).norm()
    assert drift < 1e-2 * (calibration @ weight.T).norm()
    # s B A is exactly the projection W Q Q^T onto the r least-excited input directions.
    null = torch.linalg.eigh(stats["input_cov"].double())[1][:, :RANK].float()
    torch.testing.assert_close(
        SCALE * factors.B @ factors.A, weight @ null @ null.T, atol=1e-5, rtol=1e-4
    )


def test_lora_null_v2_is_lora_null_with_a_frozen(
    weight: torch.Tensor, stats: dict[str, torch.Tensor]
) -> None:
    v1 = inits.get("lora-null")(weight, rank=RANK, scale=SCALE, stats=stats)
    v2 = inits.get("lora-null-v2")(weight, rank=RANK, scale=SCALE, stats=stats)
    torch.testing.assert_close(v2.A, v1.A, atol=0, rtol=0)
    torch.testing.assert_close(v2.B, v1.B, atol=0, rtol=0)
    assert v1.trainable == {"A", "B"} and v2.trainable == {"B"}


@pytest.fixture
def peft_corda(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """PEFT's CorDA module. It imports ``attr`` (the attrs package) for one plain dataclass, but
    attrs is no dependency of peft and is not installed here: ``dataclasses.dataclass`` does the
    same for that class."""
    if importlib.util.find_spec("attr") is None:
        stand_in = types.SimpleNamespace(dataclass=dataclasses.dataclass)
        monkeypatch.setitem(sys.modules, "attr", stand_in)
    return importlib.import_module("peft.tuners.lora.corda")


@pytest.mark.parametrize("mode", ["kpm", "ipm"])
def test_corda_equals_peft(
    mode: str, weight: torch.Tensor, calibration: torch.Tensor, peft_corda: types.ModuleType
) -> None:
    """PEFT's own pipeline (hook -> covariance -> damped decomposition -> corda_init) on the same
    weight and inputs. PEFT scales the inputs by their largest value, so its covariance is ours
    over ``max(X)^2`` and its factors are ours times ``kappa`` (``B``) and ``1 / kappa`` (``A``),
    ``kappa^2`` = the mean eigenvalue of its covariance; the product and residual agree as is."""
    inputs = calibration + 0.3  # not centred, as real activations
    model = OneLinear(weight)
    config = LoraConfig(
        r=RANK,
        lora_alpha=ALPHA,
        target_modules=["lin"],
        init_lora_weights="corda",
        corda_config=CordaConfig(corda_method=mode),
    )
    peft_corda.preprocess_corda(model, config, run_model=lambda: model(inputs[None]))
    layer = get_peft_model(model, config).base_model.model.lin
    A, B = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
    residual = layer.get_base_layer().weight.detach()

    ours = inits.get(f"corda-{mode}")(
        weight, rank=RANK, scale=SCALE, stats={"input_cov": inputs.T @ inputs}
    )
    product = B @ A
    torch.testing.assert_close(ours.B @ ours.A, product, atol=1e-3 * product.abs().max(), rtol=0)
    torch.testing.assert_close(ours.residual, residual, atol=1e-3 * weight.abs().max(), rtol=0)
    kappa = ((inputs**2).sum() / (inputs.shape[1] * inputs.max() ** 2)).sqrt()
    our_A = align_signs(ours.A / kappa, A)
    our_B = align_signs((ours.B * kappa).T, B.T).T
    # Factor by factor only to float32 accuracy: PEFT decomposes in float32, where the close
    # minor singular values of W C (the KPM window) leave their vectors slightly rotated.
    torch.testing.assert_close(our_A, A, atol=5e-3 * A.abs().max().item(), rtol=0)
    torch.testing.assert_close(our_B, B, atol=5e-3 * B.abs().max().item(), rtol=0)


def test_corda_modes_take_opposite_ends_of_w_c(
    weight: torch.Tensor, stats: dict[str, torch.Tensor]
) -> None:
    """``s B A C_d`` is the window of ``W C_d``: its first ``r`` (IPM) or last ``r`` (KPM) part."""
    damped, _ = damped_inverse(stats["input_cov"].double())
    S = torch.linalg.svdvals(weight.double() @ damped)
    for mode, expected in [("ipm", S[:RANK]), ("kpm", S[-RANK:])]:
        factors = inits.get(f"corda-{mode}")(weight, rank=RANK, scale=SCALE, stats=stats)
        product = SCALE * factors.B.double() @ factors.A.double()
        window = torch.linalg.svdvals(product @ damped)[:RANK]
        torch.testing.assert_close(window, expected, rtol=1e-4, atol=1e-6)


def test_eva_rows_are_the_top_right_singular_vectors_of_the_inputs(
    weight: torch.Tensor,
) -> None:
    # Well-separated leading directions (so each singular vector is well defined), centred so
    # that PEFT's PCA and a plain SVD decompose the same matrix.
    inputs = low_rank_inputs(1200, spread=torch.logspace(1, -1, 40), noise=1e-3, seed=3)
    inputs -= inputs.mean(dim=0)
    factors = inits.get("eva")(
        weight, rank=RANK, scale=SCALE, stats={"input_cov": inputs.T @ inputs}
    )
    assert torch.equal(factors.B, torch.zeros_like(factors.B))
    assert torch.equal(factors.residual, weight)
    top = torch.linalg.svd(inputs, full_matrices=False)[2][:RANK]
    torch.testing.assert_close(align_signs(factors.A, top), top, atol=1e-4, rtol=0)
    # PEFT's EVA hook: incremental low-rank PCA over batches, 2r components (rho = 2), seed 42.
    pca = IncrementalPCA(n_components=2 * RANK, copy=True, lowrank=True, lowrank_seed=42)
    for batch in inputs.split(300):
        pca.partial_fit(batch)
    peft_A = pca.components_[:RANK]
    torch.testing.assert_close(align_signs(factors.A, peft_A), peft_A, atol=1e-3, rtol=0)


def test_lora_ga_first_step_is_the_best_rank_2r_gradient_step(
    weight: torch.Tensor, stats: dict[str, torch.Tensor]
) -> None:
    """Paper, §3.2: ``B B^T G + G A^T A = c^2 G_2r`` for both index splits."""
    G = stats["grad"]
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    best = U[:, : 2 * RANK] @ torch.diag(S[: 2 * RANK]) @ Vh[: 2 * RANK]
    c2 = 1536**0.5 / 16
    for direction in ["ArB2r", "A2rBr"]:
        f = inits.get("lora-ga")(
            weight, rank=RANK, scale=SCALE, stats={"grad": G}, direction=direction
        )
        first_step = f.B @ f.B.T @ G + G @ f.A.T @ f.A
        torch.testing.assert_close(first_step, c2 * best, atol=1e-6, rtol=1e-4)
    a_first = inits.get("lora-ga")(weight, rank=RANK, scale=SCALE, stats={"grad": G})
    torch.testing.assert_close(align_signs(a_first.A, Vh[:RANK]), 1536**0.25 / 4 * Vh[:RANK])


def test_lora_ga_peft_variant_equals_peft(
    weight: torch.Tensor, stats: dict[str, torch.Tensor]
) -> None:
    """PEFT's ``lora_ga_init`` with its defaults (ArB2r, stable, gamma 16). PEFT uses a randomized
    SVD, so singular vectors agree up to sign, and so do the rank-one terms of ``B A``."""
    model = OneLinear(weight)
    model.lin._peft_loraga_grad = stats["grad"].clone()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        A, B, residual = peft_init(
            model, init_lora_weights="lora_ga", lora_ga_config=LoraGAConfig()
        )
    ours = inits.get("lora-ga")(
        weight, rank=RANK, scale=SCALE, stats={"grad": stats["grad"]}, variant="peft"
    )
    torch.testing.assert_close(align_signs(ours.A, A), A, atol=1e-5, rtol=0)
    torch.testing.assert_close(align_signs(ours.B.T, B.T).T, B, atol=1e-4, rtol=0)
    torch.testing.assert_close(residual + SCALE * B @ A, weight, atol=1e-5, rtol=1e-5)


def test_bad_inputs(weight: torch.Tensor, stats: dict[str, torch.Tensor]) -> None:
    with pytest.raises(ValueError, match="needs statistics"):
        inits.get("lora-null")(weight, rank=RANK, scale=SCALE)
    with pytest.raises(ValueError, match="must be 384x384"):
        inits.get("eva")(weight, rank=RANK, scale=SCALE, stats={"input_cov": torch.eye(10)})
    with pytest.raises(BadInputError, match="at most 192"):
        inits.get("lora-ga")(weight, rank=193, scale=SCALE, stats=stats)
    with pytest.raises(BadInputError, match="ArB2r or A2rBr"):
        inits.get("lora-ga")(weight, rank=RANK, scale=SCALE, stats=stats, direction="BA")
    with pytest.raises(BadInputError, match="paper or peft"):
        inits.get("lora-ga")(weight, rank=RANK, scale=SCALE, stats=stats, variant="x")
    with pytest.raises(BadInputError, match="zero or not finite"):
        inits.get("corda-kpm")(
            weight, rank=RANK, scale=SCALE, stats={"input_cov": torch.zeros(384, 384)}
        )


def test_pissa_equals_peft(weight: torch.Tensor) -> None:
    A, B, residual = peft_init(OneLinear(weight), init_lora_weights="pissa")
    ours = inits.get("pissa")(weight, rank=RANK, scale=SCALE)
    torch.testing.assert_close(ours.B @ ours.A, B @ A, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.residual, residual, atol=1e-4, rtol=1e-4)


def test_randomized_pissa_matches_peft_and_converges_to_the_full_svd(weight: torch.Tensor) -> None:
    """``niter`` is PEFT's ``pissa_niter_<n>``. On MiniLM's flat spectrum (singular values 6.60
    and 6.53 at the window's edge) 4 iterations find a window of 98.7% of the exact one's norm,
    in ours and in PEFT's alike, but not the exact directions; 64 iterations find those."""

    def norm_ratio(x: torch.Tensor, y: torch.Tensor) -> float:
        return float(x.norm() / y.norm())

    exact = inits.get("pissa")(weight, rank=RANK, scale=SCALE)
    exact_delta = exact.B @ exact.A
    torch.manual_seed(0)
    A, B, _ = peft_init(OneLinear(weight), init_lora_weights="pissa_niter_4")
    ours = inits.get("pissa")(weight, rank=RANK, scale=SCALE, niter=4)
    assert norm_ratio(ours.B @ ours.A, exact_delta) > 0.98
    assert norm_ratio(B @ A, exact_delta) > 0.98
    torch.testing.assert_close(ours.residual + SCALE * ours.B @ ours.A, weight, atol=1e-4, rtol=0)
    torch.manual_seed(0)
    converged = inits.get("pissa")(weight, rank=RANK, scale=SCALE, niter=64)
    assert norm_ratio(converged.B @ converged.A - exact_delta, exact_delta) < 0.05
    with pytest.raises(BadInputError, match="niter=-1 is negative"):
        inits.get("pissa")(weight, rank=RANK, scale=SCALE, niter=-1)


def test_lora_starts_at_zero_with_pefts_kaiming_uniform_a(weight: torch.Tensor) -> None:
    """PEFT's default LoRA init draws ``A`` with ``nn.init.kaiming_uniform_(A, a=sqrt(5))``
    (peft 0.21.2, ``peft/tuners/lora/layer.py`` line 338) and zeroes ``B`` (line 343). With
    ``a = sqrt(5)`` torch's gain is ``sqrt(2 / (1 + 5))`` (``torch/nn/init.py`` line 238) and the
    bound ``sqrt(3) * gain / sqrt(fan_in)`` (lines 613-614): ``A ~ U(-1/sqrt(in), 1/sqrt(in))``,
    mean 0 and variance ``1 / (3 in)``. Ours and PEFT's own draw must both follow that law."""
    bound = 1 / weight.shape[1] ** 0.5
    ours = inits.get("lora")(weight, rank=RANK, scale=SCALE, generator=torch.Generator())
    assert torch.equal(ours.residual, weight)
    torch.manual_seed(0)
    peft_A, peft_B, _ = peft_init(OneLinear(weight))
    for name, A, B in [("ours", ours.A, ours.B), ("peft", peft_A, peft_B)]:
        assert torch.equal(B, torch.zeros_like(B)), name
        A = A.double().flatten()  # 8 x 384 draws: mean within 4 standard errors, variance 6%
        assert abs(A.mean().item()) < 4 * bound / (3 * A.numel()) ** 0.5, name
        assert A.var().item() == pytest.approx(bound**2 / 3, rel=0.06), name
        assert A.abs().max().item() <= bound, name  # never outside the bound, and up to it
        assert A.max().item() > 0.99 * bound and A.min().item() < -0.99 * bound, name
        assert kstest(A.numpy(), "uniform", (-bound, 2 * bound)).pvalue > 1e-3, name
    seeded = [
        inits.get("lora")(
            weight, rank=RANK, scale=SCALE, generator=torch.Generator().manual_seed(s)
        )
        for s in (1, 1, 2)
    ]
    assert torch.equal(seeded[0].A, seeded[1].A) and not torch.equal(seeded[0].A, seeded[2].A)


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


def test_methods_give_different_factors(weight: torch.Tensor) -> None:
    products = [
        inits.get(n)(weight, rank=8, scale=2.0).B @ inits.get(n)(weight, rank=8, scale=2.0).A
        for n in SVD_METHODS
    ]
    assert not torch.allclose(products[0], products[1])
    assert not torch.allclose(products[0], products[2])


@pytest.mark.parametrize("shape", [(96, 32), (32, 96), (36, 32), (32, 36)])
def test_window_svd_is_the_window_of_the_full_svd(shape: tuple[int, int]) -> None:
    """On the CPU ``window_svd`` decomposes the tall orientation, QR first when it is at least 1.5
    times taller than wide (96x32, 32x96); either way the window is that of the full SVD."""
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    U, S, Vh = torch.linalg.svd(weight.double(), full_matrices=False)
    k = min(shape)
    for window in (slice(0, 8), slice(12, 20), slice(k - 8, k)):
        U_w, S_w, Vh_w = window_svd(weight, window)
        assert U_w.shape == (shape[0], 8) and Vh_w.shape == (8, shape[1])
        torch.testing.assert_close(S_w.double(), S, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(U_w.T @ U_w, torch.eye(8), atol=1e-5, rtol=0)
        torch.testing.assert_close(Vh_w @ Vh_w.T, torch.eye(8), atol=1e-5, rtol=0)
        torch.testing.assert_close(
            ((U_w * S_w[window]) @ Vh_w).double(),
            (U[:, window] * S[window]) @ Vh[window],
            atol=1e-4,  # float32 round-off, as torch.linalg.svd's own (36x32 takes that path)
            rtol=0,
        )
