"""The engine on the tiny Qwen3 (eager): injected greedy = HF injected greedy, mixed batches, sampled rollouts,
seeded sampling, completions cut by max_model_len, the prefix-cache trap and the parity check. One engine for the
module."""

import pytest
import torch
from vllm_helpers import (
    MAX_MODEL_LEN,
    assert_same_greedy,
    engine_greedy,
    hf_greedy,
    injected_tokens,
    no_injection,
    oracle_inputs,
    start_engine,
)

from grpo_ao.errors import GrpoAoError
from grpo_ao.rollout import SamplingConfig, completion_logprobs, completion_mask_for

LONG = ("what is the topic of this text about cooking and sports and music and weather and science and travel "
        "and animals and space and money and health and code and python and food ") * 2 + "?"
"""A question of > 2 KV blocks, so the block with the placeholders is cached."""


@pytest.fixture(scope="module")
def engine(qwen3, tmp_path_factory):
    eng = start_engine(*qwen3, tmp_path_factory.mktemp("qwen3"))
    yield eng
    eng.close()


def test_injected_greedy_equals_hf_injected_greedy(qwen3, engine):
    model, tok = qwen3
    inputs = oracle_inputs(tok, [3, 1, 5])
    hf, hf_lp = hf_greedy(model, tok, inputs, 12)
    before = injected_tokens(engine)
    assert_same_greedy(engine_greedy(engine, inputs, 12), hf, hf_lp)
    assert injected_tokens(engine) - before == 3 + 1 + 5  # every placeholder steered once, nothing else


def test_injection_changes_the_greedy_tokens(qwen3, engine):
    """Guards the equality tests above: the vectors matter for these prompts."""
    model, tok = qwen3
    inputs = oracle_inputs(tok, [3, 1, 5], seed=1)
    plain, _ = hf_greedy(model, tok, inputs, 12, coef=0.0)
    steered = engine_greedy(engine, inputs, 12)
    assert not torch.equal(steered.completion_ids, plain.completion_ids)


def test_mixed_batch_rows_equal_each_prompt_alone(qwen3, engine):
    model, tok = qwen3
    inputs = oracle_inputs(tok, [2, 4, 1, 3], seed=2)
    batch = engine_greedy(engine, inputs, 10)
    for b in range(4):
        alone, alone_lp = hf_greedy(model, tok, _row(inputs, b), 10)
        assert torch.equal(batch.completion_ids[b], alone.completion_ids[0]), f"row {b}"
        assert (batch.sampling_logprobs[b] - alone_lp[0]).abs().mul(alone.completion_mask[0]).max() <= 1e-4


def _row(inputs, b):
    """Prompt b alone (it keeps the batch's left padding; its positions stay valid)."""
    from grpo_ao.rollout import OracleInputs

    return OracleInputs(inputs.prompt_ids[b:b + 1], inputs.prompt_mask[b:b + 1], inputs.positions[b:b + 1],
                        inputs.vectors[b:b + 1], inputs.layers[b:b + 1])


def test_sampled_rollouts_have_the_hf_layout_and_the_trainers_logprobs(qwen3, engine):
    model, tok = qwen3
    inputs = oracle_inputs(tok, [3, 2], seed=3)
    sampling = SamplingConfig(num_generations=4, temperature=0.7, max_new_tokens=16)
    ro = engine.generate(inputs, sampling)
    assert ro.completion_ids.shape == ro.sampling_logprobs.shape == (8, 16)
    assert torch.equal(ro.prompt_ids, inputs.prompt_ids.repeat_interleave(4, dim=0))
    assert ro.positions[5] == inputs.positions[1] and ro.vectors[5] is inputs.vectors[1]
    mask, truncated = completion_mask_for(ro.completion_ids, engine.eos_ids)
    assert torch.equal(ro.completion_mask, mask) and torch.equal(ro.truncated, truncated)
    assert (ro.completion_ids[ro.completion_mask == 0] == tok.pad_token_id).all()
    assert ro.texts == tok.batch_decode(ro.completion_ids, skip_special_tokens=True)
    assert len({tuple(r) for r in ro.completion_ids.tolist()}) > 2, "G samples of a prompt should differ"
    trainer = completion_logprobs(model, ro, 0.7, spec=engine.spec)  # [N, T] at the sampling temperature
    assert ((ro.sampling_logprobs - trainer).abs() * ro.completion_mask).max() <= 1e-4


