"""The prefix-shared training forward (`rollout.injected_logprobs`, prefix_shared=True) against the one-forward
path: each distinct prompt runs once with its injection and its KV cache serves its G completions, with the same
logprobs (atol 1e-5, fp32) and the same LoRA gradients (1e-5 relative) on Qwen3 and Llama, gradient checkpointing
off and on (on: the one-forward path runs in train mode, logged once).

Measured by hand on SmolLM2-135M (fp32, 2 prompts × 3 rows, 12 tokens): logprobs 1.5e-5 apart, LoRA gradients
3.4e-5 relative; the one-forward path itself is 2.3e-5 / 5e-6 from float64, and in float64 the two paths agree to
1e-7 (token_logprobs' float32 softmax), so the gap is float32 rounding over 30 layers, not a missing term."""

import logging

import pytest
import torch

from grpo_ao import rollout
from grpo_ao.format import left_pad, render_oracle_prompt
from grpo_ao.models import LoraSettings, attach_lora, build_tiny_model_and_tokenizer
from grpo_ao.rollout import (
    OracleSpec,
    Rollouts,
    completion_logprobs,
    group_micro_batches,
    injected_logprobs,
    prompt_groups,
)
from injection_counter import count_injections

TEMPERATURE = 1.3
SPEC = OracleSpec(system_prompt=None, mode="none", context_format="chat", injection_layer=1, coef=1.0)
G, T = 3, 6
LORA = LoraSettings(r=4, dropout=0.0, target_modules=("q_proj", "k_proj", "v_proj", "o_proj"))
"""k_proj and v_proj: the prompt's cached keys and values depend on the adapter, so their gradient must come
back from every completion through the expanded cache."""


def tiny_llama(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         initializer_range=0.1, tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        return LlamaForCausalLM(config).eval()


@pytest.fixture(params=["qwen3", "llama"])
def lora_model(request, tokenizer):
    base = build_tiny_model_and_tokenizer(seed=0)[0] if request.param == "qwen3" else tiny_llama(tokenizer)
    torch.manual_seed(0)  # lora_A's initialisation draws from the global generator
    model = attach_lora(base, LORA)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained-looking adapter: with B = 0 every lora_A gradient would be 0
    return model


def grouped_rollouts(tokenizer, g: int = G, t: int = T) -> Rollouts:
    """Two left-padded prompts of different lengths (K = 2 and 3 placeholders), g rows each, random completions;
    some completions end early (mask 0 after their end), as sampled ones do."""
    prompts = [render_oracle_prompt(tokenizer, q, 4, k)
               for q, k in (("Is it food?", 2), ("Which sport is played in this text, and where?", 3))]
    ids, mask, positions = left_pad(prompts, tokenizer.pad_token_id)  # [2, P]
    assert (mask == 0).any(), "the prompts should differ in length so the left padding is exercised"
    gen = torch.Generator().manual_seed(0)
    vectors = [torch.randn(len(p), 64, generator=gen) * 4 for p in positions]
    n = 2 * g
    completion_ids = torch.randint(10, 700, (n, t), generator=gen)  # [n, T]
    lengths = torch.randint(1, t + 1, (n,), generator=gen)
    lengths[0] = t
    completion_mask = (torch.arange(t)[None] < lengths[:, None]).long()  # [n, T]
    return Rollouts(ids.repeat_interleave(g, dim=0), mask.repeat_interleave(g, dim=0),
                    [p for p in positions for _ in range(g)], [v for v in vectors for _ in range(g)],
                    completion_ids, completion_mask, lengths < t, [""] * n, g)


def surrogate(logprobs: torch.Tensor, rollouts: Rollouts) -> torch.Tensor:
    """−Σ A_i · mask · logprob ÷ (n·T), a different advantage per row.  [n, T] -> scalar"""
    n = logprobs.shape[0]
    weights = torch.linspace(1.0, -1.0, n)[:, None] * rollouts.completion_mask  # [n, T]
    return -(logprobs * weights).sum() / weights.numel()


def logprobs_and_grads(model, rollouts: Rollouts, prefix_shared: bool) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    model.train()
    with injected_logprobs(model, rollouts, TEMPERATURE, spec=SPEC, prefix_shared=prefix_shared) as logprobs:
        surrogate(logprobs, rollouts).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if "lora_" in n}
    assert grads and all(g is not None for g in grads.values()), "every LoRA parameter must get a gradient"
    return logprobs.detach(), grads


