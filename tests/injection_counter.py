"""Test helper: count the injection hook's applications (shared by the checkpointing and prefix-shared tests)."""

from __future__ import annotations

from grpo_ao.steering import Injection


def count_injections(monkeypatch) -> list[int]:
    """Record the batch size of every `Injection.apply` call on a forward covering the placeholders.

    Counted on entry: a recomputation with early stop (torch's default) ends inside `apply`, once the
    last tensor the forward saved has been recomputed."""
    seen, apply = [], Injection.apply

    def counting(self, h):
        if h.shape[1] > self.max_col:
            seen.append(h.shape[0])
        return apply(self, h)

    monkeypatch.setattr(Injection, "apply", counting)
    return seen
