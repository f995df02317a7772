"""Judge configuration: one frozen dataclass, validated once at load time.

The config stores only the *name* of the environment variable that holds the API key, never the key, so a
saved or printed config can not leak it.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass

from grpo_ao.errors import GrpoAoError

JUDGE_KINDS = ("openai", "reference", "constant")
"""Valid values of `JudgeConfig.kind`; `build_judge` maps each to a class in an explicit dict."""

REASONING_LEVELS = ("none", "low", "medium", "high", "default")
"""Valid values of `JudgeConfig.reasoning`; `JudgeConfig.reasoning_body` says what each one sends."""

ITEM_BLOCK = """\
Text the subject model processed:
<text>
{context}
</text>

Question asked to the oracle:
<question>
{question}
</question>

The oracle's answer:
<answer>
{answer}
</answer>"""
"""The item as every prompt to the hosted model shows it (judge and answer expansion alike)."""

# Score bands. The offline reference judge (judge/offline.py, kind=reference) is calibrated to the bands of
# this rubric: wrong ≈ 0.1, no position ≈ 0.25, correct bare ≈ 0.45, correct with detail ≈ 0.7, so both
# judges put rewards on one scale. docs/grading.md shows the two side by side; edit the rubric, the offline
# scores and that table together.
DEFAULT_TEMPLATE = """\
You are grading the answer of an *activation oracle*. An activation oracle is a language model that reads \
another model's hidden states (activations) while that model processes a text. The oracle never sees the \
text itself: everything it knows about the text it had to read from the activations.

""" + ITEM_BLOCK + """

