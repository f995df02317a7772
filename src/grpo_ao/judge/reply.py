"""The judge's prompt in, its strict `Score: N` line out.

We deliberately do NOT take "the last number in the reply" (the prototype read "45/100" as 100 and
scored it 1.0): only the last line that starts with `Score:` counts, and anything else is a failure, never
a default score.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from grpo_ao.judge.config import JudgeConfig
from grpo_ao.judge.items import JudgeItem

_PLACEHOLDER = re.compile(r"\{(context|question|answer)\}")
# A line that claims to be the score line; it must then match _SCORE_VALUE exactly.
_SCORE_LINE = re.compile(r"^[\s*_`#>]*score[\s*_`]*:", re.IGNORECASE)
_SCORE_VALUE = re.compile(r"^[\s*_`#>]*score[\s*_`]*:[\s*_`]*(\d{1,3}(?:\.\d+)?)\s*(?:/\s*100)?[\s*_`.]*$",
                          re.IGNORECASE)
_CORRECT_LINE = re.compile(r"^[\s*_`#>]*correct[\s*_`]*:", re.IGNORECASE)
_CORRECT_VALUE = re.compile(r"^[\s*_`#>]*correct[\s*_`]*:[\s*_`]*(yes|no)[\s*_`.]*$", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedReply:
    """A parsed judge reply: `informativeness` is None when the reply broke the format, and `error` says how."""

    informativeness: float | None
    """Score / 100 in [0, 1]."""
    correct: float | None
    """1.0 for `Correct: yes`, 0.0 for `Correct: no`, None when not asked for."""
    error: str | None = None
    """What was wrong with the reply."""


def render_prompt(cfg: JudgeConfig, item: JudgeItem) -> str:
    """Fill the template in one pass (text containing "{answer}" is not substituted again) and append the
    strict output format.

    >>> cfg = JudgeConfig(prompt_template="T={context} Q={question} A={answer}")
    >>> render_prompt(cfg, JudgeItem("{answer}", "q?", "Yes")).splitlines()[0]
    'T={answer} Q=q? A=Yes'
    """
    return f"{fill_template(cfg.prompt_template, item)}\n\n{cfg.output_format}"


def fill_template(template: str, item: JudgeItem) -> str:
    """Replace {context}, {question} and {answer} in one pass, so an inserted text is never substituted again."""
    values = {"context": item.context, "question": item.question, "answer": item.answer}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def parse_reply(text: str | None, with_correctness: bool = False) -> ParsedReply:
    """Read the LAST `Score: N` line (0 ≤ N ≤ 100, integer or decimal, optional "/100"); informativeness =
    N / 100. With `with_correctness` also read the last `Correct: yes|no` line.

    >>> parse_reply("The answer is terse.\\nScore: 45/100").informativeness
    0.45
    >>> parse_reply("Score: 150").error
    'score 150 is outside 0-100'
    """
    if not text or not text.strip():
        return ParsedReply(None, None, "empty reply")
    lines = text.strip().splitlines()
    score_lines = [line for line in lines if _SCORE_LINE.match(line)]
    if not score_lines:
        return ParsedReply(None, None, "no 'Score: N' line in the reply")
    match = _SCORE_VALUE.match(score_lines[-1])
    if match is None:
        return ParsedReply(None, None, f"malformed score line {score_lines[-1].strip()[:60]!r}")
    score = float(match.group(1))
    if not 0.0 <= score <= 100.0:
        return ParsedReply(None, None, f"score {match.group(1)} is outside 0-100")
    correct = None
    if with_correctness:
        correct_lines = [line for line in lines if _CORRECT_LINE.match(line)]
        value = _CORRECT_VALUE.match(correct_lines[-1]) if correct_lines else None
        if value is None:
            return ParsedReply(None, None, "no 'Correct: yes|no' line in the reply")
        correct = 1.0 if value.group(1).lower() == "yes" else 0.0
    return ParsedReply(score / 100.0, correct)
