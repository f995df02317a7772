"""Hand-computed values and invariances for grpo_ao.loss."""

import math

import pytest
import torch

from grpo_ao.loss import group_advantages, kl_k3, masked_mean, policy_loss, token_logprobs

NAN = float("nan")


def _close(actual, expected, atol=1e-6):
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float64),
        torch.as_tensor(expected, dtype=torch.float64),
        atol=atol,
        rtol=1.3e-6,
    )


# --- masked_mean -------------------------------------------------------------------------------


def test_masked_mean_ignores_masked_nan_and_clamps_empty_count():
    x = torch.tensor([[1.0, 3.0, NAN], [NAN, NAN, NAN]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    # row 0: (1 + 3) / 2 = 2; row 1: 0 / clamp(0, min=1) = 0; all: 4 / 2 = 2
    _close(masked_mean(x, mask, dim=1), [2.0, 0.0])
    _close(masked_mean(x, mask), 2.0)


# --- group_advantages --------------------------------------------------------------------------

REWARDS = torch.tensor([[1.0, 0.0, 0.5, NAN], [2.0, 2.0, 2.0, 2.0], [NAN, 7.0, NAN, NAN]])
VALID = torch.tensor([[True, True, True, False], [True, True, True, True], [False, False, False, False]])


def test_group_advantages_subtract_mean_of_valid_members_only():
    # group 0: mean(1, 0, 0.5) = 0.5 -> [0.5, -0.5, 0, masked 0]; group 1: all equal -> 0;
    # group 2: no valid member -> 0 (the 7.0 is a failed judgment and must not leak in)
    expected = [[0.5, -0.5, 0.0, 0.0], [0.0] * 4, [0.0] * 4]
    _close(group_advantages(REWARDS, VALID), expected)


def test_group_advantages_group_scaling_divides_by_unbiased_group_std():
    # group 0: deviations (0.5, -0.5, 0), var = 0.5 / (3 - 1) = 0.25, std = 0.5 -> [1, -1, 0, 0];
    # group 1 has std 0 (floored), its deviations are 0 -> 0
    expected = [[1.0, -1.0, 0.0, 0.0], [0.0] * 4, [0.0] * 4]
    _close(group_advantages(REWARDS, VALID, "group"), expected)


def test_group_advantages_batch_scaling_divides_by_std_of_all_valid_rewards():
    # valid rewards: 1, 0, 0.5, 2, 2, 2, 2; mean = 9.5 / 7 = 19/14;
    # deviations (in 14ths): -5, -19, -12, 9, 9, 9, 9 -> sum of squares = 854 / 196;
    # unbiased var = 854 / 196 / 6, std = sqrt(that) ~ 0.85217
    std = math.sqrt(854 / 196 / 6)
    expected = [[0.5 / std, -0.5 / std, 0.0, 0.0], [0.0] * 4, [0.0] * 4]
    _close(group_advantages(REWARDS, VALID, "batch"), expected)


def test_group_advantages_single_valid_member_is_zero_in_every_mode():
    rewards = torch.tensor([[3.0, NAN]])
    valid = torch.tensor([[True, False]])
    for mode in ("none", "group", "batch"):
        _close(group_advantages(rewards, valid, mode), [[0.0, 0.0]])


def test_group_advantages_rejects_unknown_scale_mode():
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(REWARDS, VALID, "std")


# --- policy_loss: aggregation ------------------------------------------------------------------


def _lengths_1_and_3():
    """Two completions of lengths 1 and 3, max_new_tokens 4, advantages (1, -0.5)."""
    logprobs = torch.full((2, 4), -1.0, requires_grad=True)
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0]])
    advantages = torch.tensor([1.0, -0.5])
    return logprobs, mask, advantages


