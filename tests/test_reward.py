"""Reward tests: hand-computed numbers (derivations in the comments), masking, and properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grpo_ao.errors import GrpoAoError
from grpo_ao.judge import JudgeResult
from grpo_ao.reward import RewardConfig, aggregate_breakdowns, calibration_reward, group_rewards


def judged(info: float | None, correct: float | None = None) -> JudgeResult:
    return JudgeResult(info, correct, "", False, 0.0, 1, None if info is not None else "HTTP 500")


@pytest.mark.parametrize(("info", "conf", "expected"), [
    (0.9, 9, 0.9),  # 0.9 − (0.9 − 0.9)² = 0.9
    (0.45, 7, 0.3875),  # 0.45 − (0.7 − 0.45)² = 0.45 − 0.0625
    (0.1, 9, -0.54),  # 0.1 − (0.9 − 0.1)² = 0.1 − 0.64
])
def test_calibration_reward_examples(info, conf, expected):
    assert calibration_reward(info, conf) == pytest.approx(expected, rel=0, abs=1e-9)


def test_parse_failure_gets_parse_failure_reward():
    assert calibration_reward(0.9, None) == -0.5
    assert calibration_reward(0.9, None, parse_failure_reward=-1.0) == -1.0


def test_lam_scales_the_brier_term():
    assert calibration_reward(0.45, 7, lam=2.0) == pytest.approx(0.45 - 2 * 0.0625, abs=1e-12)
    assert calibration_reward(0.45, 7, lam=0.0) == 0.45


def test_confidence_outside_0_to_10_is_a_bug():
    with pytest.raises(ValueError, match="0..10"):
        calibration_reward(0.5, 11)


@given(st.floats(0.0, 1.0), st.integers(0, 10), st.floats(0.0, 10.0))
def test_reward_never_exceeds_informativeness(info, conf, lam):
    assert calibration_reward(info, conf, lam) <= info


@given(st.integers(0, 10), st.floats(0.0, 10.0))
def test_reward_equals_informativeness_when_confidence_matches(conf, lam):
    assert calibration_reward(conf / 10, conf, lam) == conf / 10


def test_group_rewards_match_calibration_reward_without_extras():
    bds = group_rewards([9, 7], [judged(0.9), judged(0.45)], RewardConfig())
    assert [b.total for b in bds] == [calibration_reward(0.9, 9), calibration_reward(0.45, 7)]
    assert bds[1].brier == pytest.approx(0.0625, abs=1e-12) and bds[1].bonus == 0.0


def test_parse_failure_with_a_judged_answer_is_penalised_not_masked():
    [b] = group_rewards([None], [judged(0.8)], RewardConfig(parse_failure_reward=-0.7))
    assert (b.total, b.parse_ok, b.judge_ok, b.masked, b.info, b.brier) == (-0.7, False, True, False, 0.8, None)


def test_judge_failure_masks_a_parsed_answer_but_not_the_format_penalty():
    parsed, unparsed = group_rewards([8, None], [judged(None), judged(None)], RewardConfig())
    assert parsed.masked and parsed.total is None and parsed.brier is None and parsed.parse_ok
    # a parse failure's reward needs no judge: the penalty stands even when the judge failed
    assert not unparsed.masked and unparsed.total == -0.5 and not unparsed.judge_ok and not unparsed.parse_ok


def test_diversity_bonus_by_hand():
    cfg = RewardConfig(diversity_bonus=0.2)
    bds = group_rewards([7, 7, 3, None], [judged(0.5), judged(0.6), judged(0.4), judged(0.8)], cfg)
    # G = 4. conf 7 twice: bonus = 0.2·(1 − 2/4) = 0.1; conf 3 once: 0.2·(1 − 1/4) = 0.15.
    # r0 = 0.5 − (0.7 − 0.5)² + 0.1 = 0.56;  r1 = 0.6 − (0.7 − 0.6)² + 0.1 = 0.69
    # r2 = 0.4 − (0.3 − 0.4)² + 0.15 = 0.54; r3 = parse failure = −0.5, no bonus
    assert [b.bonus for b in bds] == pytest.approx([0.1, 0.1, 0.15, 0.0], abs=1e-12)
    assert [b.total for b in bds] == pytest.approx([0.56, 0.69, 0.54, -0.5], abs=1e-12)


def test_correctness_target_uses_the_binary_verdict():
    cfg = RewardConfig(target="correctness")
    bds = group_rewards([8, 8, 8], [judged(0.6, 1.0), judged(0.6, 0.0), judged(0.6, None)], cfg)
    # right: 0.6 − (0.8 − 1)² = 0.56; wrong: 0.6 − (0.8 − 0)² = −0.04; no verdict: masked
    assert bds[0].total == pytest.approx(0.56, abs=1e-12) and bds[1].total == pytest.approx(-0.04, abs=1e-12)
    assert bds[2].masked and bds[2].total is None


def test_aggregate_breakdowns_by_hand():
    cfg = RewardConfig(diversity_bonus=0.2)
    bds = group_rewards([7, 7, 3, None], [judged(0.5), judged(0.6), judged(0.4), judged(0.8)], cfg)
    bds += group_rewards([5], [judged(None)], cfg)
    m = aggregate_breakdowns(bds)
    # totals (masked excluded) 0.56, 0.69, 0.54, −0.5: mean 1.29/4 = 0.3225,
    # squared deviations 0.05640625 + 0.13505625 + 0.04730625 + 0.67650625 = 0.915275, /4 = 0.22881875
    assert m["reward/mean"] == pytest.approx(0.3225, abs=1e-12)
    assert m["reward/std"] == pytest.approx(math.sqrt(0.22881875), abs=1e-12)
    assert m["reward/info"] == pytest.approx((0.5 + 0.6 + 0.4 + 0.8) / 4, abs=1e-12)
    assert m["reward/brier"] == pytest.approx((0.04 + 0.01 + 0.01) / 3, abs=1e-12)
    assert m["reward/bonus"] == pytest.approx((0.1 + 0.1 + 0.15 + 0.0) / 4, abs=1e-12)
    assert m["calib/confidence_mean"] == pytest.approx((7 + 7 + 3 + 5) / 4, abs=1e-12)  # masked one parsed
    assert m["format/parse_rate"] == 0.8 and m["judge/masked_frac"] == 0.2


def test_aggregate_of_all_masked_reports_nan_means():
    m = aggregate_breakdowns(group_rewards([5, 6], [judged(None), judged(None)], RewardConfig()))
    assert math.isnan(m["reward/mean"]) and m["judge/masked_frac"] == 1.0


def test_group_rewards_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="2 confidences but 1"):
        group_rewards([1, 2], [judged(0.5)], RewardConfig())


@pytest.mark.parametrize(("overrides", "field"), [
    ({"target": "accuracy"}, "target"), ({"lam": -1.0}, "lam"), ({"diversity_bonus": math.inf}, "diversity_bonus"),
    ({"parse_failure_reward": math.nan}, "parse_failure_reward"),
])
def test_reward_config_rejects_bad_values_naming_the_field(overrides, field):
    with pytest.raises(GrpoAoError, match=f"reward.{field}"):
        RewardConfig(**overrides)
