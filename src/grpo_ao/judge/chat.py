"""One mechanism for every call to an OpenAI-compatible chat API (OpenRouter by default).

The judge (`openai_judge.py`) and the SFT answer expander (`expand.py`) differ only in their `ReplyFormat`:
how an item becomes a prompt, how a reply becomes `JudgeResult` fields, and the cache key. The rest is here.
Per `ask()` call: 1. dedupe identical items, 2. serve what the SQLite cache has (in the format's namespace),
3. send the rest concurrently (semaphore) with our own retries, 4. cache the successes and fan results back
out. Every request carries `JudgeConfig.reasoning_body` (OpenRouter's `reasoning` field) via `extra_body`.

We deliberately do NOT use the client's built-in retries (`max_retries=0`): we count every attempt, honour
Retry-After, retry an unparseable reply once, and stop at a global deadline. We never turn an error into a
value, and `ask()` never raises: a failed item comes back as a `JudgeResult` with an `error`. A reasoning
model that spends all of `max_tokens` thinking (empty reply, finish_reason=length) is such a failure, and
its error says to raise `judge.max_tokens` or lower `judge.reasoning`.
The client is created per `ask()` call, because its connection pool is bound to one event loop and
`run_sync` runs each call in a fresh loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from grpo_ao import envfile
from grpo_ao.errors import GrpoAoError
from grpo_ao.judge.cache import JudgeCache
from grpo_ao.judge.config import JudgeConfig
from grpo_ao.judge.items import JudgeItem, JudgeResult, JudgeStats, dedupe
from grpo_ao.judge.retry import backoff_delay, parse_retry_after

try:
    import openai
except ImportError:  # only the API judge and expander need it; the offline judges run without (the GPU check)
    from grpo_ao.optional import MissingModule

    openai = MissingModule("openai", "judge.kind=openai")

log = logging.getLogger(__name__)

_RETRY_STATUS = frozenset({408, 409, 429})  # plus every 5xx
_REASONING_HINT = " (if this endpoint rejects OpenRouter's `reasoning` field, set judge.reasoning=default)"
T = TypeVar("T")


class ReplyFormat(Protocol):
    """One kind of call: item -> one user message, reply -> `JudgeResult` fields (`REPLY_FIELDS`: a judge's
    informativeness and correct, another kind's value). The fields must survive JSON (the cache)."""

    name: str
    """Cache namespace and log prefix, e.g. "judge"."""
    on_failure: str
    """What the caller does with a failed item, for the warning, e.g. "will be masked"."""

    def key(self, item: JudgeItem) -> str:
        """Cache key: a hash of everything that decides the reply (model, prompt template, item)."""
        ...

    def prompt(self, item: JudgeItem) -> str:
        """The user message, strict output format included."""
        ...

    def parse(self, raw: str) -> tuple[dict[str, Any] | None, str | None]:
        """(fields, None) for a reply in the strict format, else (None, what is wrong with it)."""
        ...


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
    """One request's outcome: the parsed fields, or an error with whether (and how soon) to retry."""

    fields: dict[str, Any] | None = None
    error: str | None = None
    retryable: bool = False
    bad_reply: bool = False
    retry_after_s: float | None = None


def find_api_key(name: str) -> tuple[str, str]:
    """(value, where) of the key variable `name`: an exported variable first, then a line in ./.env;
    ("", "") when neither sets it. Reads only; `read_api_key` and `grpo-ao doctor` both look here. The rule is
    `grpo_ao.envfile`'s, the one every command loads ./.env with."""
    return envfile.lookup(name)


def read_api_key(cfg: JudgeConfig, alternative: str) -> str:
    """The key from the environment variable named by `cfg.api_key_env` (a ./.env file is loaded first).

    Raises:
        GrpoAoError: the variable is not set; the message says how to set it, or `alternative`.
    """
    envfile.load_env_file()  # an exported variable wins over .env
    api_key = find_api_key(cfg.api_key_env)[0]
    if not api_key:
        raise GrpoAoError(
            f"judge.kind=openai needs an API key, but the environment variable {cfg.api_key_env} is not set. "
            f"Run `export {cfg.api_key_env}=...`, or put a line `{cfg.api_key_env}=...` in a .env file in "
            f"{Path.cwd()}, or {alternative}."
        )
    return api_key


def run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """Await `make()` from synchronous code; inside a running event loop, in a worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


class ChatCaller:
    """Asks the API about items in one `ReplyFormat`, with dedupe, cache, retries, deadline and counters.

    Endpoint, model, sampling, timeouts, retries, concurrency and prices come from the `JudgeConfig`.
    """

    def __init__(self, cfg: JudgeConfig, api_key: str, fmt: ReplyFormat,
                 cache_path: str | Path | None = None) -> None:
        self.cfg = cfg
        self.fmt = fmt
        self._api_key = _Secret(api_key)
        self.cache = JudgeCache(cache_path) if cache_path is not None else None
        self.stats = JudgeStats(priced=cfg.priced)
        self._rng = random.Random()
        self._extra_body = {"reasoning": cfg.reasoning_body} if cfg.reasoning_body is not None else None

    def __repr__(self) -> str:
        return (f"ChatCaller({self.fmt.name!r}, model={self.cfg.model!r}, base_url={self.cfg.base_url!r}, "
                f"api_key_env={self.cfg.api_key_env!r}, cache={self.cache!r})")

    async def ask(self, items: Sequence[JudgeItem]) -> list[JudgeResult]:
        """One reply per item, in order; never raises (see module docstring for the steps)."""
        try:
            return await self._ask(items)
        except Exception as exc:  # the caller must never see an API exception; this is a bug path
            log.exception("%s: unexpected error, returning %d items as failed", self.fmt.name, len(items))
            self.stats.failures += len(set(items))
            return [JudgeResult(error=f"internal error: {exc!r}") for _ in items]

    async def _ask(self, items: Sequence[JudgeItem]) -> list[JudgeResult]:
        unique, where = dedupe(items)  # 1.
        self.stats.items += len(items)
        self.stats.unique += len(unique)
        keys = [self.fmt.key(item) for item in unique]
        hits = self._cache_get(keys)  # 2.
        replies: list[JudgeResult | None] = [hits.get(key) for key in keys]
        self.stats.cache_hits += len(hits)
        todo = [i for i, reply in enumerate(replies) if reply is None]
        if todo:
            answered = await self._ask_all([unique[i] for i in todo])  # 3.
            for i, reply in zip(todo, answered, strict=True):
                replies[i] = reply
                if reply.ok:  # 4.
                    self.stats.successes += 1
                    self._cache_put(keys[i], reply)
                else:
                    self.stats.failures += 1
            self._warn_failures(answered)
        return [replies[j] for j in where]

    async def _ask_all(self, items: list[JudgeItem]) -> list[JudgeResult]:
        """Ask about items concurrently; those unfinished at the global deadline become failures."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        deadline = loop.time() + self.cfg.deadline_s
        semaphore = asyncio.Semaphore(self.cfg.max_concurrency)
        progress = [_Progress() for _ in items]
        client = openai.AsyncOpenAI(base_url=self.cfg.base_url, api_key=self._api_key.reveal(),
                                    max_retries=0, timeout=self.cfg.timeout_s)
        async with client:
            tasks = [asyncio.create_task(self._ask_one(client, semaphore, item, state, deadline))
                     for item, state in zip(items, progress, strict=True)]
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        elapsed = time.perf_counter() - started
        replies = []
        for task, state in zip(tasks, progress, strict=True):
            if task.cancelled():
                error = f"deadline_s={self.cfg.deadline_s} passed after {state.attempts} attempts ({state.error})"
                replies.append(JudgeResult(raw=state.raw, latency_s=elapsed, attempts=state.attempts, error=error))
            elif task.exception() is not None:
                exc = task.exception()
                log.error("%s: unexpected error in one item", self.fmt.name, exc_info=exc)
                replies.append(JudgeResult(raw=state.raw, latency_s=elapsed, attempts=state.attempts,
                                           error=f"internal error: {exc!r}"))
            else:
                replies.append(task.result())
        return replies

    async def _ask_one(self, client: openai.AsyncOpenAI, semaphore: asyncio.Semaphore, item: JudgeItem,
                       state: _Progress, deadline: float) -> JudgeResult:
        """Request until a parseable reply, a non-retryable error, the retry budget or the deadline."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        prompt = self.fmt.prompt(item)
        bad_replies = 0
        while True:
            outcome = await self._request(client, semaphore, prompt, state)
            if outcome.fields is not None:
                return JudgeResult(**outcome.fields, raw=state.raw, latency_s=time.perf_counter() - started,
                                   attempts=state.attempts)
            state.error = outcome.error or "unknown error"
            bad_replies += outcome.bad_reply
            if not outcome.retryable or bad_replies > 1 or state.attempts > self.cfg.max_retries:
                break
            delay = backoff_delay(self.cfg, state.attempts, outcome.retry_after_s, self._rng)
            if loop.time() + delay > deadline:
                state.error += "; the next retry would pass the deadline"
                break
            log.debug("%s: attempt %d failed (%s); retrying in %.3f s", self.fmt.name, state.attempts,
                      state.error, delay)
            await asyncio.sleep(delay)
        error = f"{state.error} (after {state.attempts} attempts)"
        return JudgeResult(raw=state.raw, latency_s=time.perf_counter() - started, attempts=state.attempts,
                           error=error)

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
                        temperature=self.cfg.temperature, max_tokens=self.cfg.max_tokens,
                        extra_body=self._extra_body),
                    timeout=self.cfg.timeout_s)
            except openai.APIStatusError as exc:
                status = exc.status_code
                hint = _REASONING_HINT if status in (400, 422) and self._extra_body else ""
                return _Outcome(None, f"HTTP {status}: {str(exc.message)[:200]}{hint}",
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
        fields, error = self.fmt.parse(state.raw)
        if fields is None:
            return _Outcome(None, self._bad_reply_error(error, choices[0].finish_reason, state.raw),
                            retryable=True, bad_reply=True)
        return _Outcome(fields)

    def _bad_reply_error(self, error: str | None, finish_reason: object, raw: str) -> str:
        """Why a reply broke the format; a reply cut off by the token limit says which settings to change."""
        if finish_reason != "length":
            return f"unparseable reply: {error} (finish_reason={finish_reason})"
        where = "with an empty reply (all of it spent reasoning)" if not raw.strip() else "before the format line"
        lower = f" or lower judge.reasoning (now {self.cfg.reasoning!r})" if self.cfg.reasoning != "none" else ""
        return (f"reply cut off at judge.max_tokens={self.cfg.max_tokens} {where} (finish_reason=length): "
                f"raise judge.max_tokens{lower}")

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
            return self.cache.get_many(keys, self.fmt.name)
        except (sqlite3.Error, ValueError) as exc:  # ValueError: a stored row that is not valid
            log.warning("%s: cache read failed (%s); continuing without it", self.fmt.name, exc)
            return {}

    def _cache_put(self, key: str, result: JudgeResult) -> None:
        if self.cache is None:
            return
        try:
            self.cache.put(key, result, self.fmt.name)
        except sqlite3.Error as exc:
            log.warning("%s: cache write failed (%s); the result is used but not stored", self.fmt.name, exc)

    def _warn_failures(self, replies: list[JudgeResult]) -> None:
        reasons = Counter((r.error or "").split(" (after")[0] for r in replies if not r.ok)
        if reasons:
            summary = "; ".join(f"{n}x {reason}" for reason, n in reasons.most_common(3))
            log.warning("%s: %d of %d requested items failed %s: %s", self.fmt.name, sum(reasons.values()),
                        len(replies), self.fmt.on_failure, summary)
