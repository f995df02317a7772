"""What goes into a judge and what comes out: items, results, counters and the `Judge` protocol.

`JudgeResult` is the outcome of one item from any judge and from any call to the hosted model (the answer
expander uses it too, with `value`); there is no second result type to convert to and from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from grpo_ao import metrics as m


@dataclass(frozen=True)
class JudgeItem:
    """One rollout to judge."""

    context: str
    """Text the subject model processed (the oracle never saw it)."""
    question: str
    """Question asked to the oracle."""
    answer: str
    """The oracle's answer WITHOUT the epistemic-status tag."""
    reference: str | None = None
    """Reference answer stored with the example; used by the offline `reference` judge."""


@dataclass(frozen=True)
class JudgeResult:
    """One item's outcome: a judge's score, another hosted-model call's value (the answer expander's rewrite),
    or a failure saying why in `error`. One type for every kind of call, so nothing converts between them.

    Exactly one of "a score or value" and `error` is set. A judge failure has `informativeness=None`; an item
    deliberately not sent (see `grpo_ao.judge.score_answers`) is also `skipped`.
    """

    informativeness: float | None = None
    """Judge score / 100 in [0, 1]; None when the judge failed (the rollout must be masked, not scored), when
    the item was skipped, and for calls that are not judgements."""
    correct: float | None = None
    """1.0 / 0.0 when the judge said whether the answer is correct; None when not asked or failed."""
    raw: str = ""
    """The last raw reply ("" when there was none)."""
    cached: bool = False
    """True when served from the persistent cache without an API call."""
    latency_s: float = 0.0
    """Seconds from the start of this item to its result, retries and backoff included."""
    attempts: int = 0
    """Requests sent for this item (0 for cache hits, skipped items and items the deadline cut off before
    sending)."""
    error: str | None = None
    """Why there is no result (never contains the API key); None on success."""
    value: Any = None
    """What a call that is not a judgement read from the reply (the answer expander's rewrite); None for
    judgements and failures. Must survive JSON (the cache)."""
    skipped: bool = False
    """True when the item was deliberately not sent (its epistemic-status tag did not parse): not a failure,
    not counted in `JudgeStats.failures`."""

    def __post_init__(self) -> None:
        assert self.ok != (self.error is not None), f"a result has a score/value or an error, not both: {self}"
        assert not (self.skipped and self.attempts), "a skipped item sent no request"

    @property
    def ok(self) -> bool:
        """True when the call produced its result: a score for a judge, a value for any other kind."""
        return self.informativeness is not None or self.value is not None


REPLY_FIELDS = ("informativeness", "correct", "value")
"""The `JudgeResult` fields a reply decides: what a `ReplyFormat` parses and what the cache stores."""


@dataclass
class JudgeStats:
    """Running counters of one judge; the trainer logs `delta(snapshot)` every step.

    Counting unit: a *unique* item is one distinct `JudgeItem` in a `score()` batch (or an answer expander's
    `ChatCaller.ask()` batch; duplicates are sent once). Per batch: unique = cache_hits + successes + failures,
    and calls = retries + unique items that sent at least one request.
    """

    items: int = 0
    """Items passed to `score()`, duplicates included."""
    unique: int = 0
    """Distinct items after in-batch dedupe."""
    cache_hits: int = 0
    """Unique items served from the persistent cache."""
    calls: int = 0
    """Requests sent (every attempt; offline judges count one per unique item)."""
    retries: int = 0
    """Requests beyond the first one for an item."""
    successes: int = 0
    """Unique items scored by a call (not from cache)."""
    failures: int = 0
    """Unique items returned as failures (retry budget spent, deadline, bad reply, missing reference)."""
    skipped: int = 0
    """Items not sent because their epistemic-status tag did not parse (`score_answers`); never failures, and
    not in `items`."""
    latency_sum_s: float = 0.0
    """Sum of per-request wall times; judge/latency_s = latency_sum_s / calls."""
    prompt_tokens: int = 0
    """Prompt tokens reported by the API's `usage` field."""
    completion_tokens: int = 0
    """Completion tokens reported by the API's `usage` field."""
    cost_usd: float = 0.0
    """Token cost in USD from the configured prices (0 when unpriced)."""
    priced: bool = False
    """True when prices are configured, i.e. cost_usd is an estimate rather than "unknown, shown as 0"."""

    def snapshot(self) -> JudgeStats:
        """An independent copy of the counters now, for `delta` later."""
        return dataclasses.replace(self)

    def delta(self, since: JudgeStats) -> JudgeStats:
        """Counters accumulated after `since` was taken (a `snapshot()` of this object)."""
        diff = {
            f.name: getattr(self, f.name) - getattr(since, f.name)
            for f in dataclasses.fields(self)
            if f.name != "priced"
        }
        return JudgeStats(**diff, priced=self.priced)

    def as_metrics(self, prefix: str = "judge/") -> dict[str, float]:
        """Metrics (names in `grpo_ao.metrics`): calls, cache_hits, retries, failures, latency_s (mean per
        request), prompt_tokens, completion_tokens, cost_usd (0 when unpriced). `prefix` replaces "judge/"."""
        metrics = {
            m.JUDGE_CALLS: self.calls,
            m.JUDGE_CACHE_HITS: self.cache_hits,
            m.JUDGE_RETRIES: self.retries,
            m.JUDGE_FAILURES: self.failures,
            m.JUDGE_LATENCY_S: self.latency_sum_s / max(self.calls, 1),  # clamp: 0 calls -> 0 latency
            m.JUDGE_PROMPT_TOKENS: self.prompt_tokens,
            m.JUDGE_COMPLETION_TOKENS: self.completion_tokens,
            m.JUDGE_COST_USD: self.cost_usd,
        }
        return {prefix + name.removeprefix("judge/"): float(value) for name, value in metrics.items()}


@runtime_checkable
class Judge(Protocol):
    """Anything that scores items. `score` never raises: failures come back as failed `JudgeResult`s."""

    stats: JudgeStats

    async def score(self, items: Sequence[JudgeItem]) -> list[JudgeResult]:
        """One result per item, in order."""
        ...


def dedupe(items: Sequence[JudgeItem]) -> tuple[list[JudgeItem], list[int]]:
    """Distinct items in first-seen order, and for each input the index of its distinct item.

    >>> a, b = JudgeItem("t", "q", "Yes"), JudgeItem("t", "q", "No")
    >>> dedupe([a, b, a])[1]
    [0, 1, 0]
    """
    index: dict[JudgeItem, int] = {}
    where = [index.setdefault(item, len(index)) for item in items]
    return list(index), where
