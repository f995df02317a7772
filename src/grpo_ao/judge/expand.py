"""Expand terse oracle answers to open questions into one or two sentences, with the hosted judge model.

Used by format SFT (`sft.expand_open_answers`) so the targets teach fuller answers than "sports". The call
goes through the judge's machinery (`ChatCaller`: same client, retries, deadline, dedupe, counters and
SQLite file), under its own cache namespace "expand"; key = sha256(model, template hash, context, question,
answer).

Which answers are expanded (`is_terse_open_answer`): the question is open AND the answer has fewer than
`max_words` whitespace-separated words. A question is open unless it is empty or
`grpo_ao.grading.is_yes_no_question` says yes/no (the reference opens with Yes/No, any case and punctuation, or
the question opens with Is, Are, Does, Do, Did, Was, Were, Can, Could, Will, Would, Has, Have, Should, ...,
negations such as "Isn't" included): the same decision the grading rule makes.

We deliberately do NOT let the rewrite correct or complete the answer: the prompt forbids adding facts
from the text that the oracle did not state, because the targets must stay the oracle's own claims, only
phrased more fully. A reply must end in a strict `Answer: ...` line; an unparseable reply is retried once.
A failed call never raises: the item keeps its original answer, is counted in `stats.failures` and logged
as a warning.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpo_ao.errors import GrpoAoError
from grpo_ao.grading import is_yes_no_question, words
from grpo_ao.judge.cache import hash_key
from grpo_ao.judge.chat import ChatCaller, read_api_key, run_sync
from grpo_ao.judge.config import ITEM_BLOCK, JudgeConfig
from grpo_ao.judge.items import JudgeItem
from grpo_ao.judge.reply import fill_template

EXPAND_TEMPLATE = """\
An *activation oracle* is a language model that reads another model's hidden states (activations) while \
that model processes a text, and answers questions about the text from them. It never sees the text itself. \
Its answers are often terse. Rewrite the oracle's answer below as one or two complete, informative \
sentences that restate it as an answer to the question (for example, "sports" to "What is the topic?" \
becomes "The text is about sports.").

Stay faithful to the oracle's answer: keep exactly what it claims, and do not correct it. Do NOT add any \
fact from the text that the oracle did not state, even when the answer is wrong or incomplete: the goal is \
a fuller phrasing of the same claim, not a better answer. The text is shown only so that you understand \
what the answer refers to. If the oracle says it cannot tell, rewrite that as a fuller statement that it \
cannot tell. Write plain text as the oracle would say it, without mentioning the oracle, the activations \
or these instructions.

""" + ITEM_BLOCK
"""The expansion prompt (one user message). Placeholders: {context}, {question}, {answer}."""

OUTPUT_FORMAT = ("End your reply with one final line of exactly this form, with the whole rewritten answer "
                 "on that line:\nAnswer: <rewritten answer>")
"""The strict output instruction appended to the prompt; `parse_expansion` expects exactly this."""

TEMPLATE_HASH = hashlib.sha256(f"{EXPAND_TEMPLATE}\n\n{OUTPUT_FORMAT}".encode()).hexdigest()
"""Part of the cache key, so editing the prompt invalidates old rewrites."""

MAX_REWRITE_WORDS = 80
"""A rewrite longer than this is not "one or two sentences": treated as an unparseable reply."""

_ANSWER_LINE = re.compile(r"^[\s*_`#>]*answer[\s*_`]*:[\s*_`]*(.*?)[\s*_`]*$", re.IGNORECASE)


def is_open_question(question: str, reference: str | None) -> bool:
    """True unless the question is empty or `is_yes_no_question` (module docstring).

    >>> is_open_question("What is the topic?", None), is_open_question("Is it about food?", None)
    (True, False)
    >>> is_open_question("Which language is it?", "No.")
    False
    """
    return bool(words(question)) and not is_yes_no_question(question, reference)


def is_terse_open_answer(item: JudgeItem, max_words: int) -> bool:
    """An open question (`is_open_question`) answered in fewer than `max_words` words.

    >>> is_terse_open_answer(JudgeItem("ctx", "What is the topic?", "Sports."), max_words=6)
    True
    """
    return is_open_question(item.question, item.reference) and len(item.answer.split()) < max_words


def parse_expansion(text: str | None) -> tuple[str | None, str | None]:
    """(rewrite, None) from a reply whose last non-empty line is `Answer: ...`, else (None, why not).

    >>> parse_expansion("Keep the claim.\\nAnswer: The text is about a football match.")
    ('The text is about a football match.', None)
    >>> parse_expansion("Answer: sports.\\nHope this helps!")
    (None, "the last line is not 'Answer: ...'")
    """
    if not text or not text.strip():
        return None, "empty reply"
    match = _ANSWER_LINE.match(text.strip().splitlines()[-1])
    if match is None:
        return None, "the last line is not 'Answer: ...'"
    rewrite = match.group(1).strip().strip('"“”').strip()
    if not rewrite or "rewritten answer>" in rewrite:
        return None, "no rewrite on the 'Answer:' line"
    if len(rewrite.split()) > MAX_REWRITE_WORDS:
        return None, f"rewrite has {len(rewrite.split())} words (at most {MAX_REWRITE_WORDS})"
    return rewrite, None


@dataclass(frozen=True)
class Expansion:
    """The answer to use for one item."""

    text: str
    """The hosted model's rewrite, or the original answer when not expanded."""
    expanded: bool
    """True when `text` is the rewrite."""
    error: str | None = None
    """Why the rewrite failed (the original was kept); None when expanded or not attempted."""


