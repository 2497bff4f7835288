"""``seq-ft``: sequential full fine-tuning, no LoRA -- the forgetting ceiling.

Every encoder parameter (embeddings included) trains on every task, one task after another,
with nothing that protects earlier tasks. Full fine-tuning wants a much smaller learning rate
than a LoRA adapter (BERT's fine-tuning recipe, Devlin et al. 2019, uses 2e-5..5e-5), so the
encoder's rate is this baseline's own argument ``encoder_lr``
(``--baseline-arg encoder_lr=...``); ``--lr``
is the adapter rate and does not apply. Heads train at ``--head-lr`` as everywhere.

In bf16 (a language model on CUDA) AdamW would update the bf16 weights in place: a step of
5e-5 is below half a bf16 step for every weight above ~0.016, so most updates would round away.
The optimizer therefore keeps float32 master copies of lower-precision weights
(:func:`keep_float32_masters`): it steps them and writes each back, rounded once. With AdamW's
two float32 moments that is 14 bytes per bf16 parameter on top of the weight itself, which a
CUDA run checks against the device's memory before the first task (one line when it cannot fit).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from cl_lora.arguments import Argument
from cl_lora.baselines.registry import register
from cl_lora.errors import BadInputError

if TYPE_CHECKING:  # types only: registering a baseline must not load Avalanche or PEFT
    from cl_lora.backbones import ContinualClassifier


@register(
    "seq-ft",
    "sequential full fine-tuning, no LoRA: the forgetting ceiling",
    uses_init=False,
    arguments={"encoder_lr": Argument(float, 5e-5, "learning rate of the encoder's weights")},
    no_adapter="it trains every encoder weight, which no low-rank adapter holds",
)
class SequentialFineTuning:
    """All encoder weights train on each task in turn (AdamW, the suite's schedule)."""

    def __init__(self, *, encoder_lr: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lr = encoder_lr  # the encoder group of the per-task optimizer

    def prepare_encoder(self, model: ContinualClassifier, generator: torch.Generator) -> int:
        check_master_memory(model.encoder, self.device)
        model.encoder.requires_grad_(True)
        return sum(p.numel() for p in model.encoder.parameters())

    def make_optimizer(self, **kwargs: Any) -> None:
        """The task's optimizer, stepping float32 masters of lower-precision weights."""
        super().make_optimizer(**kwargs)
        keep_float32_masters(self.optimizer)


LOW_PRECISION = (torch.bfloat16, torch.float16)
BYTES_PER_LOW_PARAMETER = 2 + 2 + 4 + 8  # weight, gradient, float32 master, AdamW's moments


def keep_float32_masters(optimizer: torch.optim.Optimizer) -> None:
    """Make ``optimizer`` step float32 copies of its bf16/fp16 parameters and write them back.

    A pre-step hook swaps each such parameter in its group for its float32 master (made on the
    first step, then kept by the optimizer for its lifetime) and hands it the gradient in float32;
    the post-step hook copies the master into the parameter (one rounding) and swaps it back.
    Gradient clipping, ``zero_grad`` and the schedule keep seeing the model's own parameters.
    """
    masters: dict[int, torch.Tensor] = {}  # id of the parameter -> its master
    stepping: dict[int, torch.Tensor] = {}  # id of the master -> its parameter, during a step

    def before_step(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for group in opt.param_groups:
            params = group["params"]
            for i, param in enumerate(params):
                if param.dtype not in LOW_PRECISION:
                    continue
                master = masters.setdefault(id(param), param.detach().float())
                master.grad = None if param.grad is None else param.grad.float()
                stepping[id(master)] = param
                params[i] = master

    @torch.no_grad()
    def after_step(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for group in opt.param_groups:
            params = group["params"]
            for i, master in enumerate(params):
                if id(master) in stepping:
                    params[i] = stepping.pop(id(master))
                    params[i].copy_(master)
                    master.grad = None

    optimizer.register_step_pre_hook(before_step)
    optimizer.register_step_post_hook(after_step)


def check_master_memory(encoder: torch.nn.Module, device: torch.device) -> None:
    """On CUDA, refuse at once (one line) a bf16/fp16 encoder whose full fine-tuning state --
    weight, gradient, float32 master and AdamW's two moments -- exceeds the device's memory,
    instead of running out of memory mid-task."""
    if device.type != "cuda":
        return
    low = sum(p.numel() for p in encoder.parameters() if p.dtype in LOW_PRECISION)
    need = low * BYTES_PER_LOW_PARAMETER
    total = torch.cuda.get_device_properties(device).total_memory
    if need > total:
        fits = total / BYTES_PER_LOW_PARAMETER / 1e9
        raise BadInputError(
            f"seq-ft of this {low / 1e9:.1f}B-parameter bf16 model needs {need / 1e9:.0f} GB "
            f"for weights, gradients, float32 master weights and AdamW's moments "
            f"({BYTES_PER_LOW_PARAMETER} bytes per parameter), more than the GPU's "
            f"{total / 1e9:.0f} GB: use a model of at most {fits:.1f}B parameters or a LoRA method"
        )
