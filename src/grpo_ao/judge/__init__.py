"""Judges score the oracle's answers: informativeness in [0, 1], or an explicit failure.

A judge is chosen by `JudgeConfig.kind`: "openai" (OpenAI-compatible API with retries, cache and
counters), "reference" and "constant" (offline). Every judge implements the `Judge` protocol:
`await judge.score(items) -> list[JudgeResult]`, which never raises, plus `judge.stats` counters.

>>> judge = build_judge(JudgeConfig(kind="reference"))
>>> [r.informativeness for r in score_sync(judge, [JudgeItem("text", "Is it about cats?", "Yes.", "Yes")])]
[0.9]
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from dotenv import load_dotenv

from grpo_ao.errors import GrpoAoError
from grpo_ao.judge.config import DEFAULT_TEMPLATE, JUDGE_KINDS, JudgeConfig
from grpo_ao.judge.items import Judge, JudgeItem, JudgeResult, JudgeStats
from grpo_ao.judge.offline import ConstantJudge, ReferenceJudge
from grpo_ao.judge.openai_judge import OpenAIJudge
from grpo_ao.judge.reply import parse_reply, render_prompt

__all__ = [
    "DEFAULT_TEMPLATE", "ConstantJudge", "Judge", "JudgeConfig", "JudgeItem", "JudgeResult", "JudgeStats",
    "OpenAIJudge", "ReferenceJudge", "build_judge", "parse_reply", "render_prompt", "score_sync",
]


def _build_openai(cfg: JudgeConfig, cache_path: Path | None) -> Judge:
    load_dotenv(Path.cwd() / ".env", override=False)  # an exported variable wins over .env
    api_key = os.environ.get(cfg.api_key_env, "").strip()
    if not api_key:
        raise GrpoAoError(
            f"judge.kind=openai needs an API key, but the environment variable {cfg.api_key_env} is not set. "
            f"Run `export {cfg.api_key_env}=...`, or put a line `{cfg.api_key_env}=...` in a .env file in "
            f"{Path.cwd()}, or set judge.kind=reference to run offline."
        )
    return OpenAIJudge(cfg, api_key, cache_path)


_JUDGES: dict[str, Callable[[JudgeConfig, Path | None], Judge]] = {
    "openai": _build_openai,
    "reference": lambda cfg, cache_path: ReferenceJudge(cfg),
    "constant": lambda cfg, cache_path: ConstantJudge(cfg),
}
assert set(_JUDGES) == set(JUDGE_KINDS), "every judge kind needs a builder"


def build_judge(cfg: JudgeConfig, cache_path: str | Path | None = None) -> Judge:
    """The judge named by `cfg.kind`.

    Args:
        cfg: judge config.
        cache_path: SQLite cache file for the API judge; overrides `cfg.cache_path`. With neither, no cache.
    Raises:
        GrpoAoError: kind=openai and the API key variable is not set (in the environment or ./.env).
    """
    path = cache_path if cache_path is not None else cfg.cache_path
    return _JUDGES[cfg.kind](cfg, Path(path) if path is not None else None)


def score_sync(judge: Judge, items: Sequence[JudgeItem]) -> list[JudgeResult]:
    """Run `judge.score(items)` from synchronous code; inside a running event loop, in a worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(judge.score(items))
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, judge.score(items)).result()