def _conditions(tok):
    """The same long prompt four times: un-steered, vectors A, vectors B, vectors A again."""
    a = oracle_inputs(tok, [3], seed=10, questions=[LONG])
    b = oracle_inputs(tok, [3], seed=11, questions=[LONG])
    rows = torch.cat([a.prompt_ids] * 4)
    four = type(a)(rows, torch.cat([a.prompt_mask] * 4), a.positions * 4,
                   [a.vectors[0], a.vectors[0], b.vectors[0], a.vectors[0]], a.layers * 4)
    return no_injection(four, [0]), a, b


def _reference(model, tok, a, b):
    none, none_lp = hf_greedy(model, tok, a, 8, coef=0.0)
    ra, ra_lp = hf_greedy(model, tok, a, 8)
    rb, rb_lp = hf_greedy(model, tok, b, 8)
    # the three differ far beyond the 1e-4 the rows are held to (their greedy tokens may coincide)
    for (x, x_lp), (y, y_lp) in [((none, none_lp), (ra, ra_lp)), ((ra, ra_lp), (rb, rb_lp)), ((none, none_lp),
                                                                                              (rb, rb_lp))]:
        assert (x_lp - y_lp).abs().max() > 1e-2 or not torch.equal(x.completion_ids, y.completion_ids)
    return [(none, none_lp), (ra, ra_lp), (rb, rb_lp), (ra, ra_lp)]


def test_prefix_cache_never_mixes_steered_and_unsteered_prompts_in_one_batch(qwen3, engine):
    model, tok = qwen3
    four, a, b = _conditions(tok)
    assert a.prompt_ids.shape[1] > 2 * 32, "the prompt must span cached blocks"
    engine.llm.reset_prefix_cache()
    engine_greedy(engine, no_injection(a, [0]), 8)  # the un-steered prompt is now cached
    out = engine_greedy(engine, four, 8)
    for row, (ref, ref_lp) in enumerate(_reference(model, tok, a, b)):
        assert torch.equal(out.completion_ids[row], ref.completion_ids[0]), f"row {row}"
        assert (out.sampling_logprobs[row] - ref_lp[0]).abs().mul(ref.completion_mask[0]).max() <= 1e-4


def test_prefix_cache_never_mixes_them_across_consecutive_batches(qwen3, engine):
    model, tok = qwen3
    four, a, b = _conditions(tok)
    engine.llm.reset_prefix_cache()
    for row, (ref, ref_lp) in enumerate(_reference(model, tok, a, b)):
        out = engine_greedy(engine, _row(four, row), 8)
        assert torch.equal(out.completion_ids[0], ref.completion_ids[0]), f"request {row}"
        assert (out.sampling_logprobs[0] - ref_lp[0]).abs().mul(ref.completion_mask[0]).max() <= 1e-4, f"request {row}"


def test_identical_steered_prompts_still_share_the_prefix_cache(qwen3, engine):
    tok = qwen3[1]
    a = oracle_inputs(tok, [3], seed=12, questions=[LONG])
    engine.llm.reset_prefix_cache()
    first = injected_tokens(engine)
    engine_greedy(engine, a, 4)
    second = injected_tokens(engine)
    engine_greedy(engine, a, 4)
    assert (second - first, injected_tokens(engine) - second) == (3, 0)  # the placeholders' block came from cache


def test_parity_check_passes_on_the_right_engine(qwen3, engine):
    model, tok = qwen3
    report = engine.parity_check(model, tok, oracle_inputs(tok, [3, 1, 5], seed=4))
    assert report.prompts == 3 and report.tokens_compared > 0 and report.max_abs_logprob_diff <= 1e-4
    assert report.tolerance == 1e-4 and report.splits == ()  # float32: the greedy paths are HF's


def test_parity_check_names_the_injection_layer_when_the_engine_steers_another_block(qwen3, engine):
    model, tok = qwen3
    right = engine.spec
    engine.spec = type(right)(**{**right.__dict__, "injection_layer": 2})  # the HF side now steers block 2
    try:
        with pytest.raises(GrpoAoError, match="injection layer"):
            engine.parity_check(model, tok, oracle_inputs(tok, [3, 1, 5], seed=5))
    finally:
        engine.spec = right


def test_a_head_size_the_cpu_attention_lacks_is_a_user_error(tmp_path):
    from grpo_ao.models import build_tiny_model_and_tokenizer

    with pytest.raises(GrpoAoError, match="head sizes"):
        start_engine(*build_tiny_model_and_tokenizer(0), tmp_path)  # the `tiny` config's Qwen3: head_dim 16