def test_dr_grpo_normaliser_is_constant_so_long_completions_are_not_down_weighted():
    logprobs, mask, advantages = _lengths_1_and_3()
    loss, stats = policy_loss(logprobs, None, advantages, mask, max_new_tokens=4)
    # ratio == 1, so each token loses -A: -(1 * 1 + (-0.5) * 3) / (2 rollouts * 4) = 0.5 / 8
    _close(loss, 0.0625)
    _close(stats.loss, 0.0625)
    _close(stats.policy_loss, 0.0625)
    loss.backward()
    # d/dlp of -ratio*A / 8 = -A / 8 per token: every token of the long answer weighs 1/8,
    # the same as the short answer's token (a per-sequence mean would give it 1/24)
    _close(logprobs.grad, [[-1 / 8, 0, 0, 0], [1 / 16, 1 / 16, 1 / 16, 0]])
    assert stats.kl is None
    _close(stats.ratio_mean, 1.0)
    _close(stats.clip_frac, 0.0)


def test_grpo_loss_is_mean_of_per_sequence_means():
    logprobs, mask, advantages = _lengths_1_and_3()
    loss, _ = policy_loss(logprobs, None, advantages, mask, max_new_tokens=4, loss_type="grpo")
    # sequence means: -1 and +0.5 -> (-1 + 0.5) / 2 = -0.25
    _close(loss, -0.25)
    loss.backward()
    # each token of sequence n gets -A_n / (len_n * 2): -1/2 and 0.5 / 6
    _close(logprobs.grad, [[-0.5, 0, 0, 0], [1 / 12, 1 / 12, 1 / 12, 0]])


def test_dapo_loss_is_token_mean_over_the_batch():
    logprobs, mask, advantages = _lengths_1_and_3()
    loss, _ = policy_loss(logprobs, None, advantages, mask, max_new_tokens=4, loss_type="dapo")
    # (-1 + 0.5 * 3) / 4 completion tokens = 0.125
    _close(loss, 0.125)


def test_policy_loss_rejects_unknown_loss_type_and_beta_without_reference():
    logprobs, mask, advantages = _lengths_1_and_3()
    with pytest.raises(ValueError, match="loss_type"):
        policy_loss(logprobs, None, advantages, mask, max_new_tokens=4, loss_type="mean")
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(logprobs, None, advantages, mask, max_new_tokens=4, beta=0.1)


# --- policy_loss: clipping ---------------------------------------------------------------------


def test_ratio_above_one_plus_epsilon_with_positive_advantage_has_zero_gradient():
    logprobs = torch.full((2, 1), math.log(1.5), requires_grad=True)
    old_logprobs = torch.zeros(2, 1)  # ratio = 1.5 for both
    advantages = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 1)
    loss, stats = policy_loss(logprobs, old_logprobs, advantages, mask, max_new_tokens=1)
    # row 0: -min(1.5 * 1, 1.2 * 1) = -1.2 (clipped); row 1: -min(-1.5, -1.2) = 1.5 (not clipped)
    # (-1.2 + 1.5) / (2 * 1) = 0.15
    _close(loss, 0.15)
    loss.backward()
    # row 0 is constant -> 0; row 1: d(-ratio * A)/dlp / 2 = -A * ratio / 2 = 0.75
    _close(logprobs.grad, [[0.0], [0.75]])
    _close(stats.clip_frac, 0.5)
    _close(stats.ratio_mean, 1.5)


def test_epsilon_high_widens_only_the_upper_clip():
    logprobs = torch.tensor([[math.log(1.5)], [math.log(0.5)]], requires_grad=True)
    old_logprobs = torch.zeros(2, 1)
    advantages = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 1)
    loss, stats = policy_loss(
        logprobs, old_logprobs, advantages, mask, max_new_tokens=1, epsilon=0.2, epsilon_high=0.6
    )
    # row 0: ratio 1.5 < 1.6 -> -1.5 (not clipped); row 1: ratio 0.5 < 0.8 with A < 0 ->
    # -min(-0.5, -0.8) = 0.8 (clipped low); (-1.5 + 0.8) / 2 = -0.35
    _close(loss, -0.35)
    loss.backward()
    _close(logprobs.grad, [[-0.75], [0.0]])
    _close(stats.clip_frac, 0.5)


# --- policy_loss: KL ---------------------------------------------------------------------------


