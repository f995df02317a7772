"""One example = a context text, its questions and optional reference answers; parsing of one row.

A row is a JSON object in one of three shapes (docs/data.md is the full schema):

- `{"context": str, "questions": [str | {"question": str, "answer": str?, "family": str?, "phrasing": str?}],
  "labels": {family: value}?, ...}`
- `{"context": str, "question": str, "answer": str?, "family": str?, ...}` (one question)
- `{"wildchat_question": str, "oracle_questions": [str, ...], ...}` (the published activation-oracle
  GRPO question sets: context = the WildChat prompt, no reference answers)

Every question has a trailing "ANSWER ONLY WITH YES OR NO" removed (`strip_yes_no_instruction`): the
oracle answers in the `[epistemic status: X] Answer` format, and the instruction contradicts it. Extra
keys are ignored. We do not trim, lowercase or otherwise rewrite the texts beyond that.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_YES_NO_INSTRUCTION = re.compile(r"\s*\.?\s*answer\s+only\s+with\s+yes\s+or\s+no[\s.!:;]*$", re.IGNORECASE)


@dataclass(frozen=True)
class QA:
    """One question about an example's context."""

    question: str
    """The question shown to the oracle (never contains the answer)."""
    reference: str | None = None
    """Reference answer ("Yes", "No", "cooking", ...) for offline judges and eval; None when unknown."""
    family: str | None = None
    """Task family, e.g. "topic", "sentiment", "language", "tense", "number", "fact"; None when unknown."""
    phrasing: str | None = None
    """Which wording set the question comes from: "seen" (also used in training) or "unseen" (only in the
    built-in held-out set), so accuracy on wordings never trained on can be reported; None when not marked."""


@dataclass(frozen=True)
class Example:
    """A context text the subject model reads, with one or more questions about it."""

    context: str
    """Text the subject model processes; the oracle only sees its activations."""
    qas: tuple[QA, ...]
    """Questions about the context (at least one)."""
    source: str = ""
    """Where the row came from, "file:line" (JSONL, 1-based) or "hf:name[split]:row" (0-based)."""
    labels: tuple[tuple[str, str], ...] = ()
    """The context's label per task family, e.g. (("sentiment", "positive"), ("topic", "cooking")), from the
    row's optional `labels` object; the counterfactual control uses them (`grpo_ao.controls`)."""

    @property
    def label_map(self) -> dict[str, str]:
        """`labels` as a dict, family -> value."""
        return dict(self.labels)


class BadRow(ValueError):
    """A row that does not follow the schema; the message says what is wrong (without the location)."""


def strip_yes_no_instruction(question: str) -> str:
    """Remove a trailing "ANSWER ONLY WITH YES OR NO" (any case), with the period or whitespace before
    it and any punctuation after it.

    >>> strip_yes_no_instruction("Is the user asking about cooking? ANSWER ONLY WITH YES OR NO.")
    'Is the user asking about cooking?'
    >>> strip_yes_no_instruction("Is it about code. Answer only with yes or no")
    'Is it about code'
    """
    return _YES_NO_INSTRUCTION.sub("", question).rstrip()


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise BadRow(f"{what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise BadRow(f"{what} is empty")
    return value


def _optional_text(value: Any, what: str) -> str | None:
    return None if value is None else _text(value, what)


def _qa(item: Any, what: str) -> QA:
    if isinstance(item, str):
        question, reference, family, phrasing = item, None, None, None
    elif isinstance(item, Mapping):
        if "question" not in item:
            raise BadRow(f'{what} has no "question" field')
        question = item["question"]
        reference = _optional_text(item.get("answer"), f"{what}.answer")
        family = _optional_text(item.get("family"), f"{what}.family")
        phrasing = _optional_text(item.get("phrasing"), f"{what}.phrasing")
    else:
        raise BadRow(f"{what} must be a string or an object, got {type(item).__name__}")
    question = strip_yes_no_instruction(_text(question, what))
    if not question.strip():
        raise BadRow(f"{what} is empty after removing the yes/no instruction")
    return QA(question=question, reference=reference, family=family, phrasing=phrasing)


def parse_row(row: Any, source: str = "") -> Example:
    """Turn one row (a decoded JSON object or a `datasets` row) into an `Example`.

    Raises:
        BadRow: the row is not an object, lacks the context or questions, has an empty text or a
            value of the wrong type. The message names the field.

    >>> parse_row({"context": "I baked bread.", "question": "Is it about cooking?", "answer": "Yes"}).qas
    (QA(question='Is it about cooking?', reference='Yes', family=None, phrasing=None),)
    """
    if not isinstance(row, Mapping):
        raise BadRow(f"row must be a JSON object, got {type(row).__name__}")
    if "context" in row:
        context = _text(row["context"], '"context"')
        if "questions" in row:
            items, name = row["questions"], "questions"
        elif "question" in row:
            items, name = [{k: row[k] for k in ("question", "answer", "family", "phrasing") if k in row}], "question"
        else:
            raise BadRow('row has "context" but neither "questions" nor "question"')
    elif "wildchat_question" in row:
        context = _text(row["wildchat_question"], '"wildchat_question"')
        if "oracle_questions" not in row:
            raise BadRow('row has "wildchat_question" but no "oracle_questions"')
        items, name = row["oracle_questions"], "oracle_questions"
        if isinstance(items, list) and not all(isinstance(q, str) for q in items):
            raise BadRow('"oracle_questions" must be a list of strings')
    else:
        raise BadRow('row has neither "context" nor "wildchat_question"')
    if not isinstance(items, list):
        raise BadRow(f'"{name}" must be a list, got {type(items).__name__}')
    if not items:
        raise BadRow(f'"{name}" is empty')
    labels = ['"question"'] if name == "question" else [f'"{name}"[{i}]' for i in range(len(items))]
    qas = tuple(_qa(item, label) for item, label in zip(items, labels, strict=True))
    return Example(context=context, qas=qas, source=source, labels=_labels(row.get("labels")))


def _labels(value: Any) -> tuple[tuple[str, str], ...]:
    """The optional `labels` object ({family: value}, both strings), sorted by family."""
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise BadRow(f'"labels" must be an object {{family: value}}, got {type(value).__name__}')
    return tuple(sorted((_text(k, '"labels" key'), _text(v, f'"labels".{k}')) for k, v in value.items()))