def relative_differences(a: dict, b: dict) -> tuple[float, float]:
    """(‖a − b‖ / ‖b‖ over all LoRA gradients as one vector, the largest of the same per tensor)."""
    assert a.keys() == b.keys()
    diff = torch.sqrt(sum(((a[k] - b[k]).double() ** 2).sum() for k in a))
    norm = torch.sqrt(sum((b[k].double() ** 2).sum() for k in a))
    return (diff / norm).item(), max(((a[k] - b[k]).norm() / b[k].norm()).item() for k in a)


def assert_equal_paths(shared: tuple, plain: tuple, mask: torch.Tensor, per_tensor: float = 1e-4) -> None:
    """Logprobs within 1e-5, all LoRA gradients within 1e-5 relative (as one vector) and each tensor within
    `per_tensor`: in fp32 a small-norm tensor's gradient is itself rounding-limited (on the tiny Llama the one-forward
    path's layer-1 q_proj lora_A gradient is 6e-5 relative from its float64 value, the two paths 1.0e-5 apart)."""
    (lp_s, g_s), (lp_p, g_p) = shared, plain
    on = mask.bool()
    torch.testing.assert_close(lp_s[on], lp_p[on], atol=1e-5, rtol=0)
    whole, worst = relative_differences(g_s, g_p)
    assert whole <= 1e-5 and worst <= per_tensor, f"relative gradient difference {whole:.2e}, per tensor {worst:.2e}"


def test_prompt_groups_are_consecutive_rows_with_the_same_prompt_and_vectors(tokenizer):
    ro = grouped_rollouts(tokenizer)
    groups = prompt_groups(ro)
    assert groups.first == [0, 3] and groups.inverse.tolist() == [0, 0, 0, 1, 1, 1] and groups.shared
    other = [v.clone() for v in ro.vectors]
    other[1] = other[1] + 1.0  # same prompt ids, other activations: another prompt for the cache
    ro2 = Rollouts(ro.prompt_ids, ro.prompt_mask, ro.positions, other, ro.completion_ids, ro.completion_mask,
                   ro.truncated, ro.texts, G)
    assert prompt_groups(ro2).inverse.tolist() == [0, 1, 2, 3, 3, 3]
    assert not prompt_groups(ro.select([0, 3])).shared


def test_group_micro_batches_keep_each_prompts_rows_together():
    # G = 4: rows 0-3 prompt 0, 4-7 prompt 1, 8-11 prompt 2; row 3 is judge-masked (absent)
    rows = [0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11]
    assert group_micro_batches(rows, 4, 8) == [[0, 1, 2, 4, 5, 6, 7], [8, 9, 10, 11]]  # 3 + 4 fit, + 4 does not
    assert group_micro_batches(rows, 4, 3) == [[0, 1, 2], [4, 5, 6], [7], [8, 9, 10], [11]]  # G > size: cut
    assert group_micro_batches(range(8), 2, 3) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert group_micro_batches([], 4, 8) == []


@pytest.mark.parametrize("g", [G, 1])
def test_prefix_shared_logprobs_and_lora_gradients_equal_the_one_forward_path(lora_model, tokenizer, monkeypatch,
                                                                             g):
    ro = grouped_rollouts(tokenizer, g=g)
    plain = logprobs_and_grads(lora_model, ro, prefix_shared=False)
    applied = count_injections(monkeypatch)
    shared = logprobs_and_grads(lora_model, ro, prefix_shared=True)
    # G > 1: the 2 distinct prompts ran once each; G = 1: nothing to share, the one-forward path ran
    assert applied == ([2] if g > 1 else [2 * g])
    assert_equal_paths(shared, plain, ro.completion_mask)


def test_prefix_shared_gradients_equal_per_tensor_in_float64(lora_model, tokenizer):
    """In float64 the per-tensor differences shrink to the float32 of `token_logprobs`' softmax (measured ≤ 4e-7):
    rounding, not a missing gradient path (a cache cut from the graph would differ by O(1))."""
    lora_model.double()
    ro = grouped_rollouts(tokenizer)
    ro = Rollouts(ro.prompt_ids, ro.prompt_mask, ro.positions, [v.double() for v in ro.vectors], ro.completion_ids,
                  ro.completion_mask, ro.truncated, ro.texts, G)
    assert_equal_paths(logprobs_and_grads(lora_model, ro, True), logprobs_and_grads(lora_model, ro, False),
                       ro.completion_mask, per_tensor=2e-6)