def test_kl_k3_by_hand_and_keeps_gradient():
    logprobs = torch.zeros(1, 1, requires_grad=True)
    ref_logprobs = torch.full((1, 1), math.log(2.0))
    kl = kl_k3(logprobs, ref_logprobs)
    # exp(log 2) - log 2 - 1 = 1 - log 2
    _close(kl, [[1 - math.log(2.0)]])
    assert kl.grad_fn is not None
    kl.sum().backward()
    # d/dlp [exp(ref - lp) - (ref - lp) - 1] = 1 - exp(ref - lp) = 1 - 2
    _close(logprobs.grad, [[-1.0]])


def _grad_of(loss_fn):
    logprobs = torch.tensor([[-0.3, -1.2], [-0.7, -2.0]], requires_grad=True)
    loss_fn(logprobs).backward()
    return logprobs.grad


def test_beta_changes_gradient_but_a_float_kl_would_not():
    ref = torch.tensor([[-0.5, -1.0], [-0.2, -2.5]])
    adv = torch.tensor([0.5, -0.5])
    mask = torch.ones(2, 2)

    def loss_with(beta):
        def fn(lp):
            return policy_loss(lp, None, adv, mask, ref_logprobs=ref, beta=beta, max_new_tokens=2)[0]

        return fn

    def float_kl_loss(lp):  # the old prototype's bug: KL turned into a number before adding it
        loss, stats = policy_loss(lp, None, adv, mask, ref_logprobs=ref, beta=0.0, max_new_tokens=2)
        return loss + 0.1 * stats.kl

    grad_beta0 = _grad_of(loss_with(0.0))
    grad_beta = _grad_of(loss_with(0.1))
    assert not torch.allclose(grad_beta, grad_beta0)
    # per token the KL adds beta * (1 - exp(ref - lp)) / (N * T) = 0.1 * (1 - exp(ref - lp)) / 4
    lp = torch.tensor([[-0.3, -1.2], [-0.7, -2.0]])
    _close(grad_beta - grad_beta0, 0.1 * (1 - torch.exp(ref - lp)) / 4)
    torch.testing.assert_close(_grad_of(float_kl_loss), grad_beta0, atol=1e-6, rtol=0)


# --- policy_loss: invariances ------------------------------------------------------------------


