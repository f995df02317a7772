"""Rollouts on the tiny model: sampled ids kept, truncation without end-of-turn, eval mode while
sampling, training-forward logprobs that match what the sampler used, and the prefill-once path
(B prompts prefilled with the injection, KV cache repeated G times) equal to the one-call path."""

from dataclasses import dataclass, replace
from typing import Any

import pytest
import torch

from grpo_ao.format import ORACLE_SYSTEM_PROMPT
from grpo_ao.models import LoraSettings, attach_lora, build_tiny_model_and_tokenizer, decoder_layers
from grpo_ao.rollout import (
    OracleSpec,
    Rollouts,
    SamplingConfig,
    build_oracle_inputs,
    completion_logprobs,
    completion_mask_for,
    end_of_turn_ids,
    generate_rollouts,
)
from grpo_ao.steering import inject


@dataclass(frozen=True)
class T:
    context: str
    question: str
    layer_percent: int
    num_positions: int


SPEC = OracleSpec(system_prompt=ORACLE_SYSTEM_PROMPT, mode="merged", context_format="chat", injection_layer=1,
                  coef=1.0)
"""The published layout: epistemic system prompt merged into the user turn, injection at block 1, c = 1."""
TASKS = [T("I baked bread with butter today.", "Is this about food?", 50, 2),
         T("The match ended in a draw after extra time.", "What is the topic?", 25, 4)]


def test_completion_mask_includes_first_eos_and_marks_truncation():
    ids = torch.tensor([[5, 6, 2, 9, 2], [5, 6, 7, 8, 9]])
    mask, truncated = completion_mask_for(ids, [2])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert truncated.tolist() == [False, True]


def test_rollouts_shapes_groups_and_truncation(tiny):
    model, tok = tiny
    inputs = build_oracle_inputs(model, tok, TASKS, spec=SPEC)
    assert inputs.layers == [4, 2]
    assert [v.shape[0] for v in inputs.vectors] == [2, 4]
    torch.manual_seed(0)
    ro = generate_rollouts(model, tok, inputs, SamplingConfig(num_generations=3, max_new_tokens=5), spec=SPEC)
    assert ro.completion_ids.shape == (6, 5) and len(ro.texts) == 6
    assert torch.equal(ro.prompt_ids[0], ro.prompt_ids[2]) and ro.positions[3] == inputs.positions[1]
    eos = end_of_turn_ids(model, tok)
    for row in range(6):
        n = int(ro.lengths[row])
        last = ro.completion_ids[row, n - 1].item()
        if ro.truncated[row]:
            assert n == 5 and last not in eos  # no end-of-turn appended to a truncated answer
        else:
            assert last in eos


def test_sampling_runs_in_eval_mode_and_restores_training(tiny_model, tokenizer):
    model = attach_lora(tiny_model, LoraSettings(r=4, dropout=0.5, target_modules=("q_proj",)))
    model.train()
    modes = []
    h = model.get_base_model().model.layers[0].register_forward_hook(lambda m, a, o: modes.append(m.training))
    spec = SPEC.without_system_prompt()
    inputs = build_oracle_inputs(model, tokenizer, TASKS, spec=spec)
    generate_rollouts(model, tokenizer, inputs, SamplingConfig(num_generations=2, max_new_tokens=3), spec=spec)
    h.remove()
    assert modes and not any(modes)
    assert model.training


