"""Offline judges: no network, deterministic, for the embedded default, smoke runs and tests.

`reference` scores an answer against the reference answer stored with the example:
- yes/no reference ("Yes"/"No", any case or trailing punctuation): the answer's yes/no is read leniently from
  its first three words ("Yes, because ..." → yes; "I think no" → no). Match → 0.9, mismatch → 0.1, no yes/no
  found → 0.2 (a dodge is "generic", above a wrong answer, as in the LLM rubric). correct = 1.0 on a match,
  else 0.0.
- open reference: token-overlap F1 (SQuAD-style; lowercased, punctuation stripped), already in [0, 1]:
  P = |A ∩ R| / |A|, R = |A ∩ R| / |R|, F1 = 2PR / (P + R) (multiset overlap). correct = 1.0 if F1 ≥ 0.5.
- no reference → a failure with a reason, never a made-up score.
`constant` returns `constant_score` as informativeness and as `correct` for every item.
We deliberately do not cache offline judgements: computing them is cheaper than a lookup.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Sequence

from grpo_ao.judge.config import JudgeConfig
from grpo_ao.judge.items import JudgeItem, JudgeResult, JudgeStats, dedupe

YES_NO_SCORES = {"match": 0.9, "mismatch": 0.1, "none": 0.2}
"""Informativeness of a yes/no answer against a yes/no reference."""
OPEN_CORRECT_F1 = 0.5
"""Token F1 at or above which an open answer counts as correct."""

_YES = frozenset({"yes", "yeah", "yep", "yup", "true", "correct"})
_NO = frozenset({"no", "nope", "false", "incorrect"})
_WORD = re.compile(r"[a-z0-9]+")

Scorer = Callable[[JudgeItem], JudgeResult]


def tokens(text: str) -> list[str]:
    """Lowercased words without punctuation.

    >>> tokens("The cat's hat, mostly!")
    ['the', 'cat', 's', 'hat', 'mostly']
    """
    return _WORD.findall(text.lower())


def yes_no(text: str, window: int = 3) -> str | None:
    """"yes" / "no" from the first `window` words, or None.

    >>> yes_no("I think yes, it does."), yes_no("Nope."), yes_no("It is about cats.")
    ('yes', 'no', None)
    """
    for word in tokens(text)[:window]:
        if word in _YES:
            return "yes"
        if word in _NO:
            return "no"
    return None


def token_f1(answer: str, reference: str) -> float:
    """Token-overlap F1 in [0, 1] (formula in the module docstring).

    >>> round(token_f1("a red car", "the red car"), 4)  # overlap 2: P = 2/3, R = 2/3
    0.6667
    """
    a, r = Counter(tokens(answer)), Counter(tokens(reference))
    overlap = sum((a & r).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / sum(a.values()), overlap / sum(r.values())
    return 2 * precision * recall / (precision + recall)


def reference_score(item: JudgeItem) -> JudgeResult:
    """Judge one item against its reference (rules in the module docstring)."""
    if item.reference is None or not tokens(item.reference):
        return JudgeResult(None, None, "", False, 0.0, 1,
                           "item has no reference answer; the reference judge needs one "
                           "(add `reference` to the example or use judge.kind=openai)")
    ref_words = tokens(item.reference)
    if len(ref_words) == 1 and ref_words[0] in {"yes", "no"}:
        said = yes_no(item.answer)
        outcome = "none" if said is None else ("match" if said == ref_words[0] else "mismatch")
        info = YES_NO_SCORES[outcome]
        return JudgeResult(info, float(outcome == "match"), f"yes/no {outcome}: Score: {round(info * 100)}",
                           False, 0.0, 1)
    f1 = token_f1(item.answer, item.reference)
    return JudgeResult(f1, float(f1 >= OPEN_CORRECT_F1), f"token F1: Score: {f1 * 100:.1f}", False, 0.0, 1)


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
