"""Calibration reward: r = info − λ·(conf/10 − target)², per rollout, per group of G rollouts.

target = info (default) or the judge's 0/1 `correct` (correctness-target mode, a proper scoring rule on a
binary outcome; RLCR, https://arxiv.org/abs/2507.16806). A parse failure gets a fixed penalty.
We deliberately do NOT give a judge failure any score: a parsed rollout whose judge call failed is masked
(total None), excluded from advantages and loss, and counted in judge/masked_frac. Nor do we normalize rewards here; advantages are
computed by the trainer (Dr. GRPO: no std division).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from grpo_ao import metrics as m
from grpo_ao.errors import GrpoAoError
from grpo_ao.judge.items import JudgeResult

TARGETS = ("informativeness", "correctness")


def calibration_reward(informativeness: float, confidence: int | None, lam: float = 1.0,
                       parse_failure_reward: float = -0.5, target: float | None = None) -> float:
    """r = info − lam·(confidence/10 − target)², target = info unless given (e.g. 0/1 correctness), or
    `parse_failure_reward` when confidence is None.

    Args:
        informativeness: judge score in [0, 1].
        target: what the stated confidence should match; None = `informativeness`.
        confidence: the parsed epistemic status X ∈ {0, …, 10}, None for a parse failure.
        lam: weight λ of the calibration (Brier) term; 0 turns calibration off.
        parse_failure_reward: reward of a rollout whose tag did not parse.

    >>> round(calibration_reward(0.45, 7), 12)  # 0.45 − (0.7 − 0.45)² = 0.45 − 0.0625
    0.3875
    """
    if confidence is None:
        return parse_failure_reward
    _check_confidence(confidence)
    target = informativeness if target is None else target
    return informativeness - lam * (confidence / 10 - target) ** 2


@dataclass(frozen=True)
class RewardConfig:
    """Reward shaping; r = info − lam·(conf/10 − target)² + bonus."""

    lam: float = 1.0
    """λ in r = info − λ·(conf/10 − target)². 0 turns calibration off."""
    parse_failure_reward: float = -0.5
    """r of a rollout whose "[epistemic status: X]" tag did not parse, whatever the judge did. Never masked."""
    diversity_bonus: float = 0.0
    """b in bonus = b·(1 − n_c/G): n_c = rollouts in the group with the same confidence c, G = group size
    (all rollouts). Only parsed, judged rollouts get it. 0 (default) turns it off."""
    target: str = "informativeness"
    """Target of the Brier term: "informativeness" (r = info − λ·(conf/10 − info)²) or "correctness"
    (r = info − λ·(conf/10 − correct)², correct ∈ {0, 1} from the judge; needs judge.with_correctness)."""

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise GrpoAoError(f"reward.target = {self.target!r} is invalid: use one of {', '.join(TARGETS)}.")
        for name in ("lam", "diversity_bonus"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise GrpoAoError(f"reward.{name} = {value!r} is invalid: use a finite number >= 0.")
        if not math.isfinite(self.parse_failure_reward):
            raise GrpoAoError(f"reward.parse_failure_reward = {self.parse_failure_reward!r} is invalid: "
                              "use a finite number, e.g. -0.5.")


@dataclass(frozen=True)
class RewardBreakdown:
    """The parts of one rollout's reward; `total` is None when the rollout is masked."""

    info: float | None
    """Judge informativeness in [0, 1]; None when the judge failed."""
    confidence: int | None
    """Parsed epistemic status X ∈ {0, …, 10}; None on a parse failure."""
    brier: float | None
    """(conf/10 − target)², before λ; None on a parse or judge failure."""
    bonus: float
    """Diversity bonus b·(1 − n_c/G); 0 when off or not applicable."""
    total: float | None
    """info − λ·brier + bonus; parse_failure_reward on a parse failure; None when masked."""
    parse_ok: bool
    """The epistemic-status tag parsed."""
    judge_ok: bool
    """The judge returned a score (and, in correctness mode, a correct/incorrect verdict)."""

    @property
    def masked(self) -> bool:
        """Excluded from advantages and loss: the judge failed on a parsed answer (no reward to give)."""
        return self.total is None


