"""`TaskSampler`: a seeded, resumable stream of (example, question, layer percent, K) draws.

Each draw, in this order, from ONE `numpy.random.Generator` (PCG64) seeded with `cfg.seed`:
  1. the next example of the current epoch (each epoch is a fresh permutation of the usable examples),
  2. one of its questions: `cfg.question_draw="uniform"`: uniformly; "balanced" (`question_groups`): a
     family uniformly among the example's question families, then, within it, the open questions with
     their share of the family's questions and the yes/no share split equally between "Yes" and "No"
     references, then a question uniformly in that group (so an "expanded" context, asked every label of
     a family with one "Yes", is asked Yes as often as No); "pairs": as "balanced", and a yes/no draw
     then also picks (uniformly) a usable context whose reference to the SAME question text is the other
     answer — its minimal pair, the next draw (it takes only steps 3 and 4 of its own). A batch so
     answers each of its yes/no questions Yes and No alike, unless a pair straddles two batches (an odd
     batch size, or an open question before it) or no context answers the question the other way,
  3. a layer percent from `cfg.layer_percents`, uniformly,
  4. K uniformly in [min_positions, min(max_positions, n_tokens)], where n_tokens is the context's
     token count when `count_tokens` is given (K is capped to the context, never an error).
A context with fewer than `min_positions` tokens cannot be used at all: it is dropped at construction
with a warning naming its file:line (`on_bad_row="skip"`) or raises `GrpoAoError` ("error"), so a
short context never crashes training later. We do not weight examples by their number of questions.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from grpo_ao.data.config import DataConfig
from grpo_ao.data.loaders import BadRowWarning
from grpo_ao.data.schema import Example
from grpo_ao.errors import GrpoAoError

_STATE_VERSION = 1


def _stance(reference: str | None) -> str | None:
    ref = (reference or "").strip().rstrip(".!").lower()
    return ref if ref in ("yes", "no") else None


def question_groups(example: Example) -> list[list[tuple[float, list[int]]]]:
    """Per question family of `example` (in order of first appearance): (weight, question indices) groups whose
    weights sum to 1: the open questions (weight = their share of the family), the "Yes" and the "No" questions
    (the yes/no share split equally; all of it to the one present). Empty groups are left out.

    >>> from grpo_ao.data import QA
    >>> ex = Example("t", (QA("A?", "Yes", "f"), QA("B?", "No", "f"), QA("C?", "No", "f"), QA("D?", "d", "f")))
    >>> question_groups(ex)
    [[(0.25, [3]), (0.375, [0]), (0.375, [1, 2])]]
    """
    families: dict[str | None, list[int]] = {}
    for j, qa in enumerate(example.qas):
        families.setdefault(qa.family, []).append(j)
    out = []
    for members in families.values():
        other = [j for j in members if _stance(example.qas[j].reference) is None]
        sides = [side for side in ([j for j in members if _stance(example.qas[j].reference) == s]
                                   for s in ("yes", "no")) if side]
        yes_no_share = (len(members) - len(other)) / len(members)
        groups = [(len(other) / len(members), other)] if other else []
        out.append(groups + [(yes_no_share / len(sides), side) for side in sides])
    return out


@dataclass(frozen=True)
class Task:
    """One draw: a question about one example, read at one layer percent over the last K tokens."""

    example_index: int
    """Index into the `examples` list given to the sampler."""
    context: str
    """Text the subject model reads."""
    question: str
    """Question shown to the oracle."""
    reference: str | None
    """Reference answer, None when unknown."""
    family: str | None
    """Task family of the question, None when unknown."""
    layer_percent: int
    """Subject layer as percent of depth (one of `cfg.layer_percents`)."""
    num_positions: int
    """K: activations of the last K context tokens are injected."""
    phrasing: str | None = None
    """The question's wording set ("seen" / "unseen" in the built-in held-out set), None when not marked."""


