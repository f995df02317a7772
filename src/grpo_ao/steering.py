"""Reading activations from the subject model and injecting them into the oracle.

Layer convention: "layer L" is the output of decoder block L (0-indexed), the residual stream after
block L, which is `hidden_states[L + 1]` in Hugging Face indexing.

Extraction runs the *subject*: the same base model with the LoRA adapter disabled, in eval mode,
without gradients, and stops the forward right after the deepest block it needs.

Vector preprocessing (`oracle.vector_preprocessing`, recorded in every adapter's layout): `none` returns the raw
block outputs; `center` subtracts from each the subject's mean block output at its layer (`subject_means`), so
the direction the oracle is given is the part that differs between contexts.

Injection adds, at each placeholder position of decoder block `layer`'s output,

    h' = h + coef · ||h|| · v / ||v||

where `||h||` is the oracle's own activation norm there and the added term is detached. It acts on
any forward whose sequence covers the placeholder positions (a generation prefill or a training
forward over prompt + completion) and never on cached single-token decode steps.

The hook stays installed until the training backward has returned (`rollout.injected_logprobs`
yields inside `inject`). Gradient checkpointing recomputes each decoder block during backward, and
transformers 5.0–5.22 checkpoint the block's whole `__call__`, forward hooks included (5.23+ only
its `forward`): a hook removed before `loss.backward()` is missing from block `layer`'s
recomputation, which then fails (`CheckpointError`, a different number of saved tensors) or yields
gradients of an un-steered forward. So `Injection.apply` depends only on its input and state fixed
at construction (it changes nothing but its `calls` counter): a second call on the recomputed
activations gives the same result and consumes nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from grpo_ao.models import decoder_layers

VECTOR_PREPROCESSING = ("none", "center")
"""What extraction can do to subject vectors before they are injected (`oracle.vector_preprocessing`)."""
MEAN_REFERENCE_CONTEXTS = 256
MEAN_REFERENCE_TOKENS = 16
"""`subject_means` averages the last 16 tokens of the first 256 built-in training contexts: a fixed reference
shipped with grpo-ao, so every stage, machine and later reader of an adapter computes the same means."""
_MEANS_ATTR = "_grpo_ao_subject_means"


def layer_for_percent(num_layers: int, percent: int | float) -> int:
    """`int(num_layers * percent / 100)`: Qwen3-8B's 36 layers at 25/50/75 % → 9/18/27."""
    if not 0 <= percent < 100:
        raise ValueError(f"layer percent must be in [0, 100), got {percent}")
    return int(num_layers * percent / 100)


def _block_output(output: Any) -> torch.Tensor:
    # transformers 5.x decoder layers return a tensor; older versions return a tuple
    return output if isinstance(output, torch.Tensor) else output[0]


def _replace_block_output(output: Any, hidden: torch.Tensor) -> Any:
    return hidden if isinstance(output, torch.Tensor) else (hidden, *output[1:])


class _StopForward(Exception):
    """Raised by the capture hook after the deepest needed block, to skip the remaining layers."""


@contextlib.contextmanager
def subject_mode(model: Any) -> Iterator[Any]:
    """The subject: adapter disabled (when the model has one), eval mode, no grad; state restored after."""
    was_training = model.training
    adapter_off = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
    model.eval()
    try:
        with adapter_off, torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def render_context(tokenizer: Any, context: str, context_format: str = "chat") -> str:
    """The text the subject reads: the context as a chat user turn (default) or raw.

    In chat format the template's closing tokens after the context are cut off, so "the last K
    tokens" are the last K tokens of the context itself.
    """
    if context_format == "raw":
        return context
    if context_format != "chat":
        raise ValueError(f"context_format must be 'chat' or 'raw', got {context_format!r}")
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": context}], tokenize=False, add_generation_prompt=False
    )
    cut = rendered.rfind(context)
    assert cut >= 0, "chat template dropped the context text"
    return rendered[: cut + len(context)]


