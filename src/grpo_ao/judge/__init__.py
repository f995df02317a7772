"""Judges score the oracle's answers: informativeness in [0, 1], or an explicit failure.

A judge is chosen by `JudgeConfig.kind`: "openai" (OpenAI-compatible API with retries, cache and
counters), "reference" and "constant" (offline). Every judge implements the `Judge` protocol:
`await judge.score(items) -> list[JudgeResult]`, which never raises, plus `judge.stats` counters.
Recipes call `score_answers`, which does not send answers whose epistemic-status tag did not parse (their
reward is fixed) unless `judge.score_parse_failures` is set. The API machinery (chat.py: dedupe, cache,
retries, deadline, counters) also serves the SFT answer expander (expand.py), with its own prompt, reply
format and cache namespace, and the same `JudgeResult` type (its rewrite in `value`).

>>> judge = build_judge(JudgeConfig(kind="reference"))
>>> [r.informativeness for r in score_sync(judge, [JudgeItem("text", "Is it about cats?", "Yes.", "Yes")])]
[0.45]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from grpo_ao.judge import chat
from grpo_ao.judge.chat import ChatCaller, ReplyFormat, read_api_key, run_sync
from grpo_ao.judge.config import DEFAULT_TEMPLATE, JUDGE_KINDS, REASONING_LEVELS, JudgeConfig
from grpo_ao.judge.expand import (
    AnswerExpander,
    Expansion,
    build_expander,
    expand_terse_open_answers,
    is_open_question,
    is_terse_open_answer,
)
from grpo_ao.judge.items import Judge, JudgeItem, JudgeResult, JudgeStats
from grpo_ao.judge.offline import ConstantJudge, ReferenceJudge
from grpo_ao.judge.openai_judge import OpenAIJudge
from grpo_ao.judge.reply import parse_reply, render_prompt
from grpo_ao.optional import require_installed

__all__ = [
    "DEFAULT_TEMPLATE", "NOT_JUDGED_UNPARSED", "REASONING_LEVELS", "AnswerExpander", "ChatCaller",
    "ConstantJudge", "Expansion", "Judge", "JudgeConfig", "JudgeItem", "JudgeResult", "JudgeStats", "OpenAIJudge",
    "ReferenceJudge", "ReplyFormat", "build_expander", "build_judge", "expand_terse_open_answers",
    "is_open_question", "is_terse_open_answer", "parse_reply", "render_prompt", "run_sync", "score_answers",
    "score_sync",
]

NOT_JUDGED_UNPARSED = "not judged: the epistemic-status tag did not parse (judge.score_parse_failures=false)"
"""The `error` of a skipped result from `score_answers`."""


def _build_openai(cfg: JudgeConfig, cache_path: Path | None) -> Judge:
    require_installed(chat.openai)  # without the package every call would fail, each counted as a judge failure
    return OpenAIJudge(cfg, read_api_key(cfg, "set judge.kind=reference to run offline"), cache_path)


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
    return run_sync(lambda: judge.score(items))


def score_answers(judge: Judge, items: Sequence[JudgeItem], parse_ok: Sequence[bool],
                  score_parse_failures: bool) -> list[JudgeResult]:
    """Judge the answers that need a judgement; one result per item, in order. A judge failure never raises.

    An answer whose "[epistemic status: X]" tag did not parse gets the fixed parse-failure reward whatever
    the judge says, so unless `score_parse_failures` it is not sent: its result is `skipped` (no score,
    `error=NOT_JUDGED_UNPARSED`, 0 attempts), counted in `judge.stats.skipped` and never as a failure.

    Args:
        judge: any judge.
        items: one per rollout.  [N]
        parse_ok: whether each rollout's tag parsed.  [N]
        score_parse_failures: send the unparsed ones too (`JudgeConfig.score_parse_failures`).
    Raises:
        ValueError: `items` and `parse_ok` differ in length (a bug in the caller).
    """
    if len(items) != len(parse_ok):
        raise ValueError(f"{len(items)} items but {len(parse_ok)} parse flags")
    send = [i for i, ok in enumerate(parse_ok) if ok or score_parse_failures]
    judged = score_sync(judge, [items[i] for i in send]) if send else []
    results = [JudgeResult(error=NOT_JUDGED_UNPARSED, skipped=True) for _ in items]
    for i, result in zip(send, judged, strict=True):
        results[i] = result
    judge.stats.skipped += len(items) - len(send)
    return results