class ExpandFormat:
    """The expander's `ReplyFormat`: value = the rewritten answer (a string)."""

    name = "expand"
    on_failure = "and keep the oracle's original answer"

    def __init__(self, cfg: JudgeConfig) -> None:
        self.cfg = cfg

    def key(self, item: JudgeItem) -> str:
        """Every setting that changes the reply (model, temperature, max_tokens, reasoning) + prompt + item."""
        return hash_key(*self.cfg.reply_settings, TEMPLATE_HASH, item.context, item.question, item.answer)

    def prompt(self, item: JudgeItem) -> str:
        return f"{fill_template(EXPAND_TEMPLATE, item)}\n\n{OUTPUT_FORMAT}"

    def parse(self, raw: str) -> tuple[dict[str, Any] | None, str | None]:
        rewrite, error = parse_expansion(raw)
        return ({"value": rewrite} if rewrite is not None else None), error


class AnswerExpander:
    """Rewrites answers with the hosted model; endpoint, model, retries and cache as in the `JudgeConfig`."""

    def __init__(self, cfg: JudgeConfig, api_key: str, cache_path: str | Path | None = None) -> None:
        self.cfg = cfg
        self._chat = ChatCaller(cfg, api_key, ExpandFormat(cfg), cache_path)
        self.stats = self._chat.stats

    def __repr__(self) -> str:
        return f"AnswerExpander({self._chat!r})"

    async def expand(self, items: Sequence[JudgeItem]) -> list[Expansion]:
        """Rewrite every item's answer; one result per item, in order; never raises.

        Args:
            items: (context, question, answer) to rewrite; `reference` is not shown to the model.
        """
        replies = await self._chat.ask(items)
        return [Expansion(reply.value, True) if reply.ok else Expansion(item.answer, False, reply.error)
                for item, reply in zip(items, replies, strict=True)]


def build_expander(cfg: JudgeConfig, cache_path: str | Path | None = None) -> AnswerExpander:
    """An `AnswerExpander` on the judge's endpoint and model.

    Raises:
        GrpoAoError: `cfg.kind` is not "openai", or the API key variable is not set.
    """
    if cfg.kind != "openai":
        raise GrpoAoError(f"answer expansion uses the hosted judge model, but judge.kind={cfg.kind!r}. "
                          "Set judge.kind=openai, or turn expansion off (sft.expand_open_answers=false).")
    path = cache_path if cache_path is not None else cfg.cache_path
    return AnswerExpander(cfg, read_api_key(cfg, "turn expansion off (sft.expand_open_answers=false)"), path)


def expand_terse_open_answers(expander: AnswerExpander, items: Sequence[JudgeItem],
                              max_words: int) -> list[Expansion]:
    """Expand the answers that `is_terse_open_answer` selects, in one batched call; the rest stay as they are.

    Args:
        expander: the hosted rewriter.
        items: (context, question, answer, reference) per answer; the reference only decides selection.
        max_words: answers with fewer words than this are terse.
    """
    chosen = [i for i, item in enumerate(items) if is_terse_open_answer(item, max_words)]
    result = [Expansion(item.answer, False) for item in items]
    if chosen:
        expanded = run_sync(lambda: expander.expand([items[i] for i in chosen]))
        for i, expansion in zip(chosen, expanded, strict=True):
            result[i] = expansion
    return result