def _random_batch(n=4, t=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logprobs = -torch.rand(n, t, generator=g) * 3
    old_logprobs = logprobs + 0.3 * torch.randn(n, t, generator=g)
    ref_logprobs = logprobs + 0.2 * torch.randn(n, t, generator=g)
    advantages = torch.randn(n, generator=g)
    lengths = torch.tensor([1, 5, 3, 2, 4, 5, 2, 1][:n])
    mask = (torch.arange(t)[None, :] < lengths[:, None]).float()
    return logprobs, old_logprobs, ref_logprobs, advantages, mask


@pytest.mark.parametrize("loss_type", ["dr_grpo", "grpo", "dapo"])
def test_micro_batch_1_times_accumulation_4_equals_full_batch(loss_type):
    logprobs, old, ref, adv, mask = _random_batch()
    kwargs = dict(beta=0.04, loss_type=loss_type, max_new_tokens=5)
    full_lp = logprobs.clone().requires_grad_()
    full, _ = policy_loss(full_lp, old, adv, mask, ref_logprobs=ref, **kwargs)
    full.backward()

    micro_lp = logprobs.clone().requires_grad_()
    total = torch.zeros(())
    for i in range(4):
        loss, _ = policy_loss(
            micro_lp[i : i + 1], old[i : i + 1], adv[i : i + 1], mask[i : i + 1],
            ref_logprobs=ref[i : i + 1], num_rollouts=4, num_tokens=int(mask.sum()), **kwargs,
        )  # fmt: skip
        loss.backward()  # gradient accumulation
        total = total + loss.detach()
    _close(total, full.detach())
    torch.testing.assert_close(micro_lp.grad, full_lp.grad, atol=1e-6, rtol=0)


@pytest.mark.parametrize("loss_type", ["dr_grpo", "grpo", "dapo"])
def test_rollout_with_empty_completion_mask_contributes_nothing(loss_type):
    logprobs, old, ref, adv, mask = _random_batch()
    mask[2] = 0  # e.g. a masked rollout; its advantage and logprobs are arbitrary
    kwargs = dict(beta=0.04, loss_type=loss_type, max_new_tokens=5, num_rollouts=3)
    lp = logprobs.clone().requires_grad_()
    with_row, _ = policy_loss(lp, old, adv, mask, ref_logprobs=ref, **kwargs)
    with_row.backward()
    keep = [0, 1, 3]
    without, _ = policy_loss(
        logprobs[keep], old[keep], adv[keep], mask[keep], ref_logprobs=ref[keep], **kwargs
    )
    _close(with_row.detach(), without)
    _close(lp.grad[2], torch.zeros(5))


def test_judge_failure_rollout_gets_zero_advantage_and_zero_gradient():
    rewards = torch.tensor([[1.0, 0.0, NAN]])
    valid = torch.tensor([[True, True, False]])  # the judge failed on rollout 2
    adv = group_advantages(rewards, valid).flatten()  # [0.5, -0.5, 0]
    lp = torch.full((3, 2), -1.0, requires_grad=True)
    loss, _ = policy_loss(lp, None, adv, torch.ones(3, 2), max_new_tokens=2)
    loss.backward()
    _close(lp.grad[2], [0.0, 0.0])


def test_permuting_rollouts_within_a_group_does_not_change_the_loss():
    g = torch.Generator().manual_seed(1)
    rewards = torch.rand(2, 4, generator=g)  # B=2 groups, G=4
    valid = torch.tensor([[True, True, False, True], [True] * 4])
    logprobs, old, ref, _, mask = _random_batch(n=8, seed=1)

    def loss_for(perm):  # perm acts within group 0 only
        r, v = rewards.clone(), valid.clone()
        r[0], v[0] = rewards[0, perm], valid[0, perm]
        rows = torch.cat([perm, torch.arange(4, 8)])
        adv = group_advantages(r, v).flatten()  # [B*G]
        loss, _ = policy_loss(
            logprobs[rows], old[rows], adv, mask[rows], ref_logprobs=ref[rows], beta=0.1, max_new_tokens=5
        )
        return loss

    _close(loss_for(torch.tensor([2, 0, 3, 1])), loss_for(torch.arange(4)))


# --- token_logprobs ----------------------------------------------------------------------------


def test_token_logprobs_equals_log_softmax_of_scaled_logits_with_same_gradient():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 11, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 11, (3, 4), generator=g)
    weights = torch.randn(3, 4, generator=g, dtype=torch.float64)
    temperature = 0.7

    ours_in = logits.clone().requires_grad_()
    ours = token_logprobs(ours_in, ids, temperature)
    ref_in = logits.clone().requires_grad_()
    ref = torch.log_softmax(ref_in / temperature, dim=-1).gather(-1, ids[..., None]).squeeze(-1)
    _close(ours, ref)
    (ours * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad, atol=1e-6, rtol=0)


def test_token_logprobs_by_hand():
    # logits (0, log 3) at T=1: softmax = (1/4, 3/4); at T=0.5: logits (0, 2 log 3) -> (1/10, 9/10)
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    ids = torch.tensor([[1]])
    _close(token_logprobs(logits, ids, 1.0), [[math.log(0.75)]])
    _close(token_logprobs(logits, ids, 0.5), [[math.log(0.9)]])


def test_token_logprobs_keeps_bf16_gradient_dtype():
    logits = torch.randn(2, 3, 7, dtype=torch.bfloat16, requires_grad=True)
    out = token_logprobs(logits, torch.zeros(2, 3, dtype=torch.long), 1.0)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert logits.grad.dtype == torch.bfloat16


def test_token_logprobs_match_the_samplers_distribution_on_a_tiny_model():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16,
    )  # fmt: skip
    model = Qwen3ForCausalLM(config).eval()
    prompt = torch.tensor([[3, 9, 17, 4, 30]])
    temperature = 0.7
    # the config has no eos, so all 6 tokens are sampled; top_k=0/top_p=1 leave the distribution whole
    out = model.generate(
        prompt, do_sample=True, temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=6,
        output_scores=True, return_dict_in_generate=True, pad_token_id=0,
    )  # fmt: skip
    new_ids = out.sequences[:, prompt.shape[1] :]  # [1, 6]
    # the sampler's own logprobs: log_softmax of its processed (temperature-divided) scores
    sampler = torch.stack(
        [torch.log_softmax(s, -1)[0, i] for s, i in zip(out.scores, new_ids[0], strict=True)]
    )
    with torch.no_grad():
        logits = model(out.sequences).logits[:, prompt.shape[1] - 1 : -1]  # [1, 6, V]
    ours = token_logprobs(logits, new_ids, temperature)[0]
    torch.testing.assert_close(ours, sampler, atol=1e-5, rtol=0)  # KV-cache vs full forward
    # greedy-equivalent: the greedy token is the most likely one at any temperature
    greedy = logits.argmax(-1)  # [1, 6]
    best = token_logprobs(logits, greedy, temperature)
    full = torch.log_softmax(logits / temperature, -1).amax(-1)
    _close(best, full)


