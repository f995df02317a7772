"""LLM judge behind any OpenAI-compatible chat API (OpenRouter by default).

The judge is a `ReplyFormat` for `ChatCaller` (chat.py, which holds the dedupe, cache, retry, deadline and
counter machinery): the prompt is `render_prompt` and the reply must end in a strict `Score: N` line
(`parse_reply`). We never turn an error into a score, and `score()` never raises: a failed item comes back
with `informativeness=None` and a reason. What a reasoning model may think, and at what cost, is
`JudgeConfig.reasoning` (sent as OpenRouter's `reasoning` field; see `JudgeConfig.reasoning_body`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grpo_ao.judge.cache import JUDGE_NAMESPACE, cache_key
from grpo_ao.judge.chat import ChatCaller
from grpo_ao.judge.config import JudgeConfig
from grpo_ao.judge.items import JudgeItem, JudgeResult
from grpo_ao.judge.reply import parse_reply, render_prompt
from grpo_ao.judge.retry import backoff_delay, parse_retry_after

__all__ = ["JudgeFormat", "OpenAIJudge", "backoff_delay", "parse_retry_after"]


class JudgeFormat:
    """The judge's `ReplyFormat`: fields = informativeness and correct."""

    name = JUDGE_NAMESPACE
    on_failure = "and will be masked"

    def __init__(self, cfg: JudgeConfig) -> None:
        self.cfg = cfg

    def key(self, item: JudgeItem) -> str:
        return cache_key(self.cfg, item)

    def prompt(self, item: JudgeItem) -> str:
        return render_prompt(self.cfg, item)

    def parse(self, raw: str) -> tuple[dict[str, Any] | None, str | None]:
        parsed = parse_reply(raw, self.cfg.with_correctness)
        if parsed.informativeness is None:
            return None, parsed.error
        return {"informativeness": parsed.informativeness, "correct": parsed.correct}, None


class OpenAIJudge:
    """Judge that asks an OpenAI-compatible chat API for a strict `Score: N` line."""

    def __init__(self, cfg: JudgeConfig, api_key: str, cache_path: str | Path | None = None) -> None:
        self.cfg = cfg
        self._chat = ChatCaller(cfg, api_key, JudgeFormat(cfg), cache_path)
        self.cache = self._chat.cache
        self.stats = self._chat.stats

    def __repr__(self) -> str:
        return (f"OpenAIJudge(model={self.cfg.model!r}, base_url={self.cfg.base_url!r}, "
                f"api_key_env={self.cfg.api_key_env!r}, cache={self.cache!r})")

    async def score(self, items: Sequence[JudgeItem]) -> list[JudgeResult]:
        """One result per item, in order; never raises."""
        return await self._chat.ask(items)