def test_prefix_shared_gradients_are_the_same_run_to_run(lora_model, tokenizer):
    """Bit for bit, with several threads: an update must not depend on which thread adds first. The cache's own
    `batch_select_indices` (advanced indexing, backward through float atomics on the CPU) failed this: one prompt's
    64 rows, so the threads of the parallel kernel add into the same keys and values."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(threads, 2))  # the nondeterminism needs threads
    try:
        ro = grouped_rollouts(tokenizer, g=64).select(range(64))  # prompt 0's rows
        first = logprobs_and_grads(lora_model, ro, prefix_shared=True)[1]
        for _ in range(3):
            again = logprobs_and_grads(lora_model, ro, prefix_shared=True)[1]
            assert all(torch.equal(again[k], first[k]) for k in first)
    finally:
        torch.set_num_threads(threads)


def test_prefix_shared_split_groups_and_single_token_completions(lora_model, tokenizer, monkeypatch):
    ro = grouped_rollouts(tokenizer)
    mb = ro.select([1, 2, 3])  # the tail of prompt 0 (2 rows) and the head of prompt 1 (1 row), as a cut group
    applied = count_injections(monkeypatch)
    assert_equal_paths(logprobs_and_grads(lora_model, mb, True), logprobs_and_grads(lora_model, mb, False),
                       mb.completion_mask)
    one = grouped_rollouts(tokenizer, t=1)  # T = 1: the prompt forward's last logits are all there is
    assert_equal_paths(logprobs_and_grads(lora_model, one, True), logprobs_and_grads(lora_model, one, False),
                       one.completion_mask)
    assert applied == [2, 3, 2, 6], "shared (2 prompts), one-forward (3 rows), shared, one-forward (6 rows)"


def test_prefix_shared_forward_applies_the_injection(lora_model, tokenizer):
    """Equality above would also hold if the injection did nothing; here it must change the logprobs, and the
    shared path must not apply it to the completion tokens (T - 1 = 5 > the last placeholder's index would let
    a hook left installed fire on them)."""
    ro = grouped_rollouts(tokenizer)
    lora_model.eval()
    on = ro.completion_mask.bool()
    shared = completion_logprobs(lora_model, ro, TEMPERATURE, spec=SPEC)  # [n, T]
    unsteered = completion_logprobs(lora_model, ro, TEMPERATURE, spec=OracleSpec(None, "none", "chat", 1, 0.0))
    plain = completion_logprobs(lora_model, ro, TEMPERATURE, spec=SPEC, prefix_shared=False)
    assert (shared - unsteered)[on].abs().max() > 1e-2, "the injection must change the logprobs"
    torch.testing.assert_close(shared[on], plain[on], atol=1e-5, rtol=0)


def test_checkpointing_falls_back_in_training_and_logs_once(lora_model, tokenizer, monkeypatch, caplog):
    ro = grouped_rollouts(tokenizer)
    plain = logprobs_and_grads(lora_model, ro, prefix_shared=False)
    lora_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    rollout._warn_once.cache_clear()
    applied = count_injections(monkeypatch)
    try:
        with caplog.at_level(logging.WARNING, logger="grpo_ao.rollout"):
            ckpt = [logprobs_and_grads(lora_model, ro, prefix_shared=True) for _ in range(2)]
        lora_model.eval()  # eval mode: checkpointing is inactive and the cache survives, so the shared path runs
        fixed = completion_logprobs(lora_model, ro, TEMPERATURE, spec=SPEC)
    finally:
        lora_model.gradient_checkpointing_disable()
    warnings = [r for r in caplog.records if "gradient checkpointing" in r.getMessage()]
    assert len(warnings) == 1, "the fallback is logged once per process"
    # training: 6 rows per forward (twice per call on transformers < 5.23, which replays the hook in backward)
    assert set(applied[:-1]) == {6} and applied[-1] == 2, f"one-forward in training, shared in eval: {applied}"
    for run in ckpt:
        assert_equal_paths(run, plain, ro.completion_mask)
    torch.testing.assert_close(fixed[ro.completion_mask.bool()], plain[0][ro.completion_mask.bool()], atol=1e-5,
                               rtol=0)