def test_logprobs_at_sampling_temperature_match_the_sampler(tiny):
    model, tok = tiny
    inputs = build_oracle_inputs(model, tok, TASKS, spec=SPEC)
    temperature, g, t = 1.7, 2, 6
    ids = inputs.prompt_ids.repeat_interleave(g, 0)
    mask = inputs.prompt_mask.repeat_interleave(g, 0)
    positions = [p for p in inputs.positions for _ in range(g)]
    vectors = [v for v in inputs.vectors for _ in range(g)]
    torch.manual_seed(3)
    with torch.no_grad(), inject(model, vectors, positions):
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=temperature,
                             top_k=0, top_p=1.0, max_new_tokens=t,
                             output_scores=True, return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
    sampled = out.sequences[:, ids.shape[1]:]
    # scores are the processed logits (divided by T); log_softmax gives the sampler's distribution
    sampler_lp = torch.stack([torch.log_softmax(s, -1) for s in out.scores], 1).gather(-1, sampled[..., None])[..., 0]
    cmask, truncated = completion_mask_for(sampled, end_of_turn_ids(model, tok))
    ro = Rollouts(ids, mask, positions, vectors, sampled, cmask, truncated, [""] * 4, g)
    with torch.no_grad():
        lp = completion_logprobs(model, ro, temperature, spec=SPEC)
    assert cmask.sum() >= 4
    on = cmask.bool()
    torch.testing.assert_close(lp[on], sampler_lp[on], atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        lp_t1 = completion_logprobs(model, ro, 1.0, spec=SPEC)
    assert not torch.allclose(lp_t1[on], sampler_lp[on], atol=1e-3), "temperature must matter"


def test_oracle_spec_reads_the_oracle_section_and_the_named_data_section():
    from grpo_ao.config import load_config
    from grpo_ao.recipes.setup import oracle_spec

    cfg = load_config("tiny", ["oracle.system_prompt=Be brief.", "oracle.system_prompt_mode=system_role",
                               "oracle.injection_layer=2", "oracle.steering_coef=0.5", "data.context_format=raw",
                               "eval.data.context_format=chat"])
    assert oracle_spec(cfg) == OracleSpec("Be brief.", "system_role", "raw", 2, 0.5)
    assert oracle_spec(cfg, cfg.eval.data) == OracleSpec("Be brief.", "system_role", "chat", 2, 0.5)
    off = load_config("tiny", ["oracle.system_prompt_mode=none"])
    assert oracle_spec(off).system_prompt is None, "mode none: no system prompt text at all"


def test_spec_is_keyword_only_and_its_layer_and_coef_steer_the_logprobs(tiny):
    model, tok = tiny
    inputs = build_oracle_inputs(model, tok, TASKS, spec=SPEC)
    with pytest.raises(TypeError):
        generate_rollouts(model, tok, inputs, SamplingConfig(1, max_new_tokens=2), SPEC)  # positional: refused
    completion = torch.tensor([[11, 12, 13], [14, 15, 16]])  # [2, 3] fixed ids
    ro = Rollouts(inputs.prompt_ids, inputs.prompt_mask, inputs.positions, inputs.vectors, completion,
                  torch.ones(2, 3, dtype=torch.long), torch.tensor([True, True]), ["", ""], 1)
    steered = completion_logprobs(model, ro, 1.0, spec=SPEC)  # [2, 3]
    unsteered = completion_logprobs(model, ro, 1.0, spec=replace(SPEC, coef=0.0))  # c = 0: h' = h
    ids = torch.cat([ro.prompt_ids, completion], dim=1)
    mask = torch.cat([ro.prompt_mask, ro.completion_mask], dim=1)
    with torch.no_grad():  # the plain forward, no hook: what c = 0 must equal
        logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
    plain = torch.log_softmax(logits[:, -4:-1], -1).gather(-1, completion[..., None])[..., 0]  # [2, 3]
    torch.testing.assert_close(unsteered, plain, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(steered, plain, atol=1e-3), "c = 1 must change the logprobs"
    other_layer = completion_logprobs(model, ro, 1.0, spec=replace(SPEC, injection_layer=3))
    assert not torch.allclose(other_layer, steered, atol=1e-3), "the injection layer must matter"


def _one_call_rollouts(model: Any, tok: Any, inputs: Any, sampling: SamplingConfig, spec: OracleSpec
                       ) -> tuple[Rollouts, torch.Tensor]:
    """The reference: the pre-prefill-once `generate_rollouts`, all B·G rows in one generate() with the hook
    installed (it steers the prefill only), plus log softmax(logits / T) of the sampled ids from generate's
    own logits.  -> (Rollouts, logprobs [N, T'])"""
    g = sampling.num_generations
    ids = inputs.prompt_ids.repeat_interleave(g, dim=0)  # [N, P]
    mask = inputs.prompt_mask.repeat_interleave(g, dim=0)  # [N, P]
    positions = [p for p in inputs.positions for _ in range(g)]
    vectors = [v for v in inputs.vectors for _ in range(g)]
    eos_ids = end_of_turn_ids(model, tok)
    kwargs = {"do_sample": False} if sampling.greedy else {
        "do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k}
    with torch.no_grad(), inject(model, vectors, positions, spec.injection_layer, spec.coef):
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=sampling.max_new_tokens,
                             eos_token_id=eos_ids, pad_token_id=tok.pad_token_id, output_logits=True,
                             return_dict_in_generate=True, **kwargs)
    sampled = out.sequences[:, ids.shape[1]:]  # [N, T']
    temperature = 1.0 if sampling.greedy else sampling.temperature
    logprobs = torch.stack([torch.log_softmax(x.float() / temperature, -1) for x in out.logits], 1)  # [N, T', V]
    logprobs = logprobs.gather(-1, sampled[..., None])[..., 0]  # [N, T']
    completion_ids = torch.nn.functional.pad(sampled, (0, sampling.max_new_tokens - sampled.shape[1]),
                                             value=tok.pad_token_id)  # [N, T]
    cmask, truncated = completion_mask_for(completion_ids, eos_ids)
    completion_ids = completion_ids.masked_fill(cmask == 0, tok.pad_token_id)
    texts = tok.batch_decode(completion_ids, skip_special_tokens=True)
    return Rollouts(ids, mask, positions, vectors, completion_ids, cmask, truncated, texts, g), logprobs


MIXED = [*TASKS, T("Cats.", "Why?", 75, 1)]
"""Three prompts of different lengths (left padding) and K = 2, 4, 1."""


@pytest.fixture(scope="module")
def varied():
    """The seed-1 tiny model: its greedy answers change token within rows and differ between rows (seed 0
    repeats one token), and token 420 made an end-of-turn so rows finish at different steps."""
    model, tok = build_tiny_model_and_tokenizer(seed=1)
    model.generation_config.eos_token_id = [*model.generation_config.eos_token_id, 420]
    return model, tok


@pytest.mark.parametrize("g", [1, 2])
def test_prefill_once_greedy_equals_the_one_call_path(varied, g):
    model, tok = varied
    inputs = build_oracle_inputs(model, tok, MIXED, spec=SPEC)
    assert inputs.prompt_mask.sum(1).unique().numel() == 3, "prompts of different lengths: left padding"
    sampling = SamplingConfig(num_generations=g, max_new_tokens=12, greedy=True)
    ref, ref_lp = _one_call_rollouts(model, tok, inputs, sampling, SPEC)
    ro = generate_rollouts(model, tok, inputs, sampling, spec=SPEC)
    assert torch.equal(ro.completion_ids, ref.completion_ids)
    assert torch.equal(ro.completion_mask, ref.completion_mask) and torch.equal(ro.truncated, ref.truncated)
    assert ro.texts == ref.texts and torch.equal(ro.prompt_ids, ref.prompt_ids)
    assert ro.positions == ref.positions and all(torch.equal(a, b) for a, b in zip(ro.vectors, ref.vectors))
    lengths = ro.lengths.tolist()
    assert len(set(lengths)) >= 2 and max(lengths) < 12 and ro.completion_ids[:, 0].unique().numel() >= 2, \
        f"the case must mix lengths, finish before max_new_tokens and differ between rows: {ro.completion_ids}"
    on = ro.completion_mask.bool()
    width = ref_lp.shape[1]  # generate() stopped when every row had finished
    torch.testing.assert_close(ro.sampling_logprobs[:, :width][on[:, :width]], ref_lp[on[:, :width]],
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(completion_logprobs(model, ro, 1.0, spec=SPEC)[on],
                               completion_logprobs(model, ref, 1.0, spec=SPEC)[on], atol=1e-5, rtol=1e-5)
    unsteered = generate_rollouts(model, tok, inputs, sampling, spec=replace(SPEC, coef=0.0))
    assert not torch.allclose(unsteered.sampling_logprobs, ro.sampling_logprobs, atol=1e-3), \
        "the injection must reach the cached prefill"


@pytest.mark.parametrize("g", [1, 4])
def test_prompts_are_prefilled_once_and_decoded_without_the_hook(varied, g):
    model, tok = varied
    inputs = build_oracle_inputs(model, tok, MIXED, spec=SPEC)
    shapes = []  # (batch, length) of every forward through the injection block
    block = decoder_layers(model)[SPEC.injection_layer]
    handle = block.register_forward_hook(lambda m, a, o: shapes.append(tuple(a[0].shape[:2])))
    try:
        generate_rollouts(model, tok, inputs, SamplingConfig(num_generations=g, max_new_tokens=3), spec=SPEC)
    finally:
        handle.remove()
    p = inputs.prompt_ids.shape[1]
    if g == 1:  # generate's own prefill under the hook, then two decode steps
        assert shapes == [(3, p), (3, 1), (3, 1)]
    else:  # one B-row prefill of P-1 tokens, then the last prompt token and two decode steps in B·G rows
        assert shapes == [(3, p - 1), (12, 1), (12, 1), (12, 1)]
    assert not block._forward_hooks and not model._forward_hooks, "no hook left behind"


def test_a_placeholder_on_the_last_prompt_token_is_refused(tiny):
    model, tok = tiny
    inputs = build_oracle_inputs(model, tok, TASKS, spec=SPEC)
    last = inputs.prompt_ids.shape[1] - 1
    bad = replace(inputs, positions=[inputs.positions[0], [*inputs.positions[1][:-1], last]])
    with pytest.raises(AssertionError, match="last prompt token"):
        generate_rollouts(model, tok, bad, SamplingConfig(num_generations=2, max_new_tokens=2), spec=SPEC)


def test_sampling_logprobs_are_the_loss_logprobs_before_top_k_and_top_p(varied):
    model, tok = varied
    inputs = build_oracle_inputs(model, tok, MIXED, spec=SPEC)
    sampling = SamplingConfig(num_generations=4, max_new_tokens=8, temperature=1.7, top_k=5, top_p=0.9)
    torch.manual_seed(0)
    ro = generate_rollouts(model, tok, inputs, sampling, spec=SPEC)
    on = ro.completion_mask.bool()
    assert on.sum() >= 24
    # the unfiltered distribution at T = 1.7, what the loss's old/training logprobs compute
    torch.testing.assert_close(ro.sampling_logprobs[on], completion_logprobs(model, ro, 1.7, spec=SPEC)[on],
                               atol=1e-4, rtol=1e-4)
    assert (ro.sampling_logprobs[~on] == 0).all() and (ro.sampling_logprobs[on] < 0).all()
    assert not torch.allclose(ro.sampling_logprobs[on], completion_logprobs(model, ro, 1.0, spec=SPEC)[on],
                              atol=1e-3), "temperature must matter"


def test_sampled_groups_are_valid_and_top_k_1_sampling_is_greedy(varied):
    model, tok = varied
    inputs = build_oracle_inputs(model, tok, MIXED, spec=SPEC)
    torch.manual_seed(1)
    ro = generate_rollouts(model, tok, inputs, SamplingConfig(num_generations=4, max_new_tokens=6, temperature=2.0),
                           spec=SPEC)
    eos = end_of_turn_ids(model, tok)
    for row in range(12):
        n = int(ro.lengths[row])
        assert (ro.completion_ids[row, n:] == tok.pad_token_id).all()
        assert (ro.completion_ids[row, n - 1].item() in eos) != bool(ro.truncated[row])
    groups = ro.completion_ids.view(3, 4, 6)
    assert all(len({tuple(r) for r in grp.tolist()}) > 1 for grp in groups), "G samples of a prompt must differ"
    # top-k 1: each row's cached prompt must be its own, so sampling equals greedy row for row
    top1 = generate_rollouts(model, tok, inputs, SamplingConfig(num_generations=4, max_new_tokens=6, top_k=1),
                             spec=SPEC)
    greedy = generate_rollouts(model, tok, inputs, SamplingConfig(num_generations=1, max_new_tokens=6, greedy=True),
                               spec=SPEC)
    assert torch.equal(top1.completion_ids, greedy.completion_ids.repeat_interleave(4, dim=0))
