"""`model.source: random`: shipped architectures with random weights and the offline tokenizer (no download), and a
mistyped `model.source` as a user error. The Qwen3-8B shape is checked on the `meta` device (no memory)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grpo_ao.config import load_config, shipped_configs
from grpo_ao.errors import GrpoAoError
from grpo_ao.format import SPECIAL_TOKEN, render_oracle_prompt
from grpo_ao.models import (
    SHIPPED_SOURCES,
    LoraSettings,
    ModelConfig,
    attach_lora,
    load_model,
    random_architecture_config,
    random_architectures,
)
from grpo_ao.random_model import build_random_model

GRPO_AO = str(Path(sys.executable).with_name("grpo-ao"))


def test_three_architectures_are_shipped_and_each_shipped_config_names_one():
    assert random_architectures() == ["qwen3-8b", "qwen3-tiny", "smollm2-135m"]
    named = {name: load_config(name).model.random_architecture for name in shipped_configs()}
    assert named == {"qwen3-8b": "qwen3-8b", "smollm2": "smollm2-135m", "tiny": "qwen3-tiny"}


def test_qwen3_8b_random_model_has_the_published_shape_in_bf16_without_materialising():
    model, _ = build_random_model("qwen3-8b", torch.device("meta"), "bfloat16", 0)
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == \
        (36, 4096, 32, 8, 128)
    assert (c.intermediate_size, c.vocab_size, c.rope_theta if hasattr(c, "rope_theta") else
            c.rope_parameters["rope_theta"], c.rms_norm_eps, c.tie_word_embeddings) == (12288, 151936, 1e6, 1e-6, False)
    params = list(model.parameters())
    # 36·(4·4096² · (1 + 2·1024/4096) ... ) summed by transformers: 8,190,735,360 (Qwen3-8B's published 8.2 B)
    assert sum(p.numel() for p in params) == 8_190_735_360
    assert {p.device.type for p in params} == {"meta"} and {p.dtype for p in params} == {torch.bfloat16}


def test_smollm2_architecture_has_its_published_shape():
    model, _ = build_random_model("smollm2-135m", torch.device("meta"), "float32", 0)
    c = model.config
    assert (type(model).__name__, c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads,
            c.intermediate_size, c.vocab_size, c.tie_word_embeddings) == ("LlamaForCausalLM", 30, 576, 9, 3, 1536,
                                                                          49152, True)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # SmolLM2-135M


@pytest.mark.parametrize("name", ["qwen3-8b", "qwen3-tiny", "smollm2-135m"])
def test_every_token_id_of_the_offline_tokenizer_is_inside_each_vocabulary(name, tokenizer):
    vocab = random_architecture_config(name)["vocab_size"]
    assert len(tokenizer) <= vocab
    for token in ("<|im_start|>", "<|im_end|>", tokenizer.pad_token):
        assert tokenizer.convert_tokens_to_ids(token) not in (None, tokenizer.unk_token_id), token
    assert len(tokenizer(SPECIAL_TOKEN, add_special_tokens=False)["input_ids"]) == 1, "' ?' must be one token"
    prompt = render_oracle_prompt(tokenizer, "Is it about cats?", 9, 3, "a system prompt", mode="merged")
    assert max(prompt.input_ids) < vocab


def test_random_source_loads_on_the_cpu_with_the_tokenizers_end_of_turn_and_is_seeded():
    cfg = ModelConfig(source="random", random_architecture="qwen3-tiny", dtype="bfloat16", device="cpu", seed=3)
    model, tokenizer = load_model(cfg)
    again, _ = load_model(cfg)
    other, _ = load_model(ModelConfig(source="random", random_architecture="qwen3-tiny", device="cpu", seed=4))
    weight = model.model.layers[0].mlp.up_proj.weight
    assert weight.dtype == torch.bfloat16 and weight.device.type == "cpu" and not model.training
    assert torch.equal(weight, again.model.layers[0].mlp.up_proj.weight)
    assert not torch.equal(weight.float(), other.model.layers[0].mlp.up_proj.weight)
    std = float(weight.detach().float().std())
    assert 0.015 < std < 0.025, "the architecture's own init: std initializer_range = 0.02"
    im_end, pad = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.pad_token_id
    assert model.generation_config.eos_token_id == [im_end, pad] and model.config.pad_token_id == pad


def test_random_source_needs_a_shipped_architecture():
    with pytest.raises(GrpoAoError, match="model.random_architecture"):
        ModelConfig(source="random")
    with pytest.raises(GrpoAoError, match="qwen3-8b"):
        ModelConfig(source="random", random_architecture="qwen3-9b")
    assert load_config("qwen3-8b", ["model.source=random"]).model.random_architecture == "qwen3-8b"


def test_random_weights_get_a_fresh_lora_instead_of_a_hub_adapter(capsys):
    model, _ = load_model(ModelConfig(source="random", random_architecture="qwen3-tiny", device="cpu"))
    peft = attach_lora(model, LoraSettings(r=4), adapter="nobody/not-an-adapter")  # would need a download
    assert "not loaded" in capsys.readouterr().out
    assert peft.peft_config["default"].r == 4


def _cli(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # no 45 s of retries against an unreachable hub
    return subprocess.run([GRPO_AO, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_a_mistyped_source_exits_2_naming_the_shipped_sources_and_the_hub_error(tmp_path):
    out = _cli("bench", "--config", "tiny", "model.source=smolm2", f"--output-dir={tmp_path / 'run'}", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert ", ".join(SHIPPED_SOURCES) in out.stderr and "Did you mean model.source=smollm2?" in out.stderr
    assert "smolm2" in out.stderr and "Error" in out.stderr, "the hub error is named"


def test_a_folder_without_a_model_as_source_exits_2(tmp_path):
    (tmp_path / "empty").mkdir()  # the tokenizer loader raises ValueError here, not OSError
    out = _cli("bench", "--config", "tiny", f"model.source={tmp_path / 'empty'}", f"--output-dir={tmp_path / 'run'}",
               cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and "not a shipped source" in out.stderr
