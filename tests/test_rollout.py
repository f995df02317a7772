"""Rollouts on the tiny model: sampled ids kept, truncation without end-of-turn, eval mode while
sampling, and training-forward logprobs that match what the sampler used."""

from dataclasses import dataclass, replace

import pytest
import torch

from grpo_ao.format import ORACLE_SYSTEM_PROMPT
from grpo_ao.models import LoraSettings, attach_lora
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
