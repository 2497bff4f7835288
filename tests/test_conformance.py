"""Every registered init method passes the conformance check plugin authors run."""

from __future__ import annotations

import pytest
import torch

from cl_lora import inits
from cl_lora.inits import Argument, InitMethod, LoRAFactors
from cl_lora.inits.testing import check_init_method


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