def test_split_advantages_by_hand_with_a_parse_failure_in_the_group():
    from grpo_ao.loss import split_advantages

    # group 0: (u, c) = (0.7, -0.04), (0.1, -0.36) and a parse failure at r = -0.5.
    #   mean_P(r) = (0.66 - 0.26)/2 = 0.2, mean_V(r) = -0.1/3, δ = 0.2 + 0.1/3 = 0.233333
    #   tag: c - mean_P(c) + δ = ±0.16 + δ; answer: u - mean_P(u) + δ = ±0.3 + δ; failure: -0.5 + 0.1/3 in both
    # group 1 (G = 2 used, third member judge-masked): (0.45, -0.0625), (0.1, -0.01); δ = 0
    #   tag ∓0.02625, answer ±0.175, which add up to the sequence advantage r - mean(r) = ±0.14875
    info = torch.tensor([[0.7, 0.1, 0.0], [0.45, 0.1, 0.3]])
    calib = torch.tensor([[-0.04, -0.36, 0.0], [-0.0625, -0.01, -0.2]])
    rewards = torch.tensor([[0.66, -0.26, -0.5], [0.3875, 0.09, float("nan")]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    parsed = torch.tensor([[True, True, False], [True, True, True]])  # the masked one is not valid
    tag, answer = split_advantages(info, calib, rewards, valid, parsed)
    d = 0.2 + 0.1 / 3
    _close(tag, torch.tensor([[0.16 + d, -0.16 + d, -0.5 + 0.1 / 3], [-0.02625, 0.02625, 0.0]]))
    _close(answer, torch.tensor([[0.3 + d, -0.3 + d, -0.5 + 0.1 / 3], [0.175, -0.175, 0.0]]))


def test_split_advantages_add_up_to_the_sequence_advantage_without_parse_failures():
    from grpo_ao.loss import split_advantages

    g = torch.Generator().manual_seed(0)
    info, calib = torch.rand(4, 6, generator=g), -torch.rand(4, 6, generator=g)
    valid = torch.ones(4, 6, dtype=torch.bool)
    tag, answer = split_advantages(info, calib, info + calib, valid, valid)
    _close(tag + answer, group_advantages(info + calib, valid))


def test_route_advantages_gives_tag_tokens_the_tag_advantage():
    from grpo_ao.loss import route_advantages

    tag_mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    out = route_advantages(torch.tensor([1.0, -2.0]), torch.tensor([5.0, 7.0]), tag_mask)
    _close(out, torch.tensor([[1.0, 1.0, 5.0, 5.0], [-2.0, 7.0, 7.0, 7.0]]))


def test_policy_loss_with_per_token_advantages_equals_per_rollout_when_constant():
    lp, old, _, adv, mask = _random_batch()
    t = lp.shape[1]
    a, _ = policy_loss(lp, old, adv, mask, max_new_tokens=t)
    b, _ = policy_loss(lp, old, adv.unsqueeze(1).expand(-1, t), mask, max_new_tokens=t)
    _close(a, b)


# --- truncated importance sampling (sampler ≠ trainer) ------------------------------------------


def test_tis_weights_the_policy_gradient_by_the_capped_trainer_over_sampler_ratio():
    logprobs = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    mask = torch.tensor([[1, 1]])
    # the sampler thought token 0 likelier (w = e^-0.5) and token 1 much less likely (e^1.5 = 4.48 -> cap 2)
    sampling = torch.tensor([[-0.5, -3.5]])
    loss, stats = policy_loss(logprobs, None, torch.tensor([1.0]), mask, max_new_tokens=2,
                              sampling_logprobs=sampling, tis_cap=2.0)
    w0 = math.exp(-0.5)
    # ratio == 1: per-token loss -w_t * A, summed, / (1 rollout * 2 tokens)
    _close(loss, -(w0 + 2.0) / 2)
    loss.backward()
    _close(logprobs.grad, [[-w0 / 2, -2.0 / 2]])  # the weight is detached: it scales, it is not differentiated
    _close(stats.tis_weight_mean, (w0 + 2.0) / 2)
    _close(stats.logprob_mismatch, (0.5 + 1.5) / 2)


def test_tis_off_measures_the_mismatch_but_leaves_the_loss_alone():
    logprobs = torch.tensor([[-1.0, -2.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0]])
    sampling = torch.tensor([[-0.5, -3.5, float("nan")]])  # padding may hold anything
    plain, _ = policy_loss(logprobs, None, torch.tensor([1.0]), mask, max_new_tokens=3)
    loss, stats = policy_loss(logprobs, None, torch.tensor([1.0]), mask, max_new_tokens=3,
                              sampling_logprobs=sampling, tis_cap=0.0)
    _close(loss, plain)
    _close(stats.tis_weight_mean, 1.0)
    _close(stats.logprob_mismatch, 1.0)  # (|−1 − (−0.5)| + |−2 − (−3.5)|) / 2 tokens


def test_tis_with_equal_logprobs_is_the_plain_loss_and_padding_nan_does_not_leak():
    logprobs = torch.tensor([[-1.0, -2.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0]])
    sampling = torch.tensor([[-1.0, -2.0, float("nan")]])
    plain, _ = policy_loss(logprobs, None, torch.tensor([0.5]), mask, max_new_tokens=3)
    loss, stats = policy_loss(logprobs, None, torch.tensor([0.5]), mask, max_new_tokens=3,
                              sampling_logprobs=sampling, tis_cap=3.0)
    _close(loss, plain)
    assert math.isfinite(float(loss.detach()))
    _close(stats.logprob_mismatch, 0.0)


# --- expected_tag_loss / rollout_weights ---------------------------------------------------------


def test_rollout_weights_are_policy_losss_token_weights():
    from grpo_ao.loss import rollout_weights

    lengths = torch.tensor([2, 4])
    _close(rollout_weights("dr_grpo", lengths, 8, 5, 99), [1 / 40, 1 / 40])
    _close(rollout_weights("grpo", lengths, 8, 5, 99), [1 / 10, 1 / 20])
    _close(rollout_weights("dapo", lengths, 8, 5, 99), [1 / 99, 1 / 99])
    # the same weights policy_loss gives: d loss / d logprob_nt = −A_n · w_n on a completion token
    for loss_type in ("dr_grpo", "grpo", "dapo"):
        logprobs = torch.zeros(2, 4, requires_grad=True)
        mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
        loss, _ = policy_loss(logprobs, None, torch.tensor([1.0, 1.0]), mask, loss_type=loss_type, max_new_tokens=8,
                              num_rollouts=5, num_tokens=99)
        loss.backward()
        _close(-logprobs.grad[:, 0], rollout_weights(loss_type, lengths, 8, 5, 99))


def test_expected_tag_loss_gradient_is_the_sampled_tag_gradient_in_expectation():
    """E_{X_j ~ π}[−w_j (c(X_j, t_j) − b) ∇log π(X_j)], enumerated over the 11 values, for any baseline b."""
    from grpo_ao.loss import expected_tag_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 11, requires_grad=True)  # [B, 11]
    targets = torch.tensor([[1.0, 0.0, NAN], [0.45, 0.1, 0.7]])  # [B, G]
    weights = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.1]])  # [B, G]; the NaN target's rollout has weight 0
    lam = 1.5
    expected_tag_loss(logits, targets, weights, lam).backward()
    closed_form = logits.grad.clone()

    logits.grad = None
    x = torch.arange(11) / 10
    log_pi = torch.log_softmax(logits, dim=-1)  # [B, 11]
    surrogate = 0.0
    for i in range(2):
        for j in range(3):
            if weights[i, j] == 0:
                continue
            c = -lam * (x - targets[i, j]) ** 2  # [11]
            baseline = 0.37 * (i + 1)  # any baseline: Σ_X π ∇log π = 0
            surrogate = surrogate - weights[i, j] * (log_pi[i].exp().detach() * (c - baseline) * log_pi[i]).sum()
    surrogate.backward()
    torch.testing.assert_close(closed_form, logits.grad, atol=1e-6, rtol=1e-5)
    assert closed_form.abs().sum() > 0