def group_rewards(confidences: Sequence[int | None], judge_results: Sequence[JudgeResult],
                  cfg: RewardConfig) -> list[RewardBreakdown]:
    """Rewards of one group: the G rollouts of one prompt (the diversity bonus counts within the group).

    Args:
        confidences: parsed confidence per rollout, None for a parse failure.  [G]
        judge_results: judge result per rollout, same order.  [G]
        cfg: reward config.
    Returns:
        One `RewardBreakdown` per rollout.  [G]
    """
    if len(confidences) != len(judge_results):
        raise ValueError(f"{len(confidences)} confidences but {len(judge_results)} judge results")
    group_size = len(confidences)
    same = Counter(c for c in confidences if c is not None)
    out = []
    for confidence, result in zip(confidences, judge_results, strict=True):
        target = result.informativeness if cfg.target == "informativeness" else result.correct
        judge_ok = result.ok and target is not None
        if confidence is None:  # the format penalty needs no judge: never let a judge failure mask it
            out.append(RewardBreakdown(result.informativeness, None, None, 0.0, cfg.parse_failure_reward,
                                       False, judge_ok))
            continue
        if not judge_ok:
            out.append(RewardBreakdown(result.informativeness, confidence, None, 0.0, None, True, False))
            continue
        info = result.informativeness
        assert info is not None, "judge_ok implies a score"
        _check_confidence(confidence)
        brier = (confidence / 10 - target) ** 2
        bonus = cfg.diversity_bonus * (1 - same[confidence] / group_size)
        total = calibration_reward(info, confidence, cfg.lam, cfg.parse_failure_reward, target) + bonus
        out.append(RewardBreakdown(info, confidence, brier, bonus, total, True, True))
    return out


def aggregate_breakdowns(bds: Sequence[RewardBreakdown]) -> dict[str, float]:
    """Step metrics from all rollouts' breakdowns; a mean over nothing is NaN.

    reward/mean, reward/std (population) over unmasked totals (parse failures at their penalty);
    reward/info over judged rollouts; reward/brier over parsed and judged rollouts; reward/bonus over unmasked;
    calib/confidence_mean over parsed rollouts (masked included: the confidence is known);
    format/parse_rate and judge/masked_frac over all rollouts.
    """
    totals = [b.total for b in bds if b.total is not None]
    scored = [b for b in bds if b.brier is not None]
    mean = _mean(totals)
    return {
        m.REWARD_MEAN: mean,
        m.REWARD_STD: math.sqrt(_mean([(t - mean) ** 2 for t in totals])),
        m.REWARD_INFO: _mean([b.info for b in bds if b.judge_ok and b.info is not None]),
        m.REWARD_BRIER: _mean([b.brier for b in scored]),
        m.REWARD_BONUS: _mean([b.bonus for b in bds if not b.masked]),
        m.CALIB_CONFIDENCE_MEAN: _mean([b.confidence for b in bds if b.confidence is not None]),
        m.FORMAT_PARSE_RATE: _mean([float(b.parse_ok) for b in bds]),
        m.JUDGE_MASKED_FRAC: _mean([float(b.masked) for b in bds]),
    }


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _check_confidence(confidence: int) -> None:
    if not 0 <= confidence <= 10:
        raise ValueError(f"confidence must be in 0..10, got {confidence}")


def judge_and_reward(judge: Any, tasks: Sequence[Any], parsed: Sequence[Any], num_generations: int,
                     cfg: RewardConfig, score_parse_failures: bool) -> tuple[list[JudgeResult], list[RewardBreakdown]]:
    """Judge N = B·G answers (row i answers task i // G) and reward them group by group.

    The one place grpo, observe and eval build judge items and rewards: parse failures are not sent to
    the judge unless `score_parse_failures` (their reward is fixed), see `judge.score_answers`. Where a
    task has a reference answer, `correct` (the correctness-target reward) is `grading.grade`'s verdict,
    the rule the eval uses (a non-answer counts as not correct), whichever judge scored the answer;
    without a reference it stays the judge's own verdict.

    Args:
        judge: any `Judge`.
        tasks: B tasks with `.context`, `.question`, `.reference`.
        parsed: N `ParsedResponse`s (`.ok`, `.confidence`, `.answer`).
        num_generations: G.
        cfg: reward config.
        score_parse_failures: `JudgeConfig.score_parse_failures`.
    """
    from grpo_ao.grading import grade
    from grpo_ao.judge import JudgeItem, score_answers

    g = num_generations
    items = [JudgeItem(tasks[i // g].context, tasks[i // g].question, p.answer, tasks[i // g].reference)
             for i, p in enumerate(parsed)]
    judged = score_answers(judge, items, [p.ok for p in parsed], score_parse_failures)
    judged = [dataclasses.replace(j, correct=float(grade(it.question, it.reference, it.answer).correct is True))
              if j.ok and it.reference is not None else j for it, j in zip(items, judged, strict=True)]
    breakdowns: list[RewardBreakdown] = []
    for b in range(len(tasks)):
        group = slice(b * g, (b + 1) * g)
        breakdowns += group_rewards([p.confidence for p in parsed[group]], judged[group], cfg)
    return judged, breakdowns
