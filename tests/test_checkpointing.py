"""Injection under gradient checkpointing, in both forms transformers has shipped: 5.0–5.22 checkpoint
a decoder layer's whole `__call__`, so its forward hooks run again when backward recomputes the layer;
5.23+ checkpoint only `forward`. The loss's backward must run while the injection hook is installed."""

import functools

import pytest
import torch
from torch.utils.checkpoint import CheckpointError, checkpoint

from grpo_ao.format import left_pad, render_oracle_prompt
from grpo_ao.models import LoraSettings, attach_lora, decoder_layers
from grpo_ao.rollout import OracleSpec, Rollouts, completion_logprobs, injected_logprobs
from grpo_ao.steering import Injection
from injection_counter import count_injections

TEMPERATURE = 1.3
SPEC = OracleSpec(system_prompt=None, mode="none", context_format="chat", injection_layer=1, coef=1.0)
"""Injection at block 1 with c = 1; the prompt fields are unused here (the rollouts are built by hand)."""
CACHE_KWARGS = ("cache", "past_key_values", "past_key_value", "layer_past")


def checkpoint_whole_layer_calls(monkeypatch, model):
    """Emulate transformers 5.0–5.22's `GradientCheckpointingLayer.__call__`: in training with grad, the
    layer's whole `nn.Module.__call__` (hooks included) runs under a non-reentrant checkpoint, and the
    KV-cache arguments are dropped, as transformers did."""
    cls = type(decoder_layers(model)[0])
    plain_call = cls.__call__

    def call(self, *args, **kwargs):
        if not (self.training and torch.is_grad_enabled()):
            return plain_call(self, *args, **kwargs)
        kwargs = {k: None if k in CACHE_KWARGS else False if k == "use_cache" else v for k, v in kwargs.items()}
        return checkpoint(functools.partial(torch.nn.Module.__call__, self, **kwargs), *args, use_reentrant=False)

    monkeypatch.setattr(cls, "__call__", call)


@pytest.fixture()
def lora_model(tiny_model):
    model = attach_lora(tiny_model, LoraSettings(r=4, dropout=0.0, target_modules=("q_proj", "v_proj")))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained-looking adapter: with B = 0 every lora_A gradient would be 0
    return model


def rollouts_for(tokenizer) -> Rollouts:
    """Two left-padded oracle prompts (K = 2 and 3 placeholders) with fixed random completions."""
    prompts = [render_oracle_prompt(tokenizer, q, 4, k) for q, k in (("Is it food?", 2), ("What sport?", 3))]
    ids, mask, positions = left_pad(prompts, tokenizer.pad_token_id)
    g = torch.Generator().manual_seed(0)
    vectors = [torch.randn(len(p), 64, generator=g) * 4 for p in positions]
    completion_ids = torch.randint(10, 700, (2, 5), generator=g)  # [2, 5]
    completion_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])  # [2, 5]
    return Rollouts(ids, mask, positions, vectors, completion_ids, completion_mask,
                    torch.tensor([True, False]), ["", ""], 1)


def surrogate(logprobs: torch.Tensor, rollouts: Rollouts) -> torch.Tensor:
    """−Σ A_i · mask · logprob ÷ (n·T), with fixed advantages A = (1, −0.5).  [n, T] -> scalar"""
    weights = torch.tensor([1.0, -0.5])[:, None] * rollouts.completion_mask  # [n, T]
    return -(logprobs * weights).sum() / weights.numel()


def lora_grads(model, rollouts, backward_inside: bool = True) -> dict[str, torch.Tensor]:
    """LoRA gradients of `surrogate`; backward_inside=False is the old pattern (hook removed first)."""
    model.zero_grad(set_to_none=True)
    model.train()
    with injected_logprobs(model, rollouts, TEMPERATURE, spec=SPEC) as logprobs:  # [n, T]
        loss = surrogate(logprobs, rollouts)
        if backward_inside:
            loss.backward()
    if not backward_inside:
        loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if "lora_" in n}
    assert grads and all(g is not None for g in grads.values()), "every LoRA parameter must get a gradient"
    return grads


def assert_same_grads(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5, msg=name)


def test_apply_twice_gives_the_same_output_and_consumes_nothing():
    torch.manual_seed(0)
    state = Injection([torch.randn(2, 8), torch.randn(1, 8)], [[1, 3], [2]], coef=0.7)
    fixed = (state.rows.clone(), state.cols.clone(), state.units.clone())
    h = torch.randn(2, 5, 8)  # [B, S, hidden]
    first, second = state.apply(h), state.apply(h)
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    assert not torch.equal(first, h) and state.calls == 2
    for before, after in zip(fixed, (state.rows, state.cols, state.units)):
        assert torch.equal(before, after)


def test_whole_layer_checkpointing_replays_the_hook_and_keeps_the_plain_gradients(lora_model, tokenizer,
                                                                                  monkeypatch):
    rollouts = rollouts_for(tokenizer)
    plain = lora_grads(lora_model, rollouts)
    checkpoint_whole_layer_calls(monkeypatch, lora_model)
    applied = count_injections(monkeypatch)
    ckpt = lora_grads(lora_model, rollouts)
    assert applied == [2, 2], "the emulation must run the hook again in backward (forward + recomputation)"
    assert_same_grads(plain, ckpt)


def test_hook_removed_before_backward_breaks_whole_layer_checkpointing(lora_model, tokenizer, monkeypatch):
    """The pattern this module exists to prevent: leave `inject` (or `completion_logprobs`), then backward."""
    rollouts = rollouts_for(tokenizer)
    plain = lora_grads(lora_model, rollouts)
    assert_same_grads(plain, lora_grads(lora_model, rollouts, backward_inside=False))  # fine without checkpoints
    checkpoint_whole_layer_calls(monkeypatch, lora_model)
    # block 1 is recomputed without its index_put: fewer saved tensors than in the forward
    with pytest.raises(CheckpointError, match="different number of tensors"):
        lora_grads(lora_model, rollouts, backward_inside=False)


def test_installed_gradient_checkpointing_keeps_the_plain_gradients(lora_model, tokenizer, monkeypatch):
    rollouts = rollouts_for(tokenizer)
    plain = lora_grads(lora_model, rollouts)
    lora_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    applied = count_injections(monkeypatch)
    try:
        ckpt = lora_grads(lora_model, rollouts)
    finally:
        lora_model.gradient_checkpointing_disable()
    assert applied in ([2], [2, 2]), "once (5.23+: hooks outside the checkpoint) or twice (5.0–5.22)"
    assert_same_grads(plain, ckpt)


def test_completion_logprobs_is_the_no_grad_form_and_removes_the_hook(lora_model, tokenizer):
    rollouts = rollouts_for(tokenizer)
    lora_model.train()
    block = decoder_layers(lora_model)[1]
    hooks_before = len(block._forward_hooks)
    fixed = completion_logprobs(lora_model, rollouts, TEMPERATURE, spec=SPEC)  # [2, 5]
    assert not fixed.requires_grad and len(block._forward_hooks) == hooks_before
    with injected_logprobs(lora_model, rollouts, TEMPERATURE, spec=SPEC) as logprobs:
        assert logprobs.requires_grad and len(block._forward_hooks) == hooks_before + 1
    torch.testing.assert_close(fixed, logprobs.detach(), atol=1e-6, rtol=1e-5)
    with pytest.raises(RuntimeError, match="boom"):
        with injected_logprobs(lora_model, rollouts, TEMPERATURE, spec=SPEC):
            raise RuntimeError("boom")
    assert len(block._forward_hooks) == hooks_before, "an error inside the block must still remove the hook"
