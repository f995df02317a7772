"""Policy sync after an optimizer step, both modes: the engine's greedy tokens and logprobs then equal the HF
path's with the updated adapter; before the sync they do not (the step moved the policy)."""

import pytest
import torch
from vllm_helpers import (
    assert_same_greedy,
    build_tiny,
    engine_greedy,
    hf_greedy,
    oracle_inputs,
    start_engine,
)

from grpo_ao.errors import GrpoAoError
from grpo_ao.models import LoraSettings, attach_lora
from grpo_ao.vllm.weights import base_state_dict


@pytest.fixture(scope="module", params=["merge", "lora"])
def setup(request, tmp_path_factory):
    model, tok = build_tiny("qwen3")
    peft_model = attach_lora(model, LoraSettings(r=8, alpha=16, dropout=0.0))
    engine = start_engine(peft_model, tok, tmp_path_factory.mktemp(request.param), sync=request.param)
    yield peft_model, tok, engine
    engine.close()


def optimizer_step(model, tok, seed):
    """One AdamW step on a next-token loss over random text: every LoRA matrix moves."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, len(tok), (4, 24), generator=g)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    model.eval()


def test_the_saved_base_checkpoint_has_no_adapter(setup):
    model = setup[0]
    names = base_state_dict(model)
    assert names and not any("lora" in n or "base_layer" in n for n in names)
    assert "model.layers.0.self_attn.q_proj.weight" in names


def test_engine_follows_the_adapter_after_each_optimizer_step(setup):
    model, tok, engine = setup
    inputs = oracle_inputs(tok, [3, 1, 5], seed=7)
    for step in range(2):  # twice: a second sync must replace the first delta, not add to it
        optimizer_step(model, tok, seed=step)
        hf, hf_lp = hf_greedy(model, tok, inputs, 10)
        stale = engine_greedy(engine, inputs, 10)
        assert ((stale.sampling_logprobs - hf_lp).abs() * hf.completion_mask).max() > 1e-3, "the step moved nothing"
        engine.sync_weights(model)
        assert_same_greedy(engine_greedy(engine, inputs, 10), hf, hf_lp)


def test_parity_check_stops_on_stale_weights(setup):
    model, tok, engine = setup
    inputs = oracle_inputs(tok, [3, 1, 5], seed=8)
    engine.sync_weights(model)
    assert engine.parity_check(model, tok, inputs).max_abs_logprob_diff <= 1e-4
    optimizer_step(model, tok, seed=9)  # no sync after this step
    with pytest.raises(GrpoAoError, match="parity check failed"):
        engine.parity_check(model, tok, inputs)
