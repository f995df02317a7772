"""`DataConfig`: where the examples come from and how layer percent and K are drawn."""

from __future__ import annotations

from dataclasses import dataclass

from grpo_ao.errors import GrpoAoError

BUILTIN_SOURCES = ("builtin", "builtin_heldout", "builtin_eval")
ON_BAD_ROW = ("skip", "error")
CONTEXT_FORMATS = ("chat", "raw")
QUESTION_DRAWS = ("balanced", "uniform", "pairs")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class DataConfig:
    """Data source and per-draw sampling of layer percent and number of positions K."""

    source: str = "builtin"
    """"builtin" (the training set shipped in the package), "builtin_heldout" (its held-out set: other sentences,
    seen and unseen question wordings), "builtin_eval" (the shipped eval set), a path to a .jsonl file (schema
    in docs/data.md), or "hf:<name or local path>" (Hugging Face `datasets`)."""
    split: str = "train"
    """Split to read from an "hf:" source. JSONL and built-in sources have no splits and ignore it."""
    layer_percents: tuple[int, ...] = (25, 50, 75)
    """Subject layers to read, as percent of depth (each in 0..99: layer int(num_layers·p/100)); each draw picks
    one uniformly."""
    min_positions: int = 1
    """Smallest K (number of last context tokens whose activations are injected)."""
    max_positions: int = 5
    """Largest K; K is drawn uniformly from [min_positions, max_positions], capped at the context length."""
    on_bad_row: str = "skip"
    """"skip": warn with file:line and drop the row; "error": stop with file:line. Also applies to
    contexts shorter than min_positions tokens."""
    max_examples: int | None = None
    """Keep only the first N valid examples (file order); None keeps all."""
    seed: int = 0
    """Seed of the sampler's generator (example order, question, layer percent, K)."""
    context_format: str = "chat"
    """How the subject sees the context: "chat" (as a user turn of the chat template) or "raw" text."""
    question_draw: str = "balanced"
    """How a draw picks one of the example's questions: "balanced" (a family uniformly, then Yes and No
    references equally often, open questions with their share; docs/data.md), "uniform" (any question) or "pairs"
    ("balanced", each yes/no draw followed by the same question about a context answering it the other way: its
    minimal pair, so a batch's yes/no answers are balanced per question)."""

    def __post_init__(self) -> None:
        # YAML gives lists; keep the dataclass hashable and immutable
        if isinstance(self.layer_percents, list):
            object.__setattr__(self, "layer_percents", tuple(self.layer_percents))
        self._validate()

    def _validate(self) -> None:
        src = self.source
        if not isinstance(src, str) or not src.strip():
            raise GrpoAoError(f"data.source must be a non-empty string, got {src!r}. Use 'builtin', "
                              "'builtin_heldout', 'builtin_eval', a path to a .jsonl file or 'hf:<dataset name or path>'.")
        if not (src in BUILTIN_SOURCES or src.endswith(".jsonl") or (src.startswith("hf:") and src[3:].strip())):
            raise GrpoAoError(f"data.source={src!r} is not a known source. Use 'builtin', 'builtin_heldout', "
                              "'builtin_eval', a path ending in .jsonl, or 'hf:<dataset name or local path>'.")
        if not isinstance(self.split, str) or not self.split:
            raise GrpoAoError(f"data.split must be a non-empty string such as 'train', got {self.split!r}.")
        lp = self.layer_percents
        if not isinstance(lp, tuple) or not lp or not all(_is_int(p) and 0 <= p < 100 for p in lp):
            raise GrpoAoError(f"data.layer_percents must be a non-empty list of integers in 0..99 (percent of the "
                              f"subject's depth; 100 would be past its last layer), got {lp!r}. Example: [25, 50, 75].")
        if not _is_int(self.min_positions) or self.min_positions < 1:
            raise GrpoAoError(f"data.min_positions must be an integer >= 1, got {self.min_positions!r}.")
        if not _is_int(self.max_positions) or self.max_positions < self.min_positions:
            raise GrpoAoError(f"data.max_positions must be an integer >= data.min_positions "
                              f"({self.min_positions!r}), got {self.max_positions!r}.")
        if self.on_bad_row not in ON_BAD_ROW:
            raise GrpoAoError(f"data.on_bad_row must be one of {ON_BAD_ROW}, got {self.on_bad_row!r}.")
        if self.max_examples is not None and (not _is_int(self.max_examples) or self.max_examples < 1):
            raise GrpoAoError("data.max_examples must be a positive integer or null (all), "
                              f"got {self.max_examples!r}.")
        if not _is_int(self.seed):
            raise GrpoAoError(f"data.seed must be an integer, got {self.seed!r}.")
        if self.question_draw not in QUESTION_DRAWS:
            raise GrpoAoError(f"data.question_draw must be one of {QUESTION_DRAWS}, got {self.question_draw!r}.")
        if self.context_format not in CONTEXT_FORMATS:
            raise GrpoAoError(f"data.context_format must be one of {CONTEXT_FORMATS}, "
                              f"got {self.context_format!r}.")
