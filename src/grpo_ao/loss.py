"""Dr. GRPO loss: group advantages, token logprobs at the sampling temperature, clipped policy loss.

Every function here is pure: tensors in, tensors out, no model and no config object.

What we deliberately do NOT do:
- No division of advantages by the group std by default (`scale_rewards="none"`): Dr. GRPO shows
  that the std scaling up-weights groups whose rewards barely differ (https://arxiv.org/abs/2503.20783).
- In `dr_grpo` aggregation, token losses are summed and divided by the constant
  `num_rollouts * max_new_tokens`, never by each completion's own length: a per-completion mean
  gives each token of a short answer more weight than a token of a long one (length bias).
- No KL term by default (`beta=0`). When it is on, the k3 estimate stays a tensor with its gradient;
  it is never turned into a Python number before being added to the loss.
- No re-computation of the sampling distribution by other means: logprobs come from the logits
  divided by the sampling temperature, gathered at the sampled ids.
- No silent importance correction for the sampler/trainer gap (a vLLM engine computes slightly different
  logprobs than the training forward): it is measured always (`LossStats.logprob_mismatch`) and corrected only
  when `tis_cap > 0` (truncated importance sampling, weights detached).

Vocabulary: `B` prompts, `G` generations per prompt, `N = B * G` rollouts (or a micro-batch of them),
`T` new tokens (padded), `V` vocabulary size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

SCALE_REWARDS = ("none", "group", "batch")
LOSS_TYPES = ("dr_grpo", "grpo", "dapo")
STD_FLOOR = 1e-4
"""Smallest std we divide by when `scale_rewards` is "group" or "batch"."""


@dataclass(frozen=True)
class LossStats:
    """Detached numbers from one `policy_loss` call, for logging.

    `loss` and `policy_loss` use the same normaliser as the returned loss, so the values of the
    micro-batches of one optimizer step add up to the step's loss. `kl`, `clip_frac`, `ratio_mean`,
    `tis_weight_mean` and `logprob_mismatch` are means over this call's completion tokens.
    """

    loss: float
    policy_loss: float
    kl: float | None
    clip_frac: float
    ratio_mean: float
    tis_weight_mean: float = 1.0
    logprob_mismatch: float | None = None
    """mean |old_logprobs − sampling_logprobs|; None when the sampler's logprobs are unknown."""


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """sum(x * mask) / max(sum(mask), 1), over all elements or along `dim`.

    Args:
        x: values, any shape.
        mask: same shape as `x`, bool or 0/1; False entries are ignored (even if NaN).
        dim: reduce along this dimension; None reduces everything to a scalar.
    """
    mask = mask.to(x.dtype)
    x = torch.where(mask.bool(), x, torch.zeros_like(x))  # masked entries may hold NaN
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def group_advantages(rewards: Tensor, valid: Tensor, scale_rewards: str = "none") -> Tensor:
    """A_ij = r_ij - mean_{k valid}(r_ik), over the valid members of group i.  [B, G] -> [B, G]

    `scale_rewards="group"` divides by the std of the group's valid rewards, `"batch"` by the std
    of all valid rewards in the batch (unbiased std, floored at `STD_FLOOR`). Invalid entries
    (judge failure) get advantage 0 and do not enter any mean or std. A group with no valid member
    is all 0, and so is a group with one (its reward equals its mean).
    GRPO: https://arxiv.org/abs/2402.03300; Dr. GRPO (no std): https://arxiv.org/abs/2503.20783.

    Args:
        rewards: [B, G] float; invalid entries may hold any value, NaN included.
        valid: [B, G] bool; False excludes the rollout.
        scale_rewards: "none" (Dr. GRPO default), "group" or "batch".
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards={scale_rewards!r}; choose one of {SCALE_REWARDS}")
    valid = valid.bool()  # [B, G]
    r = torch.where(valid, rewards, torch.zeros_like(rewards))  # [B, G]
    mean = masked_mean(r, valid, dim=1).unsqueeze(1)  # [B, 1]
    advantages = torch.where(valid, r - mean, torch.zeros_like(r))  # [B, G]
    if scale_rewards == "group":
        count = valid.sum(dim=1, keepdim=True)  # [B, 1]
        var = (advantages**2).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)  # [B, 1]
        advantages = advantages / var.sqrt().clamp(min=STD_FLOOR)  # [B, G]
    elif scale_rewards == "batch":
        batch_mean = masked_mean(r, valid)  # []
        dev = torch.where(valid, r - batch_mean, torch.zeros_like(r))  # [B, G]
        var = (dev**2).sum() / (valid.sum() - 1).clamp(min=1)  # []
        advantages = advantages / var.sqrt().clamp(min=STD_FLOOR)  # [B, G]
    return advantages


def split_advantages(info_part: Tensor, calib_part: Tensor, rewards: Tensor, valid: Tensor,
                     parsed: Tensor) -> tuple[Tensor, Tensor]:
    """Token-routed advantages: the tag tokens are credited with the calibration part of the reward, the
    answer tokens with the informativeness part.  [B, G] x 5 -> ([B, G] tag, [B, G] answer)

    With r = u + c, u = info (+ bonus) and c = −λ·(X/10 − target)², over the parsed and judged members P of
    group i and the valid members V (P plus the parse failures):
        δ_i         = mean_P(r_i) − mean_V(r_i)      (what parsing earned in the group)
        A_tag_ij    = c_ij − mean_P(c_i) + δ_i
        A_answer_ij = u_ij − mean_P(u_i) + δ_i
    A parse failure keeps the sequence advantage r_ij − mean_V(r_i) in both outputs (it has no parts).
    With no parse failure δ = 0 and A_tag + A_answer = r − mean(r), the sequence advantage. Only
    `scale_rewards="none"` (Dr. GRPO) is defined. The prototype spread calibration credit over the whole
    answer and collapsed to one confidence; this gives the tag its own signal.

    Args:
        info_part: u, [B, G]; any value where not parsed-and-judged.
        calib_part: c, [B, G]; any value where not parsed-and-judged.
        rewards: r, [B, G] totals; any value where invalid.
        valid: [B, G] bool, r is known (parsed and judged, or a parse failure).
        parsed: [B, G] bool, the tag parsed and the judge scored it (u and c are known).
    """
    valid, parsed = valid.bool(), parsed.bool() & valid.bool()  # [B, G]
    seq = group_advantages(rewards, valid)  # [B, G]
    zero = torch.zeros_like(rewards)
    r = torch.where(valid, rewards, zero)  # [B, G]
    delta = masked_mean(r, parsed, dim=1) - masked_mean(r, valid, dim=1)  # [B]
    tag = group_advantages(torch.where(parsed, calib_part, zero), parsed) + delta.unsqueeze(1)  # [B, G]
    answer = group_advantages(torch.where(parsed, info_part, zero), parsed) + delta.unsqueeze(1)  # [B, G]
    return torch.where(parsed, tag, seq), torch.where(parsed, answer, seq)


def route_advantages(tag_adv: Tensor, answer_adv: Tensor, tag_mask: Tensor) -> Tensor:
    """Per-token advantages: A_nt = tag_adv_n where token t belongs to the tag, else answer_adv_n.
    [N], [N], [N, T] bool -> [N, T]"""
    return torch.where(tag_mask.bool(), tag_adv.unsqueeze(1), answer_adv.unsqueeze(1))  # [N, T]


def rollout_weights(loss_type: str, lengths: Tensor, max_new_tokens: int, num_rollouts: int,
                    num_tokens: int) -> Tensor:
    """The weight one token's loss gets in `policy_loss`'s aggregation, per rollout.  [N] -> [N]

        dr_grpo: 1 / (num_rollouts · max_new_tokens)   grpo: 1 / (len_n · num_rollouts)   dapo: 1 / num_tokens
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r}; choose one of {LOSS_TYPES}")
    ones = torch.ones(lengths.shape, dtype=torch.float32)  # [N]
    if loss_type == "dr_grpo":
        return ones / (max(num_rollouts, 1) * max_new_tokens)
    if loss_type == "grpo":
        return 1.0 / (lengths.float().clamp(min=1) * max(num_rollouts, 1))
    return ones / max(num_tokens, 1)