def test_expected_tag_loss_puts_the_tag_at_ten_times_the_mean_target():
    from grpo_ao.loss import expected_tag_loss

    logits = torch.zeros(2, 11, requires_grad=True)
    targets = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]])  # means 0.6, 0.2
    optimizer = torch.optim.SGD([logits], lr=50.0)
    for _ in range(300):
        optimizer.zero_grad()
        expected_tag_loss(logits, targets, torch.ones(2, 5), 1.0).backward()
        optimizer.step()
    assert logits.argmax(dim=-1).tolist() == [6, 2]


def test_anchor_loss_is_the_nll_weighted_by_each_prompts_rollouts():
    from grpo_ao.loss import anchor_loss

    opening = torch.tensor([-0.5, -2.0], requires_grad=True)  # [B] log p(opening | prompt i)
    weights = torch.tensor([[0.1, 0.2], [0.3, 0.0]])  # [B, G]; prompt weights 0.3 and 0.3
    loss = anchor_loss(opening, weights)
    _close(loss, 0.3 * 0.5 + 0.3 * 2.0)  # −Σ_i W_i · log p = 0.15 + 0.6
    loss.backward()
    _close(opening.grad, [-0.3, -0.3])  # descending raises each opening's logprob


def test_kl_mask_keeps_the_kl_off_the_masked_tokens():
    logprobs = torch.zeros(1, 2, requires_grad=True)
    ref = torch.full((1, 2), math.log(0.5))
    k3 = 0.5 - math.log(0.5) - 1  # exp(ref − lp) − (ref − lp) − 1 = 0.1931 per token
    common = dict(beta=1.0, ref_logprobs=ref, max_new_tokens=2)
    full, _ = policy_loss(logprobs, None, torch.zeros(1), torch.ones(1, 2), **common)
    _close(full, 2 * k3 / 2)  # dr_grpo: both tokens' KL over 1 rollout × 2 tokens
    masked, _ = policy_loss(logprobs, None, torch.zeros(1), torch.ones(1, 2), kl_mask=torch.tensor([[1, 0]]), **common)
    _close(masked, k3 / 2)  # only the first token's
    masked.backward()
    assert logprobs.grad[0, 1] == 0 and logprobs.grad[0, 0] != 0


