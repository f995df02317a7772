"""Offline judges: no network, deterministic, for the embedded default, smoke runs and tests.

`reference` reads the answer with `grpo_ao.grading.grade` (the one correctness rule, shared with the
correctness-target reward and the eval; docs/grading.md) and scores it on the bands of the hosted judge's
rubric (`DEFAULT_TEMPLATE`), one fixed value per band (`BAND_SCORES`):
- wrong (contradicts the reference, or contradicts itself)        → 0.10   (rubric 0-20)
- no position: dodge, echo, "maybe", both a label and its opposite → 0.25   (rubric 20-40, generic/dodges)
- correct and terse: bare yes/no, bare label or restatement       → 0.45   (rubric 40-60; bare yes/no 40-50)
- correct with a relevant, consistent detail (`Grade.detail`)      → 0.70   (rubric 60-80)
`correct` is 1.0 when `grade` says correct and 0.0 otherwise, a non-answer (`correct=None`) included: it is not
correct, and the correctness-target reward must see the same 0/1 as the eval. No reference (None or no words)
→ a failure with a reason, never a made-up score. There is no token-overlap F1 any more: a reference outside
every label family is matched by its content words inside `grade`.
`constant` returns `constant_score` as informativeness and as `correct` for every item.
We deliberately do not cache offline judgements: computing them is cheaper than a lookup.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from grpo_ao.grading import Grade, grade, words
from grpo_ao.judge.config import JudgeConfig
from grpo_ao.judge.items import JudgeItem, JudgeResult, JudgeStats, dedupe

BAND_SCORES = {"wrong": 0.1, "no_position": 0.25, "terse": 0.45, "detailed": 0.7}
"""Informativeness per band (module docstring); each sits inside the hosted rubric's band of the same name."""

Scorer = Callable[[JudgeItem], JudgeResult]


def band(result: Grade) -> str:
    """The `BAND_SCORES` key of one grade.

    >>> band(grade("Is it about cats?", "Yes", "Yes.")), band(grade("Is it about cats?", "Yes", "No idea."))
    ('terse', 'no_position')
    """
    if result.correct is None:
        return "no_position"
    if not result.correct:
        return "wrong"
    return "detailed" if result.detail else "terse"


def reference_score(item: JudgeItem) -> JudgeResult:
    """Judge one item against its reference with `grade` (bands in the module docstring)."""
    if item.reference is None or not words(item.reference):
        return JudgeResult(None, None, "", False, 0.0, 1,
                           "item has no reference answer; the reference judge needs one "
                           "(add `reference` to the example or use judge.kind=openai)")
    result = grade(item.question, item.reference, item.answer)
    name = band(result)
    info = BAND_SCORES[name]
    return JudgeResult(info, 1.0 if result.correct else 0.0, f"{name}: {result.reason}: Score: {round(info * 100)}",
                       False, 0.0, 1)


def score_offline(items: Sequence[JudgeItem], scorer: Scorer, stats: JudgeStats) -> list[JudgeResult]:
    """Dedupe, score each distinct item with `scorer`, count like the API judge (one call per item)."""
    unique, where = dedupe(items)
    stats.items += len(items)
    stats.unique += len(unique)
    results = []
    for item in unique:
        started = time.perf_counter()
        result = scorer(item)
        latency = time.perf_counter() - started
        results.append(JudgeResult(result.informativeness, result.correct, result.raw, False, latency,
                                   result.attempts, result.error))
        stats.calls += 1
        stats.latency_sum_s += latency
        stats.successes += int(result.ok)
        stats.failures += int(not result.ok)
    return [results[j] for j in where]


class ReferenceJudge:
    """Offline judge against the example's reference answer."""

    def __init__(self, cfg: JudgeConfig) -> None:
        self.cfg = cfg
        self.stats = JudgeStats()

    def __repr__(self) -> str:
        return "ReferenceJudge()"

    async def score(self, items: Sequence[JudgeItem]) -> list[JudgeResult]:
        """One result per item, in order; never raises."""
        return score_offline(items, reference_score, self.stats)


class ConstantJudge:
    """Offline judge returning `cfg.constant_score` for everything (smoke runs)."""

    def __init__(self, cfg: JudgeConfig) -> None:
        self.cfg = cfg
        self.stats = JudgeStats()

    def __repr__(self) -> str:
        return f"ConstantJudge(score={self.cfg.constant_score})"

    def _score(self, item: JudgeItem) -> JudgeResult:
        value = self.cfg.constant_score
        return JudgeResult(value, value, f"constant: Score: {value * 100:g}", False, 0.0, 1)

    async def score(self, items: Sequence[JudgeItem]) -> list[JudgeResult]:
        """One result per item, in order; never raises."""
        return score_offline(items, self._score, self.stats)
