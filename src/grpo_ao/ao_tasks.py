"""AO pretraining items: which (context, question, answer, layer, K) pairs the oracle is taught and tested on.

A training draw (`draw_items`, seeded) is a mix of three kinds, in the shares of `AoSftConfig`:

- **yes/no** (share 1 - open_frac - context_prediction_frac): with `yes_no_sampling="balanced"`, pick a
  yes/no question TEXT uniformly among every yes/no question the data asks, then "Yes" or "No" with
  p = 0.5, then a context whose reference to that question is that answer. Neither the question nor the
  activations then predict the answer alone (only their combination does); "family" first picks a family
  uniformly, then one of its question texts (balanced picks texts uniformly, so a family with 40 wordings gets
  5x the items of one with 8); "natural" picks a (context, yes/no question) pair uniformly instead, so the
  data's own answer frequencies show through. With `yes_no_pairs`, each drawn yes/no item comes with a
  partner: the same question about a context with the other answer, kept next to it through every shuffle
  (`pair_unit`, `block_order`), so each batch answers each of its yes/no questions Yes and No equally often.
- **open** (`open_frac`): an open label question ("What is the topic of this text?") picked uniformly
  among the open question texts, then a context that answers it. Its answer depends on the activations
  alone, which is what a fresh oracle learns first (docs/DESIGN.md, "What makes a small oracle learn").
- **context prediction** (`context_prediction_frac`): K vectors ending at a random token -> the next (or
  previous) `context_prediction_tokens` tokens of the text. Self-supervised, any text.

Each item gets a layer % from `data.layer_percents`, K uniform in [data.min_positions, max K] and, with
`position_jitter` m > 0, its K vectors end 0..m tokens before the end of the text (the Activation Oracles
recipe, https://arxiv.org/abs/2512.15674, reads windows ending 1-5 tokens before the end; always the last
tokens "leads to brittle generalization"). Held-out items (`heldout_items`) read the last K tokens, as
the eval does. Every item keeps its context's `labels`, so `grpo_ao.controls.counterfactual_donors` can
find, for each held-out item, a context that answers its question differently.

We deliberately do not rebalance open answers (the data's label frequencies are kept) nor expand the data
here: "ask every context every label question" is a property of the data files.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any

from grpo_ao.config import AoSftConfig
from grpo_ao.controls import answer_key, counterfactual_donors
from grpo_ao.data import DataConfig, Example
from grpo_ao.errors import GrpoAoError
from grpo_ao.grading import is_yes_no_question

NEXT_QUESTION = "Can you predict the next {n} tokens that come after this?"
PREVIOUS_QUESTION = "Can you predict the {n} tokens that come before this?"
KINDS = ("yes_no", "open", "next", "previous")


@dataclass(frozen=True)
class AoItem:
    """One (activations → answer) training or held-out item."""

    text: str
    """What the subject reads; the activations of its k tokens ending `offset` tokens before its end are injected."""
    question: str
    target: str
    """The answer the oracle is taught (the reference, or the predicted tokens)."""
    reference: str | None
    """Reference for `grade` (classification items); None for context prediction."""
    family: str | None
    kind: str
    """yes_no | open | next | previous."""
    layer_percent: int
    k: int
    offset: int = 0
    """Tokens between the last read position and the end of `text` (position jitter); 0 = the last k tokens."""
    labels: tuple[tuple[str, str], ...] = ()
    """The context's labels (family, value), for the counterfactual control."""
    phrasing: str | None = None
    """"seen" / "unseen" when the data tags the question's wording; None otherwise."""


def count_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _kind(question: str, reference: str) -> str:
    return "yes_no" if is_yes_no_question(question, reference) else "open"


def question_pools(examples: list[Example]) -> tuple[dict[str, dict[str, list]], dict[str, list]]:
    """The labelled (example, qa) pairs by question text: yes/no ones split by answer key ("yes" / "no"),
    open ones in one list. Insertion-ordered, so draws from them are reproducible."""
    yes_no: dict[str, dict[str, list]] = defaultdict(lambda: {"yes": [], "no": []})
    open_: dict[str, list] = defaultdict(list)
    for ex in examples:
        for qa in ex.qas:
            if qa.reference is None:
                continue
            if _kind(qa.question, qa.reference) == "open":
                open_[qa.question].append((ex, qa))
            elif answer_key(qa.reference) in ("yes", "no"):
                yes_no[qa.question][answer_key(qa.reference)].append((ex, qa))
    return dict(yes_no), dict(open_)


