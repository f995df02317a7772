"""Extraction and injection on the tiny Qwen3, written to fail on the classic mistakes:
off-by-one layer, injection on decode steps, wrong rows/positions, adapter left on, zero vectors."""

import pytest
import torch

from grpo_ao.format import left_pad, render_oracle_prompt
from grpo_ao.models import LoraSettings, attach_lora, decoder_layers
from grpo_ao.steering import (
    Injection,
    _replace_block_output,
    extract_activations,
    inject,
    layer_for_percent,
    render_context,
)

CONTEXTS = ["The cake needs flour, sugar and two eggs.", "Our team lost the final match again."]


def test_layer_for_percent_qwen3_8b():
    assert [layer_for_percent(36, p) for p in (25, 50, 75)] == [9, 18, 27]
    assert [layer_for_percent(8, p) for p in (25, 50, 75)] == [2, 4, 6]


def _hidden_states(model, tokenizer, texts):
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    return out.hidden_states


def test_extract_is_block_output_not_off_by_one(tiny):
    model, tok = tiny
    acts = extract_activations(model, tok, CONTEXTS, layers=[2, 4], num_positions=[3, 1])
    hs = _hidden_states(model, tok, [render_context(tok, c) for c in CONTEXTS])
    assert acts[0].shape == (3, 64) and acts[1].shape == (1, 64)
    torch.testing.assert_close(acts[0], hs[3][0, -3:])  # block 2 output = hidden_states[3]
    torch.testing.assert_close(acts[1], hs[5][1, -1:])
    assert not torch.allclose(acts[0], hs[2][0, -3:])  # hidden_states[L] would be off by one


def test_extract_takes_last_tokens_of_the_context_not_the_template_tail(tiny):
    model, tok = tiny
    text = render_context(tok, CONTEXTS[0])
    assert text.endswith(CONTEXTS[0]) and text.startswith("<|im_start|>user\n")
    assert render_context(tok, CONTEXTS[0], "raw") == CONTEXTS[0]


def test_extract_handles_left_padding(tiny):
    model, tok = tiny
    both = extract_activations(model, tok, ["short", CONTEXTS[1]], layers=[4, 4], num_positions=[1, 2])
    alone = extract_activations(model, tok, ["short"], layers=[4], num_positions=[1])
    torch.testing.assert_close(both[0], alone[0], atol=1e-5, rtol=1e-4)


def test_extract_stops_after_deepest_block(tiny):
    model, tok = tiny
    calls = []
    h = decoder_layers(model)[5].register_forward_hook(lambda *a: calls.append(1))
    try:
        extract_activations(model, tok, CONTEXTS, layers=[2, 4], num_positions=[1, 1])
    finally:
        h.remove()
    assert calls == []


def test_extract_disables_the_adapter(tiny_model, tokenizer):
    base_acts = extract_activations(tiny_model, tokenizer, CONTEXTS, [4, 4], [2, 2])
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    peft_model = get_peft_model(tiny_model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj"],
                                                       init_lora_weights=False))
    peft_model.train()
    acts = extract_activations(peft_model, tokenizer, CONTEXTS, [4, 4], [2, 2])
    for a, b in zip(acts, base_acts):
        torch.testing.assert_close(a, b)
    assert peft_model.training, "extraction must restore the training mode"
    hs = _hidden_states(peft_model, tokenizer, [render_context(tokenizer, c) for c in CONTEXTS])
    assert not torch.allclose(hs[5][0, -2:], base_acts[0]), "adapter must change activations when on"


def _block1_capture(model):
    seen = []
    handle = decoder_layers(model)[1].register_forward_hook(lambda m, a, o: seen.append(o.detach().clone()))
    return seen, handle


def _prompts(tok, ks=(2, 3)):
    prompts = [render_oracle_prompt(tok, q, 4, k) for q, k in zip(["Is it food?", "What sport is it?"], ks)]
    return left_pad(prompts, tok.pad_token_id)


def test_injection_adds_exactly_norm_matched_vector_at_placeholders_only(tiny):
    model, tok = tiny
    ids, mask, positions = _prompts(tok)
    torch.manual_seed(0)
    vectors = [torch.randn(len(p), 64) * 5 for p in positions]
    seen, handle = _block1_capture(model)
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
            with inject(model, vectors, positions, layer=1) as state:
                model(input_ids=ids, attention_mask=mask)
    finally:
        handle.remove()
    clean, steered = seen
    assert state.calls == 1
    expected = clean.clone()
    for b, pos in enumerate(positions):
        for k, p in enumerate(pos):
            h = clean[b, p]
            expected[b, p] = h + h.norm() * vectors[b][k] / vectors[b][k].norm()
    torch.testing.assert_close(steered, expected, atol=1e-5, rtol=1e-5)
    changed = (steered - clean).abs().sum(-1) > 0
    assert changed.sum().item() == sum(len(p) for p in positions)


