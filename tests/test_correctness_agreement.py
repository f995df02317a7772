"""One definition of "correct": the reference judge, the correctness-target reward and the eval agree with
`grading.grade` on every row of the grading table (tests/test_grading.py)."""

from types import SimpleNamespace

import pytest

from grpo_ao.format import format_epistemic_status, parse_epistemic_status
from grpo_ao.grading import grade
from grpo_ao.judge import ConstantJudge, JudgeConfig, JudgeItem, ReferenceJudge, score_sync
from grpo_ao.recipes.evaluate import grade_fields
from grpo_ao.reward import RewardConfig, judge_and_reward
from test_grading import ROWS

WITH_REFERENCE = [row for row in ROWS if row[1] is not None and row[2].strip()]


def test_the_table_has_rows_to_compare():
    assert len(WITH_REFERENCE) >= 60


@pytest.mark.parametrize("judge_kind", ["reference", "constant"])
def test_reference_judge_reward_and_eval_agree_on_correct_for_every_grading_row(judge_kind):
    cfg = JudgeConfig(kind=judge_kind, constant_score=0.5)
    judge = ReferenceJudge(cfg) if judge_kind == "reference" else ConstantJudge(cfg)
    tasks = [SimpleNamespace(context="some text", question=q, reference=ref) for q, ref, _, _ in WITH_REFERENCE]
    parsed = [parse_epistemic_status(format_epistemic_status(7, answer)) for _, _, answer, _ in WITH_REFERENCE]
    judged, _ = judge_and_reward(judge, tasks, parsed, 1, RewardConfig(target="correctness"), False)
    by_judge = score_sync(ReferenceJudge(cfg), [JudgeItem("some text", q, a, ref) for q, ref, a, _ in WITH_REFERENCE])
    for (question, reference, answer, _), in_reward, in_judge in zip(WITH_REFERENCE, judged, by_judge, strict=True):
        expected = grade(question, reference, answer).correct is True  # a non-answer is not correct
        assert in_reward.correct == float(expected), (question, reference, answer)
        assert in_judge.correct == float(expected), (question, reference, answer)
        assert grade_fields(question, reference, answer, True)["correct"] is expected, (question, reference, answer)
