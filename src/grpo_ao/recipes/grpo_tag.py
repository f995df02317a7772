"""The tag's own terms of a GRPO step, for `recipes/grpo.py`: advantage routing (`grpo.advantage_routing` split / tag)
and, with `grpo.tag_expectation`, the closed-form tag term with its anchors (`grpo.format_anchor`,
`grpo.answer_anchor`, its prompts optionally from `grpo.answer_anchor_source`: `anchor_prompts`). Each backward
function runs its own forward and backward; gradients accumulate into the step's."""

from __future__ import annotations

from typing import Any

import torch

from grpo_ao.config import RunConfig
from grpo_ao.format import tag_token_mask, tagged_answer_ids
from grpo_ao.loss import anchor_loss, expected_tag_loss, rollout_weights, route_advantages, split_advantages
from grpo_ao.recipes.grpo_chunk import Chunk
from grpo_ao.recipes.setup import oracle_spec
from grpo_ao.rollout import OracleInputs, Rollouts, build_oracle_inputs, forced_completions, injected_logprobs


def routed_advantages(tokenizer: Any, rollouts: Rollouts, breakdowns: list, rewards: torch.Tensor,
                      valid: torch.Tensor, lam: float, answer_credit: bool = True,
                      tag_credit: bool = True, tag_mask: torch.Tensor | None = None) -> torch.Tensor:
    """`grpo.advantage_routing=split`: tag tokens get the calibration part's group advantage, answer tokens
    the informativeness part's (`loss.split_advantages`); `=tag` (answer_credit False): the answer tokens of a
    parsed and judged rollout get 0 instead; `grpo.tag_expectation` (tag_credit False): so do its tag tokens,
    whose term is then `loss.expected_tag_loss`. `tag_mask`: the scored rollouts' `tag_token_mask` where the caller
    has it already.  -> [N, T]"""
    g = rollouts.num_generations
    scored = torch.tensor([bd.brier is not None for bd in breakdowns])  # [N] parsed and judged
    info = torch.tensor([bd.info + bd.bonus if bd.brier is not None else 0.0 for bd in breakdowns])  # [N]
    calib = torch.tensor([-lam * bd.brier if bd.brier is not None else 0.0 for bd in breakdowns])  # [N]
    tag_adv, answer_adv = split_advantages(info.view(-1, g), calib.view(-1, g), rewards.view(-1, g),
                                           valid.view(-1, g), scored.view(-1, g))  # [B, G] each
    if not answer_credit:
        answer_adv = torch.where(scored.view(-1, g), torch.zeros_like(answer_adv), answer_adv)  # [B, G]
    if not tag_credit:
        tag_adv = torch.where(scored.view(-1, g), torch.zeros_like(tag_adv), tag_adv)  # [B, G]
    if tag_mask is None:
        tag_mask = tag_token_mask(tokenizer, rollouts.completion_ids, scored.tolist())  # [N, T]
    return route_advantages(tag_adv.view(-1), answer_adv.view(-1), tag_mask)  # [N, T]


def answer_anchors(tokenizer: Any, tasks: list, parsed: list, g: int) -> list:
    """`grpo.answer_anchor`'s per-prompt targets (`Chunk.anchors`): the ids of `[epistemic status: X] reference` and
    how many of them spell the tag, X the prompt's first parsed rollout's tag (else 5); None without a reference."""
    tags = [next((q.confidence for q in parsed[i:i + g] if q.ok), 5) for i in range(0, len(parsed), g)]  # [B]
    return [None if task.reference is None else tagged_answer_ids(tokenizer, x, task.reference)
            for task, x in zip(tasks, tags, strict=True)]


def tag_candidates(chunk: Chunk, tag_ids: list[list[int]], pad_id: int) -> tuple[Rollouts, int]:
    """Each prompt of `chunk` once per tag value: 11 rows per prompt, each completed by one whole tag
    `[epistemic status: X]`; and how many leading tokens all 11 tags share (`[epistemic status: ` on most
    tokenizers). Those shared tokens have the same logprobs in the 11 rows, which cancel in `expected_tag_loss`'s
    softmax; `grpo.format_anchor` trains them."""
    g = chunk.rollouts.num_generations
    shared = 0
    while all(len(ids) > shared + 1 and ids[shared] == tag_ids[0][shared] for ids in tag_ids):
        shared += 1
    first = list(range(0, len(chunk.valid), g))  # [B] the first row of each prompt
    rows = [i for i in first for _ in tag_ids]  # [B·11]
    return forced_completions(chunk.rollouts, rows, [tag_ids[n % len(tag_ids)] for n in range(len(rows))], pad_id,
                              len(tag_ids)), shared


def scored_weights(cfg: RunConfig, chunk: Chunk, num_rollouts: int, num_tokens: int) -> torch.Tensor:
    """Each rollout's aggregation weight in the tag term and its anchors (`loss.rollout_weights`), 0 where it was not
    parsed and judged.  -> [N]"""
    scored = torch.tensor([bd.brier is not None for bd in chunk.breakdowns])  # [N]
    return rollout_weights(cfg.grpo.loss_type, chunk.rollouts.lengths, cfg.sampling.max_new_tokens, num_rollouts,
                           num_tokens) * scored  # [N]