def test_expected_tag_loss_with_entropy_is_stationary_at_the_gibbs_distribution_around_the_target():
    """With α > 0 the optimum is π(X) ∝ exp(−Σ_j w_j λ(X/10 − t_j)² / (α Σ_j w_j)): same mode, soft tails.
    Checked as stationarity: the gradient vanishes at those logits, and not at the Gibbs logits of another α."""
    from grpo_ao.loss import expected_tag_loss

    targets = torch.tensor([[1.0, 1.0, 0.0]])  # mean target 2/3: mode at X = 7
    weights = torch.tensor([[0.5, 0.5, 0.5]])
    x = torch.arange(11) / 10
    brier = ((x.view(-1, 1) - targets.view(1, -1)) ** 2).mean(dim=1)  # [11] E_j (X/10 − t_j)²
    grads = {}
    for alpha in (0.01, 0.03):
        logits = (-brier / 0.01).view(1, 11).clone().requires_grad_(True)  # the Gibbs logits of α = 0.01
        expected_tag_loss(logits, targets, weights, 1.0, entropy=alpha).backward()
        grads[alpha] = logits.grad.abs().max().item()
    assert grads[0.01] < 1e-6 and grads[0.03] > 1e-3
    gibbs = torch.softmax(-brier / 0.01, dim=0)
    assert int(gibbs.argmax()) == 7 and 0.1 < float(gibbs[6]) < float(gibbs[7])  # soft, not a point mass