def extract_activations(
    model: Any,
    tokenizer: Any,
    contexts: Sequence[str],
    layers: Sequence[int],
    num_positions: Sequence[int],
    context_format: str = "chat",
    preprocessing: str = "none",
) -> list[torch.Tensor]:
    """Subject activations: the output of block `layers[b]` at the last `num_positions[b]` tokens.

    Args:
        model: base model or peft model (its adapter is disabled for this read).
        tokenizer: left-padding tokenizer.
        contexts: B texts.
        layers: B block indices (may differ per row).
        num_positions: B values of K.
        context_format: "chat" (a user turn, as the oracles were trained) or "raw".
        preprocessing: "none" (raw block outputs) or "center" (minus `subject_means` at the row's layer).

    Returns:
        B tensors, row b of shape [K_b, hidden], detached, in the model's dtype.
    """
    if not len(contexts) == len(layers) == len(num_positions):
        raise ValueError("contexts, layers and num_positions must have the same length")
    if preprocessing not in VECTOR_PREPROCESSING:
        raise ValueError(f"preprocessing must be one of {VECTOR_PREPROCESSING}, got {preprocessing!r}")
    if preprocessing != "none":
        raw = extract_activations(model, tokenizer, contexts, layers, num_positions, context_format)
        return preprocess_vectors(model, tokenizer, raw, layers, context_format, preprocessing)
    texts = [render_context(tokenizer, c, context_format) for c in contexts]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    lengths = enc["attention_mask"].sum(dim=1).tolist()
    for b, (n, k) in enumerate(zip(lengths, num_positions, strict=True)):
        if k > n:
            raise ValueError(f"context {b} has {n} tokens, fewer than the {k} positions asked for")
    blocks = decoder_layers(model)
    deepest = max(layers)
    captured: dict[int, torch.Tensor] = {}

    def capture(index: int):
        def hook(module, args, output):
            captured[index] = _block_output(output)
            if index == deepest:
                raise _StopForward

        return hook

    handles = [blocks[i].register_forward_hook(capture(i)) for i in sorted(set(layers))]
    device = next(model.parameters()).device
    try:
        with subject_mode(model):
            try:
                mask = enc["attention_mask"].to(device)
                # the position ids generate() uses with left padding, so a row reads the same batched or alone
                model(input_ids=enc["input_ids"].to(device), attention_mask=mask,
                      position_ids=(mask.cumsum(dim=1) - 1).clamp(min=0))
            except _StopForward:
                pass
    finally:
        for h in handles:
            h.remove()
    width = enc["input_ids"].shape[1]
    # left padding: every row's last K tokens sit at the end of the batch
    return [captured[layer][b, width - k :].detach().clone() for b, (layer, k) in enumerate(zip(layers, num_positions))]


def extract_in_batches(model: Any, tokenizer: Any, contexts: Sequence[str], layers: Sequence[int],
                       num_positions: Sequence[int], context_format: str, batch_size: int,
                       on_batch: Any = None, preprocessing: str = "none") -> list[torch.Tensor]:
    """`extract_activations` over many rows, `batch_size` rows per forward; each result moved to the CPU
    (kept for reuse while the model trains or answers). `on_batch(n)` is called after each batch of n rows
    (a progress bar's `update`).  -> N tensors [K_b, hidden]"""
    out: list[torch.Tensor] = []
    for start in range(0, len(contexts), batch_size):
        end = start + batch_size
        out += [v.cpu() for v in extract_activations(model, tokenizer, contexts[start:end], layers[start:end],
                                                     num_positions[start:end], context_format, preprocessing)]
        if on_batch is not None:
            on_batch(len(contexts[start:end]))
    return out


def preprocess_vectors(model: Any, tokenizer: Any, vectors: Sequence[torch.Tensor], layers: Sequence[int],
                       context_format: str, preprocessing: str) -> list[torch.Tensor]:
    """Raw subject vectors (row b [K_b, hidden], read at `layers[b]`) as `preprocessing` gives them to the oracle:
    none -> unchanged; center -> v - subject_means[layer] (in float32, back to v's dtype and device)."""
    if preprocessing not in VECTOR_PREPROCESSING:
        raise ValueError(f"preprocessing must be one of {VECTOR_PREPROCESSING}, got {preprocessing!r}")
    if preprocessing == "none":
        return list(vectors)
    means = subject_means(model, tokenizer, sorted(set(layers)), context_format)
    return [(v.float() - means[layer].to(v.device)).to(v.dtype) for v, layer in zip(vectors, layers, strict=True)]