def _layout(rng: random.Random, data: DataConfig, n_tokens: int, top: int, jitter: int) -> tuple[int, int, int]:
    """(layer %, K, offset) for a text of n_tokens: K uniform in [data.min_positions, top] capped at the text,
    the offset uniform in 0..jitter as far as the text allows."""
    layer = rng.choice(data.layer_percents)
    k = rng.randint(data.min_positions, max(data.min_positions, min(top, n_tokens)))
    offset = rng.randint(0, max(0, min(jitter, n_tokens - k))) if jitter else 0
    return layer, k, offset


def classification_item(ex: Example, qa: Any, layout: tuple[int, int, int]) -> AoItem:
    """`qa` of `ex` with its reference as the target, read at `layout` = (layer %, K, offset)."""
    layer, k, offset = layout
    return AoItem(ex.context, qa.question, qa.reference, qa.reference, qa.family, _kind(qa.question, qa.reference),
                  layer, k, offset, ex.labels, getattr(qa, "phrasing", None))


def context_prediction_item(ex: Example, rng: random.Random, data: DataConfig, ao: AoSftConfig,
                            tokenizer: Any) -> AoItem | None:
    """Activations at K tokens ending at e → the next (or previous) n tokens of the text; None if too short."""
    ids = tokenizer(ex.context, add_special_tokens=False)["input_ids"]
    n = ao.context_prediction_tokens
    k = rng.randint(data.min_positions, ao.max_positions or data.max_positions)
    direction = rng.choice(("next", "previous"))
    lo = k if direction == "next" else k + n
    hi = len(ids) - n if direction == "next" else len(ids)
    if hi < lo:
        return None
    end = rng.randint(lo, hi)
    prefix = tokenizer.decode(ids[:end])
    if tokenizer(prefix, add_special_tokens=False)["input_ids"] != ids[:end]:
        return None  # the prefix would tokenize differently on its own: the K positions would shift
    span = ids[end:end + n] if direction == "next" else ids[end - k - n:end - k]
    target = tokenizer.decode(span).strip()
    if not target:
        return None
    question = (NEXT_QUESTION if direction == "next" else PREVIOUS_QUESTION).format(n=n)
    return AoItem(prefix, question, target, None, None, direction, rng.choice(data.layer_percents), k, 0, ex.labels)


def kind_counts(n: int, ao: AoSftConfig, context_prediction: bool) -> dict[str, int]:
    """How many items of each kind a draw of n holds: open and context prediction rounded, yes/no the rest."""
    n_ctx = round(n * ao.context_prediction_frac) if context_prediction else 0
    n_open = round(n * ao.open_frac)
    return {"yes_no": n - n_ctx - n_open, "open": n_open, "context": n_ctx}


def draw_items(examples: list[Example], tokenizer: Any, n: int, seed: int, *, data: DataConfig, ao: AoSftConfig,
               context_prediction: bool) -> list[AoItem]:
    """`n` training items in the shares of `kind_counts` (module docstring), seeded, shuffled.

    A kind the data cannot supply (no open questions, say) gives its share to yes/no, then to open."""
    rng = random.Random(seed)
    yes_no, open_ = question_pools(examples)
    if not yes_no and not open_:
        raise GrpoAoError(f"ao-sft needs questions with reference answers; data.source={data.source!r} has none "
                          "(see docs/data.md: questions with an \"answer\").")
    want = kind_counts(n, ao, context_prediction)
    if not open_:
        want["yes_no"] += want.pop("open")
    if not yes_no:
        want["open"] = want.get("open", 0) + want.pop("yes_no")
    n_tokens = {ex.context: count_tokens(tokenizer, ex.context) for ex in examples}
    yn_questions, open_questions = list(yes_no), list(open_)
    pairs = [p for q in yn_questions for side in ("yes", "no") for p in yes_no[q][side]]
    by_family: dict[str, list[str]] = defaultdict(list)
    for q in yn_questions:
        by_family[next(qa.family for side in ("yes", "no") for _, qa in yes_no[q][side])].append(q)
    families = list(by_family)

    def yes_no_pair():
        if ao.yes_no_sampling == "natural":
            return rng.choice(pairs)
        if ao.yes_no_sampling == "family":
            sides = yes_no[rng.choice(by_family[rng.choice(families)])]
        else:
            sides = yes_no[rng.choice(yn_questions)]
        side = rng.choice(("yes", "no"))
        return rng.choice(sides[side] or sides["no" if side == "yes" else "yes"])

    def partner(qa):
        """The same question about a context whose answer is the other one (None if no context has it)."""
        other = yes_no[qa.question]["no" if answer_key(qa.reference) == "yes" else "yes"]
        return rng.choice(other) if other else None

    top = ao.max_positions or data.max_positions
    makers = {"yes_no": yes_no_pair, "open": lambda: rng.choice(open_[rng.choice(open_questions)])}
    items: list[AoItem] = []
    for kind in ("yes_no", "open"):
        drawn: list[tuple] = []
        pairing, tries = kind == "yes_no" and ao.yes_no_pairs, 0
        while len(drawn) < want.get(kind, 0):
            ex, qa = makers[kind]()
            mate = partner(qa) if pairing else None
            if pairing and mate is None:  # an unpaired item would shift every later pair off the grid
                tries += 1
                if tries > 50 * want[kind] + 100:
                    raise GrpoAoError(f"ao_sft.yes_no_pairs=true, but no yes/no question of data.source="
                                      f"{data.source!r} has contexts answering both Yes and No; set "
                                      "ao_sft.yes_no_pairs=false.")
                continue
            drawn += [(ex, qa)] + ([mate] if mate is not None and len(drawn) + 1 < want[kind] else [])
        for ex, qa in drawn:
            items.append(classification_item(ex, qa, _layout(rng, data, n_tokens[ex.context], top, ao.position_jitter)))
    got = tries = 0
    while got < want.get("context", 0):
        tries += 1
        if tries > 50 * want["context"] + 100:
            raise GrpoAoError(f"ao-sft could not draw {want['context']} context-prediction items from "
                              f"data.source={data.source!r}: its contexts are too short for data.min_positions / "
                              "ao_sft.context_prediction_tokens.")
        item = context_prediction_item(rng.choice(examples), rng, data, ao, tokenizer)
        if item is not None:
            items.append(item)
            got += 1
    if pair_unit(ao) == 1:
        rng.shuffle(items)
        return items
    return [items[i] for i in block_order(rng, len(items), pair_unit(ao))]


