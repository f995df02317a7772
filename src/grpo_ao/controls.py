"""The shuffled-activation control: which item's activations each item is asked about instead of its own.

Accuracy with the real activations minus accuracy with another item's activations is what an oracle read
from the activations rather than guessed from the question (the text-inversion / prior-guessing confound of
the activation-oracle literature). The eval and AO pretraining's held-out check both use this one rule.

We deliberately do not use random vectors (they are off the activation distribution) nor a permutation
(with more "Yes" than "No" items, no permutation gives every item a donor with a different answer).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

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
