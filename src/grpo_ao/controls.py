"""The activation controls: which other context's activations each item is asked about instead of its own.

Two controls, one rule each, used by the eval and by AO pretraining's held-out checks:

- **shuffled** (`shuffled_donors`): item i reads the activations of an item of another example whose
  reference differs from i's. On balanced yes/no questions a perfect reader and a prior-guesser both score
  ~0.5 on it, so it cannot tell reading from guessing there.
- **counterfactual** (`counterfactual_donors`): item i reads the activations of a context whose answer to
  *i's own question* differs from i's reference (known from the data, or inferred from the contexts'
  `labels`). A reader is pulled to the wrong answer (perfect reader -> 0), a guesser stays at its prior
  (~0.5 on balanced questions). The caller reads the donor context at i's own layer and K.

Accuracy with the real activations minus accuracy under a control is what an oracle read from the
activations rather than guessed from the question (the text-inversion / prior-guessing confound of the
activation-oracle literature).

We deliberately do not use random vectors (they are off the activation distribution) nor a permutation
(with more "Yes" than "No" items, no permutation gives every item a donor with a different answer).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from grpo_ao.errors import GrpoAoError


def answer_key(reference: str) -> str:
    """The reference as an answer: case, surrounding space and a final "."/"!" ignored.

    >>> answer_key(" Yes. ") == answer_key("yes")
    True
    """
    return " ".join(reference.lower().strip().rstrip(".!").split())


def shuffled_donors(groups: Sequence[Hashable], references: Sequence[str | None],
                    layouts: Sequence[Hashable], seed: int) -> list[int]:
    """The control's donor d(i) for each item i, a fixed seeded derangement.

    Allowed donors of i: items j of ANOTHER group (another context/example) whose reference is known and
    differs from i's (`answer_key`); an item without a reference may take any item of another group.
    Among them, donors with the same layout (layer % and K) are preferred, so the control prompt is
    token-identical to the real one; otherwise the caller renders it for the donor's own layer and K.
    Items are visited in a seeded random order (`PCG64([seed, 1])`) and each takes the allowed donor used
    least so far (ties by a seeded random rank), so activations are spread evenly. A map, not a permutation.

    Args:
        groups: per item, its example/context id (an item never reads its own example).
        references: per item, the reference answer or None.
        layouts: per item, what its prompt depends on, e.g. (layer_percent, K).
        seed: fixes the map.

    Returns:
        N donor indices; d(i) != i, never from i's group.

    Raises:
        GrpoAoError: when some item has no allowed donor (too few examples or distinct answers).
    """
    n = len(groups)
    rng = np.random.Generator(np.random.PCG64([seed, 1]))
    order, rank = rng.permutation(n), rng.permutation(n)
    keys = [None if r is None else answer_key(r) for r in references]
    uses = [0] * n
    donors = [-1] * n
    for i in order.tolist():
        allowed = [j for j in range(n) if groups[j] != groups[i]
                   and (keys[i] is None or (keys[j] is not None and keys[j] != keys[i]))]
        if not allowed:
            raise GrpoAoError(f"The shuffled control found no donor for item {i} (reference {references[i]!r}): it "
                              "needs an item of another example with a different reference. Use more items "
                              "(e.g. raise eval.num_examples) or a data set with more than one answer.")
        same = [j for j in allowed if layouts[j] == layouts[i]]
        donors[i] = min(same or allowed, key=lambda j: (uses[j], rank[j]))
        uses[donors[i]] += 1
    return donors


def _answers_by_label(questions: Sequence[str], keys: Sequence[str | None], families: Sequence[str | None],
                      labels: Sequence[Mapping[str, str]]) -> dict[tuple[str, str, str], str | None]:
    """(question, family, label value) -> the answer every context with that label gives (None if they disagree)."""
    out: dict[tuple[str, str, str], str | None] = {}
    for q, key, fam, lab in zip(questions, keys, families, labels, strict=True):
        if key is None or fam is None or fam not in lab:
            continue
        slot = (q, fam, lab[fam])
        out[slot] = key if out.get(slot, key) == key else None
    return out


def _answer_of(j: int, i: int, *, groups, questions, keys, families, labels, known, by_label) -> str | None:
    """Step 2 of `counterfactual_donors`: what item j's CONTEXT answers item i's question, or None if unknown."""
    q, fam = questions[i], families[i]
    if (q, groups[j]) in known:  # (a) the data asks j's context this very question
        return known[(q, groups[j])]
    if fam is None or fam not in labels[j] or fam not in labels[i]:
        return None
    value_j = labels[j][fam]
    inferred = by_label.get((q, fam, value_j))
    if inferred is not None:  # (b) another context with j's label answers it
        return inferred
    if value_j == labels[i][fam] or keys[i] is None:
        return None
    if keys[i] == "yes":  # (c) i's question asks for i's own label, which j's context lacks
        return "no"
    if keys[i] == answer_key(labels[i][fam]):  # (d) an open label question: j's answer is j's label
        return answer_key(value_j)
    return None


def counterfactual_donors(groups: Sequence[Hashable], questions: Sequence[str], references: Sequence[str | None],
                          families: Sequence[str | None], labels: Sequence[Mapping[str, str] | None],
                          layouts: Sequence[Hashable], seed: int) -> list[int | None]:
    """The counterfactual control's donor c(i) for each item i: an item whose CONTEXT answers i's question
    differently from i's reference. A seeded, deterministic map; None where no such context is known.

      1. Index what the data says: the answer of every (question, context) pair with a reference, and per
         (question, family, label value) the answer all contexts with that label give.
      2. For item i, the answer of each other context j to i's question: (a) given by the data; else (b) the
         answer of contexts with j's label; else, when j's label differs from i's, (c) "No" if i's reference
         is "Yes" (i's question asks for i's label), or (d) j's label if i's question is the open label question.
      3. Allowed donors: items of another context whose answer is known and differs from i's reference;
         prefer the same layout (layer %, K), then the context used least so far, ties by a seeded rank.

    Single-label families are assumed (a context has one value per family), as in the built-in data.

    Args:
        groups: per item, its context/example id (an item never reads its own context).
        questions: per item, the question text.
        references: per item, the reference answer or None (no donor then).
        families: per item, the task family or None.
        labels: per item, its context's labels {family: value} or None.
        layouts: per item, e.g. (layer_percent, K); same-layout donors are preferred.
        seed: fixes the map.

    Returns:
        N donor item indices or None; groups[c(i)] != groups[i] and c(i)'s context answers questions[i]
        differently from references[i]. The caller reads c(i)'s CONTEXT at i's own layer and K.

    >>> counterfactual_donors(["a", "b"], ["Is it positive?"] * 2, ["Yes", "No"], ["sentiment"] * 2,
    ...                       [{"sentiment": "positive"}, {"sentiment": "negative"}], [(50, 1)] * 2, 0)
    [1, 0]
    """
    n = len(groups)
    labels = [dict(lab or {}) for lab in labels]
    keys = [None if r is None else answer_key(r) for r in references]
    known = {(q, g): k for q, g, k in zip(questions, groups, keys, strict=True) if k is not None}  # 1.
    by_label = _answers_by_label(questions, keys, families, labels)
    rng = np.random.Generator(np.random.PCG64([seed, 2]))
    order, rank = rng.permutation(n), rng.permutation(n)
    uses: dict[Hashable, int] = {}
    donors: list[int | None] = [None] * n
    ctx = dict(groups=groups, questions=questions, keys=keys, families=families, labels=labels, known=known,
               by_label=by_label)
    for i in order.tolist():
        if keys[i] is None:
            continue
        allowed = []
        for j in range(n):  # 2.
            if groups[j] != groups[i]:
                answer = _answer_of(j, i, **ctx)
                if answer is not None and answer != keys[i]:
                    allowed.append(j)
        if not allowed:
            continue
        same = [j for j in allowed if layouts[j] == layouts[i]]  # 3.
        donors[i] = min(same or allowed, key=lambda j: (uses.get(groups[j], 0), rank[j]))
        uses[groups[donors[i]]] = uses.get(groups[donors[i]], 0) + 1
    return donors
