"""LoRA-Init picks the singular directions a warm-up changes most, relative to their strength."""

from __future__ import annotations

import torch

from cl_lora import inits
from cl_lora.inits.lora_dash import change_rates


def test_lora_init_picks_the_directions_with_the_largest_change_rate() -> None:
    g = torch.Generator().manual_seed(0)
    U = torch.linalg.qr(torch.randn(40, 12, generator=g))[0]
    V = torch.linalg.qr(torch.randn(30, 12, generator=g))[0]
    S = torch.linspace(12.0, 1.0, 12)
    weight = U @ torch.diag(S) @ V.T
    # The warm-up moves components 9 and 4 most relative to their strength (rates 0.5 and
    # 0.3), component 0 by the largest absolute amount but the smallest rate (0.5 / 12).
    # as factors (left @ right), the form the warm-up hands over
    left = torch.stack([0.5 * S[9] * U[:, 9], 0.3 * S[4] * U[:, 4], 0.5 * U[:, 0]], dim=1)
    delta = (left, V[:, [9, 4, 0]].T)
    rates = change_rates(U, S, V.T, delta)
    torch.testing.assert_close(rates[[9, 4, 0]], torch.tensor([0.5, 0.3, 0.5 / 12.0]))

    factors = inits.get("lora-init")(
        weight, rank=2, scale=2.0, stats={"warmup_delta": delta}, warmup_steps=1
    )
    chosen = U[:, [9, 4]] @ torch.diag(S[[9, 4]]) @ V[:, [9, 4]].T
    torch.testing.assert_close(2.0 * factors.B @ factors.A, chosen, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(factors.residual + 2.0 * factors.B @ factors.A, weight)