def test_injection_recorded_in_output_hidden_states(tiny):
    # fails on transformers 5.0-5.1, which recorded a layer's output inside its forward, before the
    # hooks ran: one reason pyproject's floor is 5.2.0 (see tests/test_transformers_floor.py)
    model, tok = tiny
    ids, mask, positions = _prompts(tok)
    vectors = [torch.ones(len(p), 64) for p in positions]
    with torch.no_grad():
        clean = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[2]
        with inject(model, vectors, positions):
            steered = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[2]
    b, p = 0, positions[0][0]
    assert not torch.allclose(clean[b, p], steered[b, p])


def test_injection_acts_on_prefill_only_during_generation(tiny):
    model, tok = tiny
    ids, mask, positions = _prompts(tok)
    vectors = [torch.randn(len(p), 64) for p in positions]
    seen, handle = _block1_capture(model)
    try:
        with torch.no_grad(), inject(model, vectors, positions) as state:
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                                 min_new_tokens=6)
    finally:
        handle.remove()
    assert state.calls == 1
    decode_steps = seen[1:]
    assert len(decode_steps) == 5 and all(s.shape[1] == 1 for s in decode_steps)
    # block-1 outputs at decode steps must equal an un-steered full forward at those positions:
    # block 1's keys/values come from its input, which injection at its output never touches
    full_mask = torch.cat([mask, torch.ones(2, out.shape[1] - ids.shape[1], dtype=mask.dtype)], dim=1)
    seen2, handle = _block1_capture(model)
    try:
        with torch.no_grad():
            model(input_ids=out, attention_mask=full_mask)
    finally:
        handle.remove()
    for step, s in enumerate(decode_steps):
        torch.testing.assert_close(s[:, 0], seen2[0][:, ids.shape[1] + step], atol=1e-5, rtol=1e-4)


def test_injection_rows_get_their_own_vectors(tiny):
    model, tok = tiny
    ids, mask, positions = _prompts(tok, ks=(2, 2))
    v0, v1 = torch.randn(2, 64), torch.randn(2, 64)
    seen, handle = _block1_capture(model)
    try:
        with torch.no_grad():
            with inject(model, [v0, v1], positions):
                model(input_ids=ids, attention_mask=mask)
            with inject(model, [v1, v0], positions):
                model(input_ids=ids, attention_mask=mask)
    finally:
        handle.remove()
    a, b = seen
    assert not torch.allclose(a[0, positions[0][0]], b[0, positions[0][0]])


def test_training_forward_injection_and_gradient_checkpointing(tiny_model, tokenizer):
    model = attach_lora(tiny_model, LoraSettings(r=4, dropout=0.0, target_modules=("q_proj", "v_proj")))
    ids, mask, positions = _prompts(tokenizer)
    vectors = [torch.randn(len(p), 64) for p in positions]

    def grads(checkpointing):
        model.zero_grad()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_disable()
        model.train()
        with inject(model, vectors, positions) as state:
            logits = model(input_ids=ids, attention_mask=mask).logits
            logits.float().pow(2).mean().backward()
        assert state.calls >= 1
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, ckpt = grads(False), grads(True)
    assert plain and plain.keys() == ckpt.keys()
    for n in plain:
        torch.testing.assert_close(plain[n], ckpt[n], atol=1e-5, rtol=1e-4)
    model.gradient_checkpointing_disable()


def test_zero_norm_vector_raises():
    with pytest.raises(ValueError, match="zero or non-finite norm"):
        Injection([torch.zeros(1, 8)], [[3]], coef=1.0)


def test_vector_count_must_match_batch(tiny):
    model, tok = tiny
    ids, mask, positions = _prompts(tok)
    with pytest.raises(ValueError, match="2 vector sets for 1 position lists"):
        Injection([torch.ones(2, 64), torch.ones(3, 64)], positions[:1], 1.0)
    with pytest.raises(ValueError, match="prepared for batch 1"):
        with torch.no_grad(), inject(model, [torch.ones(2, 64)], positions[:1]):
            model(input_ids=ids, attention_mask=mask)


def test_tuple_block_outputs_are_handled():
    h = torch.zeros(1, 3, 2)
    out = _replace_block_output((h, "cache"), h + 1)
    assert isinstance(out, tuple) and out[1] == "cache" and out[0].sum() == 6
