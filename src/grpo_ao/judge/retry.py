"""When to retry a request to the hosted model: exponential backoff with jitter, and the server's Retry-After.

Pure functions, so the policy is testable without a server; `ChatCaller` (chat.py) applies it.
"""

from __future__ import annotations

import email.utils
import random
import time

from grpo_ao.judge.config import JudgeConfig


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