def subject_means(model: Any, tokenizer: Any, layers: Sequence[int], context_format: str,
                  batch_size: int = 16) -> dict[int, torch.Tensor]:
    """The subject's mean block output per layer: over the last `MEAN_REFERENCE_TOKENS` tokens (fewer for a
    shorter context) of the first `MEAN_REFERENCE_CONTEXTS` contexts of the built-in training data, raw.

    Computed once per (layer, context format) and kept on the model (the subject's weights never change: its
    adapter is off), so every stage and process derives the same vectors.  -> {layer: [hidden] float32, CPU}
    """
    from grpo_ao.data import DataConfig, load_examples

    store = model.__dict__.setdefault(_MEANS_ATTR, {})
    todo = [layer for layer in layers if (layer, context_format) not in store]
    if todo:
        contexts = [ex.context for ex in load_examples(DataConfig(source="builtin"))[:MEAN_REFERENCE_CONTEXTS]]
        # the context's own tokens: a window never reaches into the chat header
        ks = [min(MEAN_REFERENCE_TOKENS, len(tokenizer(c, add_special_tokens=False)["input_ids"])) for c in contexts]
        for layer in todo:
            vecs = extract_in_batches(model, tokenizer, contexts, [layer] * len(contexts), ks, context_format,
                                      batch_size)
            store[(layer, context_format)] = torch.cat([v.float() for v in vecs]).mean(dim=0)
    return {layer: store[(layer, context_format)] for layer in layers}


class Injection:
    """State of one installed injection hook, fixed at construction: `apply` only reads it.

    `calls` (for tests) counts the block outputs `apply` modified; a block that gradient checkpointing
    recomputes during backward may count again.
    """

    def __init__(self, vectors: Sequence[torch.Tensor], positions: Sequence[Sequence[int]], coef: float):
        if len(vectors) != len(positions):
            raise ValueError(f"{len(vectors)} vector sets for {len(positions)} position lists")
        rows, cols, vecs = [], [], []
        for b, (v, pos) in enumerate(zip(vectors, positions, strict=True)):
            if v.ndim != 2 or v.shape[0] != len(pos):
                raise ValueError(f"row {b}: vectors of shape {tuple(v.shape)} for {len(pos)} positions")
            norms = v.float().norm(dim=-1)
            if (norms == 0).any() or not torch.isfinite(norms).all():
                raise ValueError(f"row {b}: a steering vector has zero or non-finite norm; refusing to inject")
            rows += [b] * len(pos)
            cols += list(pos)
            vecs.append(v.float() / norms[:, None])
        self.batch_size = len(vectors)
        self.rows = torch.tensor(rows, dtype=torch.long)  # [N]
        self.cols = torch.tensor(cols, dtype=torch.long)  # [N]
        self.units = torch.cat(vecs).detach()  # [N, hidden], unit norm
        self.max_col = max(cols)
        self.coef = coef
        self.calls = 0

    def apply(self, h: torch.Tensor) -> torch.Tensor:
        """h [B, S, hidden] → h with the norm-matched vectors added at (row, position)."""
        if h.shape[1] <= self.max_col:
            return h  # a cached decode step: the placeholders are not in this forward
        if h.shape[0] != self.batch_size:
            raise ValueError(f"injection prepared for batch {self.batch_size}, forward has batch {h.shape[0]}")
        rows, cols = self.rows.to(h.device), self.cols.to(h.device)
        current = h[rows, cols]  # [N, hidden]
        added = self.coef * current.norm(dim=-1, keepdim=True) * self.units.to(h.device, h.dtype)  # [N, hidden]
        self.calls += 1
        return h.index_put((rows, cols), current + added.detach())


@contextlib.contextmanager
def inject(
    model: Any,
    vectors: Sequence[torch.Tensor],
    positions: Sequence[Sequence[int]],
    layer: int = 1,
    coef: float = 1.0,
) -> Iterator[Injection]:
    """Install the injection hook on decoder block `layer` for the duration of the block.

    A training forward run under this block must also run its `backward()` under it (see the module
    docstring: checkpointed blocks are recomputed in backward, hooks included on transformers < 5.23).

    Args:
        model: the oracle (plain transformers model or peft-wrapped; the adapter stays as it is).
        vectors: one [K_b, hidden] tensor per batch row.
        positions: one list of K_b token indices per batch row (in padded coordinates).
        layer: block whose output is steered (1 for the activation oracles).
        coef: steering coefficient.
    """
    state = Injection(vectors, positions, coef)

    def hook(module, args, output):
        return _replace_block_output(output, state.apply(_block_output(output)))

    # prepend: transformers records output_hidden_states with hooks of its own; ours must run first
    handle = decoder_layers(model)[layer].register_forward_hook(hook, prepend=True)
    try:
        yield state
    finally:
        handle.remove()
