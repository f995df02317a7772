"""The oracle's input format and the `[epistemic status: X] Answer` output format.

The trained oracle checkpoints only work when the prompt matches what they were trained on to the
character, so this module is the one place that builds it:

    user message = [system prompt + "\\n\\n" if merged] + "Layer: {L}\\n" + " ?" * K + " \\n" + question

rendered with the tokenizer's chat template (`add_generation_prompt=True`,
`enable_thinking=False`). The K placeholder positions are found by token id, never guessed: when
they are not exactly K consecutive `" ?"` tokens right after `Layer: L\\n`, we raise. We never fall
back to positions 0..K-1 (the old prototype did, and injected into the chat header).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import torch

from grpo_ao.errors import GrpoAoError

SPECIAL_TOKEN = " ?"

ORACLE_SYSTEM_PROMPT = """Respond with: [epistemic status: X] Answer

X is your confidence from 0-10. Use the FULL range:
- 10: absolutely certain
- 8: very confident
- 6: fairly confident
- 4: somewhat uncertain
- 2: quite uncertain
- 0: no idea

If you're certain you CAN'T answer, that's still high confidence:
[epistemic status: 9] I can't answer this question given these activations.

Examples:
[epistemic status: 7] Yes
[epistemic status: 6] No
[epistemic status: 9] I can't answer this question given these activations.
[epistemic status: 8] The user is asking about Python debugging.
[epistemic status: 2] The question is about cooking"""

SystemPromptMode = Literal["none", "merged", "system_role"]
SYSTEM_PROMPT_MODES = ("none", "merged", "system_role")


def oracle_prefix(layer: int, num_positions: int) -> str:
    """`"Layer: {layer}\\n" + " ?" * num_positions + " \\n"`.

    >>> oracle_prefix(18, 3)
    'Layer: 18\\n ? ? ? \\n'
    """
    if num_positions < 1:
        raise ValueError(f"num_positions must be >= 1, got {num_positions}")
    return f"Layer: {layer}\n" + SPECIAL_TOKEN * num_positions + " \n"


def build_oracle_messages(
    question: str,
    layer: int,
    num_positions: int,
    system_prompt: str | None = None,
    answer: str | None = None,
    mode: SystemPromptMode | None = None,
) -> list[dict[str, str]]:
    """Chat messages for one oracle query.

    Args:
        question: the question about the activations.
        layer: subject layer the activations were read from (shown to the oracle).
        num_positions: K, the number of placeholder tokens.
        system_prompt: instruction text, or None for the base oracle (no system prompt at all).
        answer: an assistant turn to append (for teacher forcing), or None.
        mode: where the system prompt goes: "merged" (default when a prompt is given; the
            published format-SFT oracle's layout: `system_prompt + "\\n\\n" + prefix + question` in
            the user turn), "system_role" (a separate system message) or "none" (dropped).
    """
    if mode is None:
        mode = "merged" if system_prompt else "none"
    if mode not in SYSTEM_PROMPT_MODES:
        raise GrpoAoError(f"system_prompt_mode must be one of {SYSTEM_PROMPT_MODES}, got {mode!r}.")
    user = oracle_prefix(layer, num_positions) + question
    messages: list[dict[str, str]] = []
    if system_prompt and mode == "merged":
        user = system_prompt + "\n\n" + user
    elif system_prompt and mode == "system_role":
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": user})
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def apply_chat_template(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    """Render messages to text, with `enable_thinking=False` (ignored by templates without it)."""
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, enable_thinking=False
    )


def special_token_id(tokenizer: Any) -> int:
    """The id of `" ?"`; raises if the tokenizer does not encode it as exactly one token."""
    ids = tokenizer.encode(SPECIAL_TOKEN, add_special_tokens=False)
    if len(ids) != 1:
        raise GrpoAoError(
            f"This tokenizer encodes {SPECIAL_TOKEN!r} as {len(ids)} tokens {ids}; the oracle format "
            "needs it to be exactly one token. Use a Qwen-style (byte-level BPE) tokenizer."
        )
    return ids[0]


def find_placeholder_positions(input_ids: list[int], tokenizer: Any, layer: int, num_positions: int) -> list[int]:
    """Indices of the K placeholder tokens: the first run of `" ?"` ids, right after `Layer: L\\n`.

    Raises GrpoAoError when the first run is missing, has a length other than K, or does not follow
    the `Layer: L\\n` text. Only the first run counts, so a `" ?"` later in the question or in a
    completion is never taken for a placeholder.
    """
    qid = special_token_id(tokenizer)
    start = next((i for i, t in enumerate(input_ids) if t == qid), None)
    if start is None:
        raise GrpoAoError(f"No {SPECIAL_TOKEN!r} placeholder token found in the oracle prompt.")
    end = start
    while end < len(input_ids) and input_ids[end] == qid:
        end += 1
    if end - start != num_positions:
        raise GrpoAoError(
            f"Expected exactly {num_positions} consecutive {SPECIAL_TOKEN!r} placeholders, found "
            f"{end - start} at token {start}. The prompt text or tokenizer does not match the oracle format."
        )
    before = tokenizer.decode(input_ids[:start])
    if not before.endswith(f"Layer: {layer}\n"):
        raise GrpoAoError(
            f"The placeholders at token {start} do not follow 'Layer: {layer}\\n' (text before ends "
            f"with {before[-30:]!r}). Refusing to guess positions."
        )
    return list(range(start, end))


@dataclass(frozen=True)
class OraclePrompt:
    """One rendered oracle prompt: its text, token ids and the K placeholder positions."""

    text: str
    input_ids: list[int]
    positions: list[int]


def render_oracle_prompt(
    tokenizer: Any,
    question: str,
    layer: int,
    num_positions: int,
    system_prompt: str | None = None,
    mode: SystemPromptMode | None = None,
) -> OraclePrompt:
    """Render the oracle prompt with the chat template and locate its placeholders by token id."""
    messages = build_oracle_messages(question, layer, num_positions, system_prompt, mode=mode)
    text = apply_chat_template(tokenizer, messages, add_generation_prompt=True)
    input_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    positions = find_placeholder_positions(input_ids, tokenizer, layer, num_positions)
    return OraclePrompt(text=text, input_ids=list(input_ids), positions=positions)


def left_pad(prompts: list[OraclePrompt], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """Left-pad prompts into a batch and shift each row's placeholder positions by its padding.

    Returns input_ids [B, P], attention_mask [B, P] and positions (one list of K_b indices per row).
    """
    width = max(len(p.input_ids) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)  # [B, P]
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)  # [B, P]
    positions = []
    for b, p in enumerate(prompts):
        pad = width - len(p.input_ids)
        input_ids[b, pad:] = torch.tensor(p.input_ids)
        attention_mask[b, pad:] = 1
        positions.append([pad + i for i in p.positions])
    return input_ids, attention_mask, positions


# ---------------------------------------------------------------------------- output format

_STATUS_RE = re.compile(
    r"^\s*(?:<think>\s*</think>\s*)?\[\s*epistemic\s+status\s*:\s*([^\]]*?)\s*\](.*)$",
    re.IGNORECASE | re.DOTALL,
)


@dataclass(frozen=True)
class ParsedResponse:
    """A parsed oracle answer. On failure `ok` is False, `confidence` None, `answer` the stripped text."""

    ok: bool
    confidence: int | None
    answer: str


def parse_epistemic_status(text: str) -> ParsedResponse:
    """Parse `[epistemic status: X] Answer` with X an integer in 0..10 and a non-empty answer.

    Tolerates leading whitespace, a stray empty `<think></think>` block, any case of the tag and
    spaces inside the brackets. 11, -1, 7.5, a missing number or an empty answer fail.

    >>> parse_epistemic_status("[Epistemic Status: 7] Paris")
    ParsedResponse(ok=True, confidence=7, answer='Paris')
    """
    m = _STATUS_RE.match(text)
    if m is not None and re.fullmatch(r"\d{1,2}", m.group(1)) and int(m.group(1)) <= 10:
        answer = m.group(2).strip()
        if answer:
            return ParsedResponse(ok=True, confidence=int(m.group(1)), answer=answer)
    return ParsedResponse(ok=False, confidence=None, answer=text.strip())


def format_epistemic_status(confidence: int, answer: str) -> str:
    """Inverse of `parse_epistemic_status`: `format_epistemic_status(7, "Paris")` → `"[epistemic status: 7] Paris"`."""
    if not 0 <= int(confidence) <= 10:
        raise ValueError(f"confidence must be an integer in 0..10, got {confidence}")
    return f"[epistemic status: {int(confidence)}] {answer}"


_TAG_PREFIX_RE = re.compile(r"^\s*(?:<think>\s*</think>\s*)?\[\s*epistemic\s+status\s*:\s*\d{1,2}\s*\]", re.IGNORECASE)


def tag_candidate_ids(tokenizer: Any) -> list[list[int]]:
    """The token ids of `[epistemic status: X]` for X = 0..10, as the oracle writes them at the start of an
    answer (`format_epistemic_status`'s spelling; the tag is split off its answer by the space before it)."""
    out = []
    for x in range(11):
        ids, n_tag = tagged_answer_ids(tokenizer, x, "Yes")
        out.append(ids[:n_tag])
    return out


def tagged_answer_ids(tokenizer: Any, confidence: int, answer: str) -> tuple[list[int], int]:
    """The token ids of `[epistemic status: X] answer` and how many of them spell the tag (the rest: the answer).

    Raises:
        GrpoAoError: the tokenizer merges the tag with the answer, so the tag has no tokens of its own (what
            `grpo.tag_expectation` and its anchors train).
    """
    tag = format_epistemic_status(confidence, "").rstrip()
    tag_ids = tokenizer(tag, add_special_tokens=False)["input_ids"]
    ids = tokenizer(format_epistemic_status(confidence, answer), add_special_tokens=False)["input_ids"]
    if ids[:len(tag_ids)] != tag_ids:
        raise GrpoAoError(f"this tokenizer merges the tag {tag!r} with the answer {answer!r} after it, so the tag has "
                          "no tokens of its own: use grpo.tag_expectation=false.")
    return ids, len(tag_ids)


def tag_token_mask(tokenizer: Any, completion_ids: torch.Tensor, parsed_ok: list[bool]) -> torch.Tensor:
    """Which completion tokens spell the `[epistemic status: X]` tag: the shortest prefix of a parsed
    completion whose decoded text contains the whole tag (the token holding "]" included).  [N, T] -> [N, T] bool

    Rows that did not parse get no tag tokens (their tokens all take the sequence advantage).
    """
    mask = torch.zeros(completion_ids.shape, dtype=torch.bool)  # [N, T]
    for n, ok in enumerate(parsed_ok):
        if not ok:
            continue
        ids = completion_ids[n].tolist()
        for t in range(1, len(ids) + 1):
            if _TAG_PREFIX_RE.match(tokenizer.decode(ids[:t], skip_special_tokens=True)):
                mask[n, :t] = True
                break
    return mask