def test_a_seeded_call_samples_the_same_completions_whatever_the_engine_ran_before(qwen3, engine):
    tok = qwen3[1]
    inputs = oracle_inputs(tok, [3, 2], seed=13)
    sampling = SamplingConfig(num_generations=4, temperature=1.0, max_new_tokens=12)
    first = engine.generate(inputs, sampling, seed=21)
    engine.generate(oracle_inputs(tok, [1, 4, 2], seed=14), sampling)  # other requests advance vLLM's generator
    again = engine.generate(inputs, sampling, seed=21)  # as on another rank, or after a resume
    assert torch.equal(first.completion_ids, again.completion_ids)
    assert (first.sampling_logprobs - again.sampling_logprobs).abs().max() <= 1e-5
    assert not torch.equal(engine.generate(inputs, sampling, seed=22).completion_ids, first.completion_ids)
    unseeded = [engine.generate(inputs, sampling).completion_ids for _ in range(2)]
    assert not torch.equal(*unseeded), "without a seed, consecutive calls sample differently"


def _near_the_length_limit(tok, seed):
    """Two oracle prompts (K = 3) that leave 4 to 8 tokens of room below MAX_MODEL_LEN, and that room."""
    words = "cooking sports music weather science travel animals space money health code python food".split()
    for n in range(400):
        question = " ".join(words[i % len(words)] for i in range(n)) + " ?"
        inputs = oracle_inputs(tok, [3, 3], seed=seed, questions=[question])
        room = MAX_MODEL_LEN - int(inputs.prompt_mask[0].sum())
        if room <= 8:
            assert room >= 4, f"stepped past the window (room {room})"
            return inputs, room
    raise AssertionError("no question long enough")


def test_a_completion_cut_by_max_model_len_is_truncated_and_its_pad_stays_out_of_the_mask(qwen3, engine):
    tok = qwen3[1]
    assert tok.pad_token_id in engine.eos_ids, "here, as Qwen3's <|endoftext|>, the pad is an end-of-turn id"
    inputs, room = _near_the_length_limit(tok, seed=15)
    for ro in (engine_greedy(engine, inputs, 16), engine.generate(inputs, SamplingConfig(
            num_generations=2, temperature=1.0, max_new_tokens=16), seed=3)):
        assert not torch.isin(ro.completion_ids[:, :room], torch.tensor(engine.eos_ids)).any(), "none ended early"
        assert ro.truncated.all(), ro.truncated  # cut by max_model_len after `room` tokens: not ended
        assert (ro.completion_mask.sum(dim=1) == room).all(), ro.completion_mask
        assert (ro.completion_ids[:, room:] == tok.pad_token_id).all()
        assert (ro.sampling_logprobs[:, room:] == 0).all()


def test_parity_check_names_the_prefix_cache_when_prompts_go_without_their_salt(qwen3, engine, monkeypatch):
    from grpo_ao.vllm import engine as engine_module

    model, tok = qwen3
    salted = engine_module.prompt_request

    def unsalted(*args, **kwargs):
        prompt, injection = salted(*args, **kwargs)
        prompt.pop("cache_salt", None)
        return prompt, injection

    steered = oracle_inputs(tok, [3, 3, 3], seed=16, questions=[LONG])
    engine.llm.reset_prefix_cache()
    try:
        engine_greedy(engine, no_injection(steered, [0, 1, 2]), 4)  # the un-steered prompts are now cached
        assert engine.parity_check(model, tok, steered).max_abs_logprob_diff <= 1e-4  # salted: no false hit
        engine_greedy(engine, no_injection(steered, [0, 1, 2]), 4)
        monkeypatch.setattr(engine_module, "prompt_request", unsalted)
        with pytest.raises(GrpoAoError, match="parity check failed.*prefix cache"):
            engine.parity_check(model, tok, steered)
    finally:
        engine.llm.reset_prefix_cache()


def test_parity_check_fails_when_the_engine_does_not_inject(qwen3, engine, monkeypatch):
    from grpo_ao.vllm import engine as engine_module

    model, tok = qwen3
    salted = engine_module.prompt_request
    monkeypatch.setattr(engine_module, "prompt_request", lambda *a, **k: (salted(*a, **k)[0], None))
    with pytest.raises(GrpoAoError, match="parity check failed.*injection layer"):
        engine.parity_check(model, tok, oracle_inputs(tok, [3, 1, 5], seed=17))
