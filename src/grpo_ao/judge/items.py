"""What goes into a judge and what comes out: items, results, counters and the `Judge` protocol.

`Reply` is the kind-neutral outcome of one API call (judge or answer expander); `JudgeResult` is a judge's.
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
    """The judgement of one item. A failure has `informativeness=None` and says why in `error`."""

    informativeness: float | None
    """Judge score / 100 in [0, 1]; None when the judge failed (the rollout must be masked, not scored)."""
    correct: float | None
    """1.0 / 0.0 when the judge said whether the answer is correct; None when not asked or failed."""
    raw: str
    """The judge's last raw reply ("" when there was none)."""
    cached: bool
    """True when served from the persistent cache without an API call."""
    latency_s: float
    """Seconds from the start of judging this item to its result, retries and backoff included."""
    attempts: int
    """Requests sent for this item (0 for cache hits and items the deadline cut off before sending)."""
    error: str | None = None
    """Why the judgement failed (never contains the API key); None on success."""

    @property
    def ok(self) -> bool:
        """True when the judge produced a score."""
        return self.informativeness is not None

    @classmethod
    def from_reply(cls, reply: Reply) -> JudgeResult:
        """The judgement in an API reply whose value is `[informativeness, correct]` (see `as_reply`)."""
        info, correct = reply.value if reply.ok else (None, None)
        return cls(info, correct, reply.raw, reply.cached, reply.latency_s, reply.attempts, reply.error)

    def as_reply(self) -> Reply:
        """This judgement as a `Reply` with value `[informativeness, correct]` (None when failed)."""
        value = [self.informativeness, self.correct] if self.ok else None
        return Reply(value, self.raw, self.cached, self.latency_s, self.attempts, self.error)


@dataclass(frozen=True)
class Reply:
    """One item's outcome from a chat API call of any kind: the parsed value, or a failure saying why."""

    value: Any
    """What the call's `ReplyFormat.parse` read from the reply (JSON-serialisable); None when it failed."""
    raw: str
    """The last raw reply ("" when there was none)."""
    cached: bool
    """True when served from the persistent cache without an API call."""
    latency_s: float
    """Seconds from the start of this item to its result, retries and backoff included."""
    attempts: int
    """Requests sent for this item (0 for cache hits and items the deadline cut off before sending)."""
    error: str | None = None
    """Why the call failed (never contains the API key); None on success."""

    @property
    def ok(self) -> bool:
        """True when the reply had a value."""
        return self.value is not None


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