def pair_unit(ao: AoSftConfig) -> int:
    """Items that travel together through every shuffle: 2 with `yes_no_pairs` (a yes/no item and its
    partner sit at indices 2i, 2i+1, so an even batch never splits them), else 1."""
    return 2 if ao.yes_no_pairs else 1


def block_order(rng: random.Random, n: int, unit: int) -> list[int]:
    """A seeded permutation of range(n) that moves blocks of `unit` consecutive indices as one; the n % unit
    indices left over stay last, so no block ever starts off the grid of multiples of `unit` (unit 1: the
    plain `rng.sample(range(n), n)`)."""
    if unit == 1:
        return rng.sample(range(n), n)
    full = n - n % unit
    blocks = [list(range(i, i + unit)) for i in range(0, full, unit)]
    rng.shuffle(blocks)
    return [i for block in blocks for i in block] + list(range(full, n))


def heldout_items(examples: list[Example], tokenizer: Any, n: int, seed: int, *, data: DataConfig) -> list[AoItem]:
    """Every labelled (context, question) pair of the held-out `examples` (a seeded sample of n when there are
    more), each read at its last K tokens (layer % and K seeded), in data order."""
    rng = random.Random(seed)
    pairs = [(ex, qa) for ex in examples for qa in ex.qas if qa.reference is not None]
    if len(pairs) > n:
        keep = set(rng.sample(range(len(pairs)), n))
        pairs = [p for i, p in enumerate(pairs) if i in keep]
    return [classification_item(ex, qa, _layout(rng, data, count_tokens(tokenizer, ex.context),
                                                   data.max_positions, 0))
            for ex, qa in pairs]


def answer_candidates(examples: list[Example]) -> dict[str, list[str]]:
    """Per open question text, the distinct references the data gives it (first spelling kept), sorted:
    the answers the cheap held-out check scores against each other."""
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for ex in examples:
        for qa in ex.qas:
            if qa.reference is not None and _kind(qa.question, qa.reference) == "open":
                out[qa.question].setdefault(answer_key(qa.reference), qa.reference)
    return {q: sorted(c.values()) for q, c in out.items()}


def counterfactual_items(items: list[AoItem], tokenizer: Any, seed: int) -> list[AoItem | None]:
    """Per held-out item i, i with its text replaced by its counterfactual donor's context (a context that answers
    i's question differently, `controls.counterfactual_donors`), read at i's OWN layer % and K; None where no
    donor is known or the donor text is shorter than K."""
    donors = counterfactual_donors([it.text for it in items], [it.question for it in items],
                                   [it.reference for it in items], [it.family for it in items],
                                   [dict(it.labels) for it in items], [(it.layer_percent, it.k) for it in items], seed)
    out: list[AoItem | None] = []
    for it, d in zip(items, donors, strict=True):
        ok = d is not None and count_tokens(tokenizer, items[d].text) >= it.k + it.offset
        out.append(replace(it, text=items[d].text, labels=items[d].labels) if ok else None)
    return out
