"""The GRPO recipe's unit of work, one home for `recipes/grpo.py` (which builds and trains on it) and
`recipes/grpo_report.py` (which reports it), so the report module imports no recipe."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grpo_ao.rollout import OracleInputs, Rollouts


@dataclass
class Chunk:
    """One accumulation chunk: B tasks, their N = B·G rollouts and what was computed from them."""

    tasks: list
    rollouts: Rollouts
    layers: list[int]
    parsed: list
    judged: list
    breakdowns: list
    advantages: torch.Tensor  # [N]
    valid: torch.Tensor  # [N] bool
    token_advantages: torch.Tensor | None = None  # [N, T] with advantage_routing=split or tag
    tag_mask: torch.Tensor | None = None  # [N, T] bool, the tag's tokens of scored rollouts, with split or tag
    anchors: list | None = None
    """grpo.answer_anchor: per prompt, (ids of `[epistemic status: X] reference`, how many spell the tag), X the
    prompt's first parsed rollout's tag (else 5); None for a prompt without a reference."""
    anchor_rows: OracleInputs | None = None
    """With grpo.answer_anchor_source: the anchor prompts drawn from that source (`anchors` are then theirs);
    None: `anchors` belong to the chunk's own prompts (row i·G)."""
    old_logprobs: torch.Tensor | None = None  # [N, T]
    ref_logprobs: torch.Tensor | None = None  # [N, T]
    index: int = 0
    """k: the chunk's place in the step (its sampling seed, and the rank that rolls it out: k mod N)."""
