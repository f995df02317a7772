"""LLM judge behind any OpenAI-compatible chat API (OpenRouter by default).

Per `score()` call: 1. dedupe identical items, 2. serve what the SQLite cache has, 3. send the rest
concurrently (semaphore) with our own retries, 4. cache the successes and fan results back out.

We deliberately do NOT use the client's built-in retries (`max_retries=0`): we count every attempt, honour
Retry-After, retry an unparseable reply once, and stop at a global deadline. We never turn an error into a
score, and `score()` never raises: a failed item comes back with `informativeness=None` and a reason.
The client is created per `score()` call, because its connection pool is bound to one event loop and
`score_sync` runs each call in a fresh loop.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import sqlite3
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import openai

from grpo_ao.judge.cache import JudgeCache, cache_key
from grpo_ao.judge.config import JudgeConfig
from grpo_ao.judge.items import JudgeItem, JudgeResult, JudgeStats, dedupe
from grpo_ao.judge.reply import ParsedReply, parse_reply, render_prompt

log = logging.getLogger(__name__)

_RETRY_STATUS = frozenset({408, 409, 429})  # plus every 5xx


class _Secret:
    """Holds the API key so that no repr, str or log line can show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def __repr__(self) -> str:
        return "<hidden>"

    __str__ = __repr__

    def reveal(self) -> str:
        return self._value


@dataclass
class _Progress:
    """Mutable per-item state, readable even after the deadline cancels the item's task."""

    attempts: int = 0
    raw: str = ""
    error: str = "not started before the deadline"


@dataclass(frozen=True)
class _Outcome:
    """One request's outcome: a parsed reply, or an error with whether (and how soon) to retry."""

    parsed: ParsedReply | None
    error: str | None = None
    retryable: bool = False
    bad_reply: bool = False
    retry_after_s: float | None = None


def backoff_delay(cfg: JudgeConfig, retry: int, retry_after_s: float | None, rng: random.Random) -> float:
    """Seconds to wait before retry k = `retry` (1-based).

    delay_k = min(backoff_max_s, backoff_base_s·2^(k-1)) · U(0.5, 1)   (jitter spreads synchronized clients)
    delay   = max(delay_k, min(Retry-After, retry_after_max_s))        (honour the server when it asks)
    """
    delay = min(cfg.backoff_max_s, cfg.backoff_base_s * 2 ** (retry - 1)) * rng.uniform(0.5, 1.0)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, cfg.retry_after_max_s))
    return delay