def expected_tag_loss(candidate_logprobs: Tensor, targets: Tensor, weights: Tensor, lam: float,
                      entropy: float = 0.0) -> Tensor:
    """The tag's policy-gradient term in closed form over its 11 values (`grpo.tag_expectation`).

    The tag X is one action with 11 values, and the calibration part of the reward, c(X, t) = −λ·(X/10 − t)²,
    is known for every X once the judge gave rollout j its target t_ij. So instead of crediting the sampled X
    (`split_advantages`' A_tag, whose estimate needs many samples), take the expectation over X exactly:
        π_i(X) = softmax_X(ℓ_iX)       ℓ_iX: the summed token logprobs of the tag spelling X after prompt i
        L      = −Σ_i Σ_j w_ij Σ_X π_i(X) · c(X, t_ij)          (j over the scored rollouts, w_ij = 0 elsewhere)
    In expectation over X_j ~ π_i its gradient equals the sampled term −Σ_j w_ij (c_ij − b_i) ∇log π_i(X_j)
    for any baseline b_i, with no variance from sampling X (tests/test_loss.py checks it by Monte Carlo).
    π renormalised over the 11 tags: this term does not move probability into or out of the tag format.
    With `entropy` α > 0 (`grpo.tag_entropy`) each prompt also gets −α·(Σ_j w_ij)·H(π_i). Its optimum is then
        π_i(X) ∝ exp(−Σ_j w_ij λ(X/10 − t_ij)² / (α Σ_j w_ij))
    — the same mode (X nearest 10·mean target), but a distribution that stays soft. Why: without it π sharpens on
    the batch's common value within a few steps, and a peaked softmax gives the other values almost no gradient,
    so prompts whose targets differ can no longer pull their tag away (measured: every prompt stuck at one X).

    Args:
        candidate_logprobs: ℓ, [B, 11]; column X is the tag `[epistemic status: X]`.
        targets: t, [B, G]; any value where the weight is 0 (NaN included).
        weights: w, [B, G] ≥ 0, the aggregation weight of each rollout's tokens (`rollout_weights`), 0 for a
            rollout that was not parsed and judged.
        lam: λ.
        entropy: α ≥ 0, the weight of the tag's entropy bonus.
    Returns:
        The scalar loss.  []
    """
    x = torch.arange(11, dtype=torch.float32, device=candidate_logprobs.device) / 10  # [11]
    w = weights.to(candidate_logprobs.device, torch.float32)  # [B, G]
    t = torch.where(w > 0, targets.to(w), torch.zeros_like(w))  # [B, G]
    calib = -lam * (x.view(1, 1, -1) - t.unsqueeze(-1)) ** 2  # [B, G, 11]
    value = (w.unsqueeze(-1) * calib).sum(dim=1)  # [B, 11]: Σ_j w_ij c(X, t_ij)
    log_pi = torch.log_softmax(candidate_logprobs.float(), dim=-1)  # [B, 11]
    pi = log_pi.exp()  # [B, 11]
    loss = -(pi * value).sum()  # []
    if entropy > 0:
        neg_entropy = (pi * log_pi).sum(dim=-1)  # [B] −H(π_i)
        loss = loss + entropy * (w.sum(dim=1) * neg_entropy).sum()  # []
    return loss