Rate how correct and informative the answer is about the text, from 0 to 100:
- 0-20: wrong or contradicts the text.
- 20-40: generic; could be said of almost any text, or dodges the question.
- 40-60: correct but terse. A correct bare "Yes" or "No" scores 40-50.
- 60-80: correct and detailed; explains why, with specifics from the text.
- 80-100: correct, specific and insightful.
Explaining why raises the score only when the explanation is correct.
Think briefly, then give your rating in the format below."""
"""Default judge prompt (one user message). Placeholders: {context}, {question}, {answer}."""

PLACEHOLDERS = ("{context}", "{question}", "{answer}")

_SCORE_FORMAT = "End your reply with one final line of exactly this form, where N is an integer from 0 to 100:\nScore: N"
_CORRECT_FORMAT = (
    "End your reply with two final lines of exactly this form, where N is an integer from 0 to 100 and the "
    "second line says whether the answer is factually correct about the text:\nScore: N\nCorrect: yes|no"
)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class JudgeConfig:
    """How rollouts are scored: which judge, which endpoint, and how hard to try."""

    kind: str = "reference"
    """Judge to use: "openai" (any OpenAI-compatible chat API), "reference" (offline, against the example's
    reference answer) or "constant" (offline, `constant_score` for everything; smoke runs)."""
    base_url: str = "https://openrouter.ai/api/v1"
    """Base URL of the OpenAI-compatible API (kind=openai)."""
    model: str = "z-ai/glm-4.7-flash"
    """Judge model name as the API knows it (kind=openai). Part of the cache key."""
    api_key_env: str = "OPENROUTER_API_KEY"
    """NAME of the environment variable holding the API key (kind=openai); a `.env` file in the working
    directory is loaded first. The key itself never goes into the config."""
    temperature: float = 0.0
    """Judge sampling temperature. 0 makes replies (and so the cache) as deterministic as the API allows. Part
    of the cache key."""
    max_tokens: int = 1024
    """Upper bound on the judge's reply length in tokens, hidden reasoning included: a reasoning model that
    spends it all thinking returns an empty reply (finish_reason=length), counted as a failure. Part of the
    cache key."""
    reasoning: str = "none"
    """How much a reasoning judge model thinks before it answers (OpenRouter's `reasoning` request field):
    "none" (off; the default, since the shipped z-ai/glm-4.7-flash can switch thinking off and the prompt
    already asks for a brief visible rationale), "low" / "medium" / "high" (effort, roughly 20/50/80 % of
    max_tokens), or "default" (send no `reasoning` field: the model's own default; use this for endpoints
    that reject the field, e.g. api.openai.com). Reasoning tokens are billed as completion tokens, so this is
    also the main cost lever. The reasoning text is never returned. Part of the cache key."""
    timeout_s: float = 60.0
    """Per-request timeout in seconds; a request that takes longer counts as a failed, retryable attempt."""
    max_retries: int = 5
    """Retries per item after the first attempt, on 429, 5xx, timeouts and connection errors (attempts =
    1 + max_retries). An unparseable reply is retried once, within this budget."""
    backoff_base_s: float = 1.0
    """Backoff before retry k (k = 1, 2, ...): min(backoff_max_s, backoff_base_s·2^(k-1)) · U(0.5, 1)
    (jitter), or the server's Retry-After if that is longer."""
    backoff_max_s: float = 30.0
    """Upper bound on the exponential backoff in seconds."""
    retry_after_max_s: float = 60.0
    """Upper bound on how long a server's Retry-After header is honoured, in seconds."""
    max_concurrency: int = 16
    """Most requests in flight at once (semaphore); backoff sleeps do not hold a slot."""
    deadline_s: float = 600.0
    """Global deadline per `score()` call in seconds: items not finished by then are returned as failures."""
    prompt_template: str = DEFAULT_TEMPLATE
    """Judge prompt with placeholders {context}, {question}, {answer}. The strict output format (a final
    `Score: N` line, plus `Correct: yes|no` with `with_correctness`) is appended by the judge. Its hash is part
    of the cache key, so editing it invalidates old cache entries."""
    cache_path: str | None = None
    """SQLite cache file; None lets the recipe use `<run_dir>/judge_cache.sqlite`. Shared safely between
    processes and runs; only successful judgements are stored."""
    price_prompt_per_mtok: float | None = None
    """USD per million prompt tokens; with `price_completion_per_mtok` enables judge/cost_usd:
    cost = prompt_tokens·p_prompt/1e6 + completion_tokens·p_completion/1e6."""
    price_completion_per_mtok: float | None = None
    """USD per million completion tokens (see `price_prompt_per_mtok`)."""
    constant_score: float = 0.5
    """Informativeness (and `correct`) returned for every item by kind=constant, in [0, 1]."""
    with_correctness: bool = False
    """Also ask the judge whether the answer is correct (0/1), for the correctness-target reward."""
    score_parse_failures: bool = False
    """Also send answers whose "[epistemic status: X]" tag did not parse to the judge. False (default): their
    reward is the fixed parse-failure penalty whatever the judge says, so they are not sent (fewer calls) and
    come back marked `skipped`, never as judge failures. True: they are judged too (the score is only
    reported). Rule: `grpo_ao.judge.score_answers`."""

    def __post_init__(self) -> None:
        if self.kind not in JUDGE_KINDS:
            _fail("kind", self.kind, f"use one of {', '.join(JUDGE_KINDS)}")
        if self.reasoning not in REASONING_LEVELS:
            _fail("reasoning", self.reasoning, f"use one of {', '.join(REASONING_LEVELS)}")
        if not _ENV_NAME.match(self.api_key_env):
            _fail("api_key_env", "<hidden>", "give the NAME of an environment variable, e.g. OPENROUTER_API_KEY, "
                  "not the key itself")
        if self.api_key_env.startswith(("sk_", "sk-")):
            _fail("api_key_env", "<hidden>", "this looks like a key; put the key in the environment or .env and "
                  "give the variable's NAME here")
        for name in ("timeout_s", "deadline_s"):
            if not getattr(self, name) > 0:
                _fail(name, getattr(self, name), "use a positive number of seconds")
        for name in ("temperature", "backoff_base_s", "backoff_max_s", "retry_after_max_s"):
            if not getattr(self, name) >= 0:
                _fail(name, getattr(self, name), "use a number >= 0")
        if self.backoff_max_s < self.backoff_base_s:
            _fail("backoff_max_s", self.backoff_max_s, f"use a value >= backoff_base_s ({self.backoff_base_s})")
        for name, low in (("max_tokens", 1), ("max_retries", 0), ("max_concurrency", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                _fail(name, value, f"use an integer >= {low}")
        missing = [p for p in PLACEHOLDERS if p not in self.prompt_template]
        if missing:
            _fail("prompt_template", f"<{len(self.prompt_template)} chars>", f"add the placeholders {missing}")
        if (self.price_prompt_per_mtok is None) != (self.price_completion_per_mtok is None):
            _fail("price_prompt_per_mtok", self.price_prompt_per_mtok,
                  "set both price_prompt_per_mtok and price_completion_per_mtok, or neither")
        for name in ("price_prompt_per_mtok", "price_completion_per_mtok"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                _fail(name, value, "use a price >= 0 in USD per million tokens")
        if not 0.0 <= self.constant_score <= 1.0:
            _fail("constant_score", self.constant_score, "use a value in [0, 1]")

    @property
    def priced(self) -> bool:
        """True when both token prices are given, so cost can be reported."""
        return self.price_prompt_per_mtok is not None

    @property
    def output_format(self) -> str:
        """The strict output instruction appended to the prompt; the reply parser expects exactly this."""
        return _CORRECT_FORMAT if self.with_correctness else _SCORE_FORMAT

    @property
    def reasoning_body(self) -> dict[str, object] | None:
        """The request body's `reasoning` object for `reasoning` (None: send none), as OpenRouter documents it.

        Found in OpenRouter's "Reasoning Tokens" guide (https://openrouter.ai/docs/use-cases/reasoning-tokens,
        now under docs/guides/best-practices/reasoning-tokens): a top-level `reasoning` object with one of
        `effort` ("high" | "medium" | "low"; newer models also "minimal" | "none") or `max_tokens`, plus
        `exclude` (default false; true = the model still reasons but the text is left out of the response)
        and `enabled` (inferred from `effort`/`max_tokens`; false turns reasoning off). The `openai` client
        does not know the field, so the caller passes this as `extra_body={"reasoning": ...}`.

        >>> JudgeConfig(reasoning="low").reasoning_body
        {'effort': 'low', 'exclude': True}
        >>> JudgeConfig(reasoning="none").reasoning_body
        {'enabled': False, 'exclude': True}
        """
        if self.reasoning == "default":
            return None
        if self.reasoning == "none":
            return {"enabled": False, "exclude": True}
        return {"effort": self.reasoning, "exclude": True}

    @property
    def reply_settings(self) -> tuple[object, ...]:
        """Every request setting besides the prompt that changes the reply: (model, temperature, max_tokens,
        reasoning). Part of every cache key, so changing one of them misses instead of reusing old replies."""
        return (self.model, self.temperature, self.max_tokens, self.reasoning)

    @property
    def template_hash(self) -> str:
        """sha256 of the full prompt recipe (template + output format); part of the cache key."""
        return hashlib.sha256(f"{self.prompt_template}\n\n{self.output_format}".encode()).hexdigest()


def _fail(field: str, value: object, fix: str) -> None:
    raise GrpoAoError(f"judge.{field} = {value!r} is invalid: {fix}.")