def parse_retry_after(headers: object) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (seconds or an HTTP date); None when absent or bad."""
    get = getattr(headers, "get", None)
    if get is None:
        return None
    try:
        if get("retry-after-ms") is not None:
            return max(0.0, float(get("retry-after-ms")) / 1000.0)
        value = get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class OpenAIJudge:
    """Judge that asks an OpenAI-compatible chat API for a strict `Score: N` line."""

    def __init__(self, cfg: JudgeConfig, api_key: str, cache_path: str | Path | None = None) -> None:
        self.cfg = cfg
        self._api_key = _Secret(api_key)
        self.cache = JudgeCache(cache_path) if cache_path is not None else None
        self.stats = JudgeStats(priced=cfg.priced)
        self._rng = random.Random()

    def __repr__(self) -> str:
        return (f"OpenAIJudge(model={self.cfg.model!r}, base_url={self.cfg.base_url!r}, "
                f"api_key_env={self.cfg.api_key_env!r}, cache={self.cache!r})")

    async def score(self, items: Sequence[JudgeItem]) -> list[JudgeResult]:
        """One result per item, in order; never raises (see module docstring for the steps)."""
        try:
            return await self._score(items)
        except Exception as exc:  # the trainer must never see a judge exception; this is a bug path
            log.exception("judge: unexpected error, returning %d items as failed", len(items))
            self.stats.failures += len(set(items))
            return [JudgeResult(None, None, "", False, 0.0, 0, f"internal error: {exc!r}") for _ in items]

    async def _score(self, items: Sequence[JudgeItem]) -> list[JudgeResult]:
        unique, where = dedupe(items)  # 1.
        self.stats.items += len(items)
        self.stats.unique += len(unique)
        keys = [cache_key(self.cfg, item) for item in unique]
        hits = self._cache_get(keys)  # 2.
        results: list[JudgeResult | None] = [hits.get(key) for key in keys]
        self.stats.cache_hits += len(hits)
        todo = [i for i, result in enumerate(results) if result is None]
        if todo:
            judged = await self._judge_all([unique[i] for i in todo])  # 3.
            for i, result in zip(todo, judged, strict=True):
                results[i] = result
                if result.ok:  # 4.
                    self.stats.successes += 1
                    self._cache_put(keys[i], result)
                else:
                    self.stats.failures += 1
            self._warn_failures(judged)
        return [results[j] for j in where]

    async def _judge_all(self, items: list[JudgeItem]) -> list[JudgeResult]:
        """Judge items concurrently; those unfinished at the global deadline become failures."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        deadline = loop.time() + self.cfg.deadline_s
        semaphore = asyncio.Semaphore(self.cfg.max_concurrency)
        progress = [_Progress() for _ in items]
        client = openai.AsyncOpenAI(base_url=self.cfg.base_url, api_key=self._api_key.reveal(),
                                    max_retries=0, timeout=self.cfg.timeout_s)
        async with client:
            tasks = [asyncio.create_task(self._judge_one(client, semaphore, item, state, deadline))
                     for item, state in zip(items, progress, strict=True)]
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        elapsed = time.perf_counter() - started
        results = []
        for task, state in zip(tasks, progress, strict=True):
            if task.cancelled():
                error = f"deadline_s={self.cfg.deadline_s} passed after {state.attempts} attempts ({state.error})"
                results.append(JudgeResult(None, None, state.raw, False, elapsed, state.attempts, error))
            elif task.exception() is not None:
                exc = task.exception()
                log.error("judge: unexpected error in one item", exc_info=exc)
                results.append(JudgeResult(None, None, state.raw, False, elapsed, state.attempts,
                                           f"internal error: {exc!r}"))
            else:
                results.append(task.result())
        return results

    async def _judge_one(self, client: openai.AsyncOpenAI, semaphore: asyncio.Semaphore, item: JudgeItem,
                         state: _Progress, deadline: float) -> JudgeResult:
        """Request until a parseable reply, a non-retryable error, the retry budget or the deadline."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        prompt = render_prompt(self.cfg, item)
        bad_replies = 0
        while True:
            outcome = await self._request(client, semaphore, prompt, state)
            if outcome.parsed is not None and outcome.parsed.informativeness is not None:
                return JudgeResult(outcome.parsed.informativeness, outcome.parsed.correct, state.raw, False,
                                   time.perf_counter() - started, state.attempts)
            state.error = outcome.error or "unknown error"
            bad_replies += outcome.bad_reply
            if not outcome.retryable or bad_replies > 1 or state.attempts > self.cfg.max_retries:
                break
            delay = backoff_delay(self.cfg, state.attempts, outcome.retry_after_s, self._rng)
            if loop.time() + delay > deadline:
                state.error += "; the next retry would pass the deadline"
                break
            log.debug("judge: attempt %d failed (%s); retrying in %.3f s", state.attempts, state.error, delay)
            await asyncio.sleep(delay)
        error = f"{state.error} (after {state.attempts} attempts)"
        return JudgeResult(None, None, state.raw, False, time.perf_counter() - started, state.attempts, error)

    async def _request(self, client: openai.AsyncOpenAI, semaphore: asyncio.Semaphore, prompt: str,
                       state: _Progress) -> _Outcome:
        """Send one request (holding a semaphore slot) and classify what came back."""
        async with semaphore:
            state.attempts += 1
            self.stats.calls += 1
            self.stats.retries += int(state.attempts > 1)
            if state.attempts == 1:
                state.error = "no reply yet"
            started = time.perf_counter()
            try:
                response = await asyncio.wait_for(
                    client.chat.completions.create(
                        model=self.cfg.model, messages=[{"role": "user", "content": prompt}],
                        temperature=self.cfg.temperature, max_tokens=self.cfg.max_tokens),
                    timeout=self.cfg.timeout_s)
            except openai.APIStatusError as exc:
                status = exc.status_code
                return _Outcome(None, f"HTTP {status}: {str(exc.message)[:200]}",
                                retryable=status in _RETRY_STATUS or status >= 500,
                                retry_after_s=parse_retry_after(exc.response.headers))
            except (openai.APITimeoutError, asyncio.TimeoutError):
                return _Outcome(None, f"timeout after {self.cfg.timeout_s} s", retryable=True)
            except openai.APIConnectionError as exc:
                return _Outcome(None, f"connection error: {exc.message}", retryable=True)
            except Exception as exc:  # garbage body, schema mismatch: treat like an unparseable reply
                return _Outcome(None, f"bad response: {type(exc).__name__}: {str(exc)[:200]}",
                                retryable=True, bad_reply=True)
            finally:
                self.stats.latency_sum_s += time.perf_counter() - started
        self._count_usage(getattr(response, "usage", None))
        choices = getattr(response, "choices", None)
        if not choices:
            return _Outcome(None, "bad response: no choices", retryable=True, bad_reply=True)
        state.raw = choices[0].message.content or ""
        parsed = parse_reply(state.raw, self.cfg.with_correctness)
        if parsed.informativeness is None:
            reason = f"{parsed.error} (finish_reason={choices[0].finish_reason})"
            return _Outcome(None, f"unparseable reply: {reason}", retryable=True, bad_reply=True)
        return _Outcome(parsed)

    def _count_usage(self, usage: object) -> None:
        """Tokens from the API's `usage` field; cost = tokens · price / 1e6 when priced."""
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        self.stats.prompt_tokens += prompt_tokens
        self.stats.completion_tokens += completion_tokens
        if self.cfg.priced:
            self.stats.cost_usd += (prompt_tokens * self.cfg.price_prompt_per_mtok
                                    + completion_tokens * self.cfg.price_completion_per_mtok) / 1e6

    def _cache_get(self, keys: list[str]) -> dict[str, JudgeResult]:
        if self.cache is None or not keys:
            return {}
        try:
            return self.cache.get_many(keys)
        except sqlite3.Error as exc:
            log.warning("judge: cache read failed (%s); judging without it", exc)
            return {}

    def _cache_put(self, key: str, result: JudgeResult) -> None:
        if self.cache is None:
            return
        try:
            self.cache.put(key, result)
        except sqlite3.Error as exc:
            log.warning("judge: cache write failed (%s); the result is used but not stored", exc)

    def _warn_failures(self, judged: list[JudgeResult]) -> None:
        reasons = Counter((r.error or "").split(" (after")[0] for r in judged if not r.ok)
        if reasons:
            summary = "; ".join(f"{n}x {reason}" for reason, n in reasons.most_common(3))
            log.warning("judge: %d of %d requested items failed and will be masked: %s",
                        sum(reasons.values()), len(judged), summary)