def anchor_loss(logprobs: Tensor, weights: Tensor) -> Tensor:
    """Negative log-likelihood of fixed tokens after each prompt, weighted like the prompt's rollouts: the anchors
    of `grpo.tag_expectation` (`grpo.format_anchor`: the tag's opening `[epistemic status: `; `grpo.answer_anchor`:
    the reference answer after the tag, the AO pretraining objective kept on as InstructGPT's "ptx" term).

        L = −Σ_i (Σ_j w_ij) · log p(anchor tokens | prompt i)

    Why: the tag term moves the shared LoRA, and nothing else holds the rest of the answer where it was (measured
    on SmolLM2: without the opening the oracle began answering before the tag; without the answer its global
    Yes/No bias swung from 21 % to 55 % to 0 % "Yes" within 30 steps).

    Args:
        logprobs: [B] summed logprobs of prompt i's anchor tokens.
        weights: [B, G] ≥ 0, the aggregation weight of each rollout (`rollout_weights`), 0 where not scored.
    Returns:
        The scalar loss.  []
    """
    w = weights.to(logprobs.device, torch.float32).sum(dim=1)  # [B]
    return -(w * logprobs.float()).sum()


class _TokenLogprobs(torch.autograd.Function):
    """log_softmax(logits / temperature) at `ids`, one row at a time, softmax recomputed in backward.

    Saves the logits themselves (alive anyway) and the [N, T] log-normalisers instead of an
    [N, T, V] float copy; peak extra memory is one [T, V] float row.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, ids: Tensor, temperature: float) -> Tensor:
        n = logits.shape[0]
        lse = torch.empty(ids.shape, dtype=torch.float32, device=logits.device)  # [N, T]
        picked = torch.empty_like(lse)  # [N, T]
        for i in range(n):
            row = logits[i].float() / temperature  # [T, V]
            lse[i] = torch.logsumexp(row, dim=-1)  # [T]
            picked[i] = row.gather(-1, ids[i].unsqueeze(-1)).squeeze(-1)  # [T]
        ctx.save_for_backward(logits, ids, lse)
        ctx.temperature = temperature
        return picked - lse  # [N, T]

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        logits, ids, lse = ctx.saved_tensors
        t = ctx.temperature
        grad_logits = torch.empty_like(logits)  # [N, T, V]
        for i in range(logits.shape[0]):
            probs = torch.exp(logits[i].float() / t - lse[i].unsqueeze(-1))  # [T, V]
            g = -probs * grad_out[i].float().unsqueeze(-1)  # [T, V]
            g.scatter_add_(-1, ids[i].unsqueeze(-1), grad_out[i].float().unsqueeze(-1))
            grad_logits[i] = (g / t).to(logits.dtype)  # d(z/t)/dz = 1/t
        return grad_logits, None, None


def token_logprobs(logits: Tensor, ids: Tensor, temperature: float) -> Tensor:
    """logprobs_nt = log softmax(logits_n,t / temperature)[ids_n,t].  [N, T, V], [N, T] -> [N, T]

    Use the sampling temperature, so the logprobs are those of the distribution the ids were
    drawn from (before top-k/top-p truncation). Computed in float32, row by row, without keeping
    an [N, T, V] log-softmax for backward; the gradient is returned in the logits' dtype.

    Args:
        logits: [N, T, V] logits at the positions that predict `ids` (already shifted).
        ids: [N, T] sampled token ids (int); padding ids must be valid indices.
        temperature: the sampling temperature, > 0.
    """
    assert temperature > 0, f"temperature must be > 0, got {temperature}"
    assert logits.shape[:2] == ids.shape, f"logits {tuple(logits.shape)} vs ids {tuple(ids.shape)}"
    return _TokenLogprobs.apply(logits, ids.long(), float(temperature))


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 estimate of KL(policy || ref) per token: exp(ref - lp) - (ref - lp) - 1.  [N, T] -> [N, T]

    Non-negative and unbiased for samples from the policy (http://joschu.net/blog/kl-approx.html).
    The gradient flows through `logprobs`; `ref_logprobs` is a constant.
    """
    log_r = ref_logprobs.detach() - logprobs  # [N, T]
    return torch.exp(log_r) - log_r - 1  # [N, T]


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor | None,
    advantages: Tensor,
    completion_mask: Tensor,
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    ref_logprobs: Tensor | None = None,
    beta: float = 0.0,
    loss_type: str = "dr_grpo",
    max_new_tokens: int,
    num_rollouts: int | None = None,
    num_tokens: int | None = None,
    sampling_logprobs: Tensor | None = None,
    tis_cap: float = 0.0,
    kl_mask: Tensor | None = None,
) -> tuple[Tensor, LossStats]:
    """Clipped policy-gradient loss with optional k3 KL, aggregated per `loss_type`.

    Per token (PPO clip, https://arxiv.org/abs/1707.06347; clip-higher from DAPO):
        ratio = exp(logprobs - old_logprobs)
        l_t   = -min(ratio * A, clip(ratio, 1 - epsilon, 1 + epsilon_high) * A) + beta * kl_k3
    Aggregation over the completion tokens (mask m):
        "dr_grpo": sum_{n,t} m*l / (num_rollouts * max_new_tokens)     (constant; default)
        "grpo":    sum_n [sum_t m*l / sum_t m] / num_rollouts           (per-sequence mean)
        "dapo":    sum_{n,t} m*l / num_tokens                           (token mean over the step)
    Truncated importance sampling (tis_cap > 0; the sampler is another engine, e.g. vLLM;
    https://fengyao.notion.site/off-policy-rl), a detached weight on the policy-gradient term:
        w_t = min(exp(old_logprobs - sampling_logprobs), tis_cap)          l_t = w_t * pg_t + beta * kl_t
    Pass the optimizer step's totals as `num_rollouts` / `num_tokens` when the step is split into
    micro-batches; the micro-batch losses then add up exactly to the full-batch loss. Left None,
    they are this call's N and completion-token count.

    Args:
        logprobs: [N, T] policy logprobs of the sampled ids, with gradient.
        old_logprobs: [N, T] logprobs of the policy that sampled, or None when each rollout batch
            gets one update (the ratio is then 1 in value and carries the gradient of `logprobs`).
        advantages: [N] one advantage per rollout, broadcast over its tokens, or [N, T] one per token
            (`route_advantages`).
        completion_mask: [N, T] 1 for completion tokens, 0 for padding; an all-zero row adds 0.
        epsilon: lower clip range; `epsilon_high` the upper one (default: `epsilon`).
        ref_logprobs: [N, T] logprobs of the frozen reference adapter; needed when beta > 0.
        beta: KL weight.
        loss_type: one of `LOSS_TYPES`.
        max_new_tokens: the sampling limit T_max, for the dr_grpo normaliser.
        num_rollouts: rollouts in the whole optimizer step (dr_grpo, grpo).
        num_tokens: completion tokens in the whole optimizer step (dapo).
        sampling_logprobs: [N, T] the sampler's logprobs of the sampled ids (`Rollouts.sampling_logprobs`), or
            None. Always used for `LossStats.logprob_mismatch`; for the correction only when tis_cap > 0.
        tis_cap: cap of the truncated importance-sampling weight; 0 turns the correction off.
        kl_mask: [N, T] 1 where the KL term applies (with `grpo.tag_expectation`: not on the tag's tokens, which
            `expected_tag_loss` trains), or None: on every completion token.

    Returns:
        The scalar loss (with gradient) and its `LossStats`.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r}; choose one of {LOSS_TYPES}")
    if beta != 0.0 and ref_logprobs is None:
        raise ValueError(f"beta={beta} needs ref_logprobs (the frozen starting adapter's logprobs)")
    mask = completion_mask.to(logprobs.dtype)  # [N, T]
    if old_logprobs is None:
        old_logprobs = logprobs.detach()  # one update per batch: ratio == 1, gradient of logprobs
    ratio = torch.exp(logprobs - old_logprobs)  # [N, T]
    adv = advantages.to(logprobs.dtype)
    adv = adv if adv.ndim == 2 else adv.unsqueeze(1)  # [N, T] or [N, 1]
    eps_high = epsilon if epsilon_high is None else epsilon_high
    clipped_ratio = ratio.clamp(1 - epsilon, 1 + eps_high)  # [N, T]
    pg = -torch.min(ratio * adv, clipped_ratio * adv)  # [N, T]
    gap = None  # [N, T] old − sampling logprobs on completion tokens, 0 elsewhere (padding may hold anything)
    if sampling_logprobs is not None:
        gap = torch.where(mask.bool(), old_logprobs.detach() - sampling_logprobs.to(pg.dtype), 0.0)  # [N, T]
    tis = torch.ones_like(pg)  # [N, T]
    if tis_cap > 0 and gap is not None:
        tis = torch.exp(gap).clamp(max=tis_cap)  # [N, T], no gradient: both logprobs are detached
        pg = tis * pg  # [N, T]
    kl = kl_k3(logprobs, ref_logprobs) if ref_logprobs is not None else None  # [N, T]
    if kl is not None and kl_mask is not None:
        kl = kl * kl_mask.to(kl.dtype)  # [N, T]
    per_token = pg + beta * kl if beta != 0.0 else pg  # [N, T]; kl keeps its grad_fn

    loss = _aggregate(per_token, mask, loss_type, max_new_tokens, num_rollouts, num_tokens)  # []
    with torch.no_grad():
        pg_loss = _aggregate(pg, mask, loss_type, max_new_tokens, num_rollouts, num_tokens)  # []
        clipped = ((ratio < 1 - epsilon) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))  # [N, T]
        stats = LossStats(
            loss=float(loss.detach()),
            policy_loss=float(pg_loss),
            kl=None if kl is None else float(masked_mean(kl.detach(), mask)),
            clip_frac=float(masked_mean(clipped.to(mask.dtype), mask)),
            ratio_mean=float(masked_mean(ratio.detach(), mask)),
            tis_weight_mean=float(masked_mean(tis, mask)),
            logprob_mismatch=None if gap is None else float(masked_mean(gap.abs(), mask)),
        )
    return loss, stats


def _aggregate(
    per_token: Tensor,
    mask: Tensor,
    loss_type: str,
    max_new_tokens: int,
    num_rollouts: int | None,
    num_tokens: int | None,
) -> Tensor:
    """Reduce [N, T] token losses to a scalar; see `policy_loss` for the three formulas."""
    masked = torch.where(mask.bool(), per_token, torch.zeros_like(per_token))  # [N, T]
    n_rollouts = per_token.shape[0] if num_rollouts is None else num_rollouts
    if loss_type == "dr_grpo":
        normaliser = n_rollouts * max_new_tokens  # constant: no length bias
        return masked.sum() / normaliser
    if loss_type == "grpo":
        per_sequence = masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # [N]; length-biased by design
        return per_sequence.sum() / max(n_rollouts, 1)
    n_tokens = mask.sum().clamp(min=1) if num_tokens is None else max(num_tokens, 1)
    return masked.sum() / n_tokens  # dapo: every token in the step weighs the same


def sft_loss(logprobs: Tensor, completion_mask: Tensor) -> Tensor:
    """Teacher-forced cross-entropy on the assistant tokens only (the prompt never enters):

        L = -sum_{n,t} m_nt * logprobs_nt / sum_{n,t} m_nt           [N, T], [N, T] -> []
    """
    mask = completion_mask.to(logprobs.dtype)  # [N, T]
    return -(logprobs * mask).sum() / mask.sum().clamp(min=1)