class TaskSampler:
    """Deterministic, resumable sampler of `Task` batches (see the module docstring for the draw order).

    Args:
        examples: loaded examples (`load_examples`).
        cfg: data config (seed, layer percents, K range, on_bad_row).
        count_tokens: number of subject tokens of a context, as the subject will see it; None skips
            the length check (K then ranges over the full [min_positions, max_positions]).
    """

    def __init__(self, examples: Sequence[Example], cfg: DataConfig,
                 count_tokens: Callable[[str], int] | None = None) -> None:
        self.examples = list(examples)
        self.cfg = cfg
        self._max_k = [cfg.max_positions] * len(self.examples)
        usable = []
        for i, ex in enumerate(self.examples):
            n_tokens = count_tokens(ex.context) if count_tokens is not None else cfg.max_positions
            if n_tokens < cfg.min_positions:
                msg = (f"{ex.source or f'example {i}'}: context has {n_tokens} tokens, fewer than "
                       f"data.min_positions={cfg.min_positions}")
                if cfg.on_bad_row == "error":
                    raise GrpoAoError(f"{msg}. Remove the row, lower data.min_positions, or set "
                                      "data.on_bad_row=skip.")
                warnings.warn(f"{msg}; skipped", BadRowWarning, stacklevel=2)
                continue
            self._max_k[i] = min(cfg.max_positions, n_tokens)
            usable.append(i)
        if not usable:
            raise GrpoAoError(f"no usable example in data.source={cfg.source!r} (all {len(self.examples)} are "
                              f"empty or shorter than data.min_positions={cfg.min_positions} tokens).")
        self._usable = np.asarray(usable, dtype=np.int64)
        self._groups = [question_groups(ex) for ex in self.examples] if cfg.question_draw != "uniform" else []
        self._answering: dict[tuple[str, str], list[tuple[int, int]]] = {}  # (question, stance) -> (example, qa)
        if cfg.question_draw == "pairs":
            for i in usable:
                for j, qa in enumerate(self.examples[i].qas):
                    stance = _stance(qa.reference)
                    if stance is not None:
                        self._answering.setdefault((qa.question, stance), []).append((i, j))
        self._pending: tuple[int, int] | None = None  # "pairs": the (example, question) drawn next
        self._rng = np.random.Generator(np.random.PCG64(cfg.seed))
        self._order: list[int] = []
        self._pos = 0
        self.epoch = -1  # the first draw starts epoch 0
        self.draws = 0

    def _next_index(self) -> int:
        if self._pos >= len(self._order):
            self._order = self._rng.permutation(self._usable).tolist()
            self._pos = 0
            self.epoch += 1
        index = self._order[self._pos]
        self._pos += 1
        return index

    def _question_index(self, i: int) -> int:
        if self.cfg.question_draw == "uniform":
            return int(self._rng.integers(len(self.examples[i].qas)))
        families = self._groups[i]
        groups = families[int(self._rng.integers(len(families)))]
        u, total = float(self._rng.random()), 0.0
        members = groups[-1][1]  # float rounding: the last group takes what is left
        for weight, group in groups:
            total += weight
            if u < total:
                members = group
                break
        return members[int(self._rng.integers(len(members)))]

    def _partner(self, qa_question: str, reference: str | None) -> tuple[int, int] | None:
        stance = _stance(reference)
        if stance is None:
            return None
        mates = self._answering.get((qa_question, "no" if stance == "yes" else "yes"), [])
        return mates[int(self._rng.integers(len(mates)))] if mates else None

    def _draw(self) -> Task:
        if self._pending is not None:  # "pairs": the partner of the previous draw
            (i, j), self._pending = self._pending, None
        else:
            i = self._next_index()  # 1.
            j = self._question_index(i)  # 2.
            if self.cfg.question_draw == "pairs":
                self._pending = self._partner(self.examples[i].qas[j].question, self.examples[i].qas[j].reference)
        ex = self.examples[i]
        qa = ex.qas[j]
        layer_percent = self.cfg.layer_percents[int(self._rng.integers(len(self.cfg.layer_percents)))]  # 3.
        k = int(self._rng.integers(self.cfg.min_positions, self._max_k[i] + 1))  # 4. inclusive upper bound
        self.draws += 1
        return Task(example_index=i, context=ex.context, question=qa.question, reference=qa.reference,
                    family=qa.family, layer_percent=int(layer_percent), num_positions=k, phrasing=qa.phrasing)

    def next_batch(self, batch_size: int) -> list[Task]:
        """The next `batch_size` tasks; a batch may span an epoch boundary."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return [self._draw() for _ in range(batch_size)]

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position: generator state, current epoch order and position in it."""
        return {"version": _STATE_VERSION, "num_examples": len(self.examples), "seed": self.cfg.seed,
                "rng": self._rng.bit_generator.state, "order": list(self._order), "pos": self._pos,
                "epoch": self.epoch, "draws": self.draws,
                "pending": list(self._pending) if self._pending is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where `state_dict()` was taken (same examples and config required)."""
        if state.get("version") != _STATE_VERSION:
            raise GrpoAoError(f"data sampler state has version {state.get('version')!r}, expected "
                              f"{_STATE_VERSION}; it was written by another grpo-ao version.")
        if state["num_examples"] != len(self.examples):
            raise GrpoAoError(f"the checkpoint's data had {state['num_examples']} examples, the current data "
                              f"has {len(self.examples)}; resume with the same data.source and max_examples.")
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = state["rng"]
        self._rng = rng
        self._order = [int(i) for i in state["order"]]
        self._pos = int(state["pos"])
        self.epoch = int(state["epoch"])
        self.draws = int(state["draws"])
        pending = state.get("pending")  # absent in states written before "pairs" existed
        self._pending = (int(pending[0]), int(pending[1])) if pending is not None else None


def split_examples(examples: Sequence[Example], heldout: int, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, heldout): `heldout` examples chosen with `random.Random(seed)`, and every other example whose
    context is not among theirs. Split by context, never by wrapping a sampler, so the two never share a text.
    """
    import random

    order = random.Random(seed).sample(range(len(examples)), len(examples))
    held_idx = set(order[:heldout])
    held_texts = {examples[i].context for i in held_idx}
    train = [ex for i, ex in enumerate(examples) if i not in held_idx and ex.context not in held_texts]
    return train, [examples[i] for i in sorted(held_idx)]