def tag_expectation_backward(cfg: RunConfig, model: Any, chunk: Chunk, tag_ids: list[list[int]], pad_id: int,
                             num_rollouts: int, num_tokens: int) -> None:
    """`grpo.tag_expectation`: `loss.expected_tag_loss` for the chunk's prompts, plus `grpo.format_anchor` times
    `loss.anchor_loss` of the tag's opening tokens and, with `grpo.answer_anchor`, `answer_anchor_backward`;
    backward (gradients accumulate)."""
    g = chunk.rollouts.num_generations
    use_info = cfg.reward.target == "informativeness"
    scored = torch.tensor([bd.brier is not None for bd in chunk.breakdowns])  # [N]
    if not bool(scored.any()):
        return
    targets = torch.tensor([float("nan") if not ok else float(j.informativeness if use_info else j.correct)
                            for j, ok in zip(chunk.judged, scored.tolist(), strict=True)])  # [N]
    weights = scored_weights(cfg, chunk, num_rollouts, num_tokens)  # [N]
    candidates, shared = tag_candidates(chunk, tag_ids, pad_id)
    device = next(model.parameters()).device
    # at temperature 1, whatever the sampling temperature: nothing is sampled here, the optimum (all mass on the
    # X nearest 10·mean target) is the same at any temperature, and a sharpened softmax would starve the gradient
    with injected_logprobs(model, candidates, 1.0, spec=oracle_spec(cfg),
                           prefix_shared=cfg.grpo.prefix_shared_forward) as logprobs:  # [B·11, T']
        token_lp = logprobs * candidates.completion_mask.to(device, logprobs.dtype)  # [B·11, T']
        per_tag = token_lp.sum(dim=1)  # [B·11]
        loss = expected_tag_loss(per_tag.view(-1, len(tag_ids)), targets.view(-1, g), weights.view(-1, g),
                                 cfg.reward.lam, entropy=cfg.grpo.tag_entropy)
        if cfg.grpo.format_anchor > 0:
            opening = token_lp[::len(tag_ids), :shared].sum(dim=1)  # [B] the shared opening, once per prompt
            loss = loss + cfg.grpo.format_anchor * anchor_loss(opening, weights.view(-1, g))
        loss.backward()
    if chunk.anchors is not None:
        answer_anchor_backward(cfg, model, chunk, weights.view(-1, g), pad_id)


def anchor_prompts(cfg: RunConfig, model: Any, tokenizer: Any, tasks: list) -> tuple[OracleInputs, list]:
    """grpo.answer_anchor_source's prompts for one chunk (subject activations, oracle prompts) and their anchors,
    `[epistemic status: 5] reference` (None without a reference)."""
    inputs = build_oracle_inputs(model, tokenizer, tasks, spec=oracle_spec(cfg))
    return inputs, [None if t.reference is None else tagged_answer_ids(tokenizer, 5, t.reference) for t in tasks]


def answer_anchor_backward(cfg: RunConfig, model: Any, chunk: Chunk, weights: torch.Tensor, pad_id: int) -> None:
    """`grpo.answer_anchor`: the teacher-forced reference answer after each anchor prompt's tag, `loss.anchor_loss`
    over the answer tokens only (the tag is the expectation's), backward. The anchor prompts are the chunk's own
    (weighted like their rollouts) or, with `chunk.anchor_rows`, grpo.answer_anchor_source's (each weighted like
    the chunk's average prompt).  weights: [B, G]"""
    prompts = [i for i, a in enumerate(chunk.anchors) if a is not None]  # prompts with a reference
    if not prompts:
        return
    answers = [chunk.anchors[i][0] for i in prompts]
    if chunk.anchor_rows is None:
        g = chunk.rollouts.num_generations
        rows = forced_completions(chunk.rollouts, [i * g for i in prompts], answers, pad_id)  # [n, T']
        w = weights[prompts]  # [n, G]
    else:
        rows = forced_completions(chunk.anchor_rows, prompts, answers, pad_id)  # [n, T']
        w = weights.sum(dim=1).mean().expand(len(prompts), 1)  # [n, 1]
    answer_mask = rows.completion_mask.clone()  # [n, T']
    for n, i in enumerate(prompts):
        answer_mask[n, :chunk.anchors[i][1]] = 0  # the tag's tokens
    device = next(model.parameters()).device
    with injected_logprobs(model, rows, 1.0, spec=oracle_spec(cfg),
                           prefix_shared=cfg.grpo.prefix_shared_forward) as logprobs:  # [n, T']
        answer = (logprobs * answer_mask.to(device, logprobs.dtype)).sum(dim=1)  # [n]
        loss = cfg.grpo.answer_anchor * anchor_loss(answer, w)
        loss.backward()
