"""Rollouts: subject activations → oracle prompts → G sampled completions per prompt, with injection.

Steps for a batch of B tasks (see `generate_rollouts`):
  1. extract subject activations once per task (adapter off, eval, no grad);
  2. render each oracle prompt once and locate its placeholders by token id;
  3. sample G completions per prompt (adapter on, eval mode: no LoRA dropout while sampling): each
     distinct prompt is prefilled once with the injection hook on block `spec.injection_layer`, its KV
     cache repeated G times, and generate() decodes from it with no hook (the injection acts on the
     prefill only); the sampler's log-probabilities of the sampled ids come back with them;
  4. keep the sampled ids and a completion mask. A completion cut at max_new_tokens is marked
     truncated and gets no end-of-turn token. Decode the text for parsing and the judge.

`injected_logprobs` recomputes log-probabilities of the sampled ids in batched training forwards, with the
same injection, at the sampling temperature: each distinct prompt of a micro-batch once, with gradient, and its
rows' completions on its KV cache (as the sampler shares its prefill); under gradient checkpointing in train mode
(which drops the cache) one padded forward of prompt + completion per row, the injection hook installed until
the caller's backward has run inside its `with` block (checkpointing replays the hooked block in backward; see
`grpo_ao.steering`). `completion_logprobs` is its no-grad form (old and
reference logprobs, eval). We never re-tokenize decoded text.

How the oracle is prompted and steered travels as one `OracleSpec` (built from the run config by
`recipes.setup.oracle_spec`), a keyword-only `spec=` everywhere; no function here has a default for it, so
nothing can shadow the config's values.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from grpo_ao.errors import require
from grpo_ao.format import left_pad, render_oracle_prompt
from grpo_ao.models import decoder_layers, num_layers
from grpo_ao.steering import extract_activations, inject, layer_for_percent

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class SamplingConfig:
    """Rollout sampling; every parameter explicit. Logprobs for the loss use the same temperature."""

    num_generations: int = 8
    """G, completions per prompt."""
    temperature: float = 1.0
    """Sampling temperature (> 0)."""
    top_p: float = 1.0
    """Nucleus sampling mass; 1.0 turns it off."""
    top_k: int = 0
    """Top-k sampling; 0 turns it off."""
    max_new_tokens: int = 64
    """Completion length cap; also the constant in the Dr. GRPO normaliser."""
    min_new_tokens: int = 0
    """End-of-turn suppressed before this many new tokens (forced-length benchmarks: `grpo-ao bench`); 0 = off."""
    greedy: bool = False
    """Greedy decoding instead of sampling (eval, SFT targets); temperature, top_p and top_k are then unused."""

    def __post_init__(self) -> None:
        require(self.num_generations >= 1, f"sampling.num_generations={self.num_generations} must be >= 1.")
        require(self.temperature > 0, f"sampling.temperature={self.temperature} must be > 0 (use a small value, not 0).")
        require(0 < self.top_p <= 1, f"sampling.top_p={self.top_p} must be in (0, 1].")
        require(self.max_new_tokens >= 1, f"sampling.max_new_tokens={self.max_new_tokens} must be >= 1.")
        require(0 <= self.min_new_tokens <= self.max_new_tokens,
                f"sampling.min_new_tokens={self.min_new_tokens} must be in [0, max_new_tokens={self.max_new_tokens}].")


@dataclass(frozen=True)
class OracleSpec:
    """How the oracle is prompted and steered: the same six values in every stage that prompts it."""

    system_prompt: str | None
    """The system prompt text, or None when the oracle gets none."""
    mode: str
    """Where the system prompt goes: none | merged | system_role (`format.render_oracle_prompt`)."""
    context_format: str
    """How the subject reads its context before extraction: chat (a user turn) | raw."""
    injection_layer: int
    """Oracle decoder block whose output receives the activations."""
    coef: float
    """Steering coefficient c in h' = h + c·||h||·v/||v||."""
    vector_preprocessing: str = "none"
    """What extraction does to the subject vectors: none | center (`steering.extract_activations`)."""

    def without_system_prompt(self) -> OracleSpec:
        """The base-oracle layout (no system prompt), same context format and steering."""
        return replace(self, system_prompt=None, mode="none")


@dataclass(frozen=True)
class OracleInputs:
    """Prompts and subject vectors for B tasks, left-padded, one row per task."""

    prompt_ids: torch.Tensor  # [B, P]
    prompt_mask: torch.Tensor  # [B, P]
    positions: list[list[int]]  # B lists of K_b indices
    vectors: list[torch.Tensor]  # B tensors [K_b, hidden]
    layers: list[int]  # B subject layers


@dataclass(frozen=True)
class Rollouts:
    """N = B·G completions; row i belongs to prompt i // G."""

    prompt_ids: torch.Tensor  # [N, P]
    prompt_mask: torch.Tensor  # [N, P]
    positions: list[list[int]]  # N
    vectors: list[torch.Tensor]  # N
    completion_ids: torch.Tensor  # [N, T]
    completion_mask: torch.Tensor  # [N, T], 1 on sampled tokens up to and including end-of-turn
    truncated: torch.Tensor  # [N] bool: hit max_new_tokens without end-of-turn
    texts: list[str]  # N decoded completions
    num_generations: int
    sampling_logprobs: torch.Tensor | None = None  # [N, T] the sampler's log π(sampled id) at the temperature, if known

    @property
    def lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(dim=1)  # [N]

    def select(self, idx: Sequence[int]) -> Rollouts:
        """The rollouts at `idx` (a micro-batch)."""
        t = torch.tensor(list(idx), dtype=torch.long)
        return Rollouts(
            prompt_ids=self.prompt_ids[t], prompt_mask=self.prompt_mask[t],
            positions=[self.positions[i] for i in idx], vectors=[self.vectors[i] for i in idx],
            completion_ids=self.completion_ids[t], completion_mask=self.completion_mask[t],
            truncated=self.truncated[t], texts=[self.texts[i] for i in idx],
            num_generations=self.num_generations,
            sampling_logprobs=None if self.sampling_logprobs is None else self.sampling_logprobs[t],
        )


def build_oracle_inputs(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[Any],
    *,
    spec: OracleSpec,
) -> OracleInputs:
    """Steps 1–2: subject activations (adapter off) and rendered oracle prompts for B tasks.

    Each task needs `.context`, `.question`, `.layer_percent` and `.num_positions`. Uses the spec's
    context format and vector preprocessing (extraction), system prompt and mode (prompt); not its injection
    layer or coef.
    """
    layers = subject_layers(model, tasks)
    vectors = extract_activations(model, tokenizer, [t.context for t in tasks], layers,
                                  [t.num_positions for t in tasks], spec.context_format, spec.vector_preprocessing)
    return oracle_inputs(tokenizer, tasks, layers, vectors, spec=spec)


def subject_layers(model: Any, tasks: Sequence[Any]) -> list[int]:
    """Step 1's layer per task: the subject block at `task.layer_percent` of the model's depth."""
    return [layer_for_percent(num_layers(model), t.layer_percent) for t in tasks]


def oracle_inputs(tokenizer: Any, tasks: Sequence[Any], layers: Sequence[int], vectors: Sequence[torch.Tensor], *,
                  spec: OracleSpec) -> OracleInputs:
    """Step 2: each task's oracle prompt (`layers[b]`, K = `task.num_positions`, the spec's system prompt and
    mode) rendered and left-padded, with the given subject vectors (B tensors [K_b, hidden])."""
    prompts = [render_oracle_prompt(tokenizer, t.question, layer, t.num_positions, spec.system_prompt, mode=spec.mode)
               for t, layer in zip(tasks, layers, strict=True)]
    prompt_ids, prompt_mask, positions = left_pad(prompts, tokenizer.pad_token_id)  # [B, P], [B, P], B lists
    return OracleInputs(prompt_ids, prompt_mask, positions, list(vectors), list(layers))


def forced_completions(prompts: OracleInputs | Rollouts, rows: Sequence[int], completions: Sequence[Sequence[int]],
                       pad_id: int, num_generations: int = 1) -> Rollouts:
    """Prompt rows `rows` of `prompts` (their ids, injection positions and vectors), the n-th teacher-forced with
    `completions[n]` (right-padded): what a scoring forward (`completion_logprobs`, `injected_logprobs`) reads when
    nothing is sampled (the tag candidates, the anchors, the probes).  -> N = len(rows) rows"""
    idx = torch.tensor(list(rows), dtype=torch.long)
    ids, mask = right_pad(completions, pad_id)  # [N, T], [N, T]
    return Rollouts(prompts.prompt_ids[idx], prompts.prompt_mask[idx], [prompts.positions[i] for i in rows],
                    [prompts.vectors[i] for i in rows], ids, mask, torch.zeros(len(rows), dtype=torch.bool),
                    [""] * len(rows), num_generations)


def right_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists right-padded to the longest: ids and a mask of the real tokens.  -> [N, T], [N, T] (long)

    >>> right_pad([[5, 6], [7]], 0)
    (tensor([[5, 6],
            [7, 0]]), tensor([[1, 1],
            [1, 0]]))
    """
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [N, T]
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # [N, T]
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


def teacher_forcing_rollouts(prompts: Sequence[Any], targets: Sequence[Sequence[int]], vectors: Sequence[torch.Tensor],
                             texts: Sequence[str], pad_id: int) -> Rollouts:
    """A batch for a teacher-forced loss (format SFT, AO pretraining): the rendered `OraclePrompt`s left-padded,
    each row's target ids (end-of-turn included when the caller wants one) right-padded, G = 1.

    Returns Rollouts with completion_ids / completion_mask [N, T], T = the longest target.
    """
    prompt_ids, prompt_mask, positions = left_pad(list(prompts), pad_id)  # [N, P], [N, P]
    completion_ids, completion_mask = right_pad(targets, pad_id)  # [N, T], [N, T]
    return Rollouts(prompt_ids, prompt_mask, positions, list(vectors), completion_ids, completion_mask,
                    torch.zeros(len(targets), dtype=torch.bool), list(texts), 1)


def end_of_turn_ids(model: Any, tokenizer: Any) -> list[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    ids.add(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    return sorted(i for i in ids if i is not None and i >= 0)


def completion_mask_for(completion_ids: torch.Tensor, eos_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask up to and including the first end-of-turn token; rows without one are truncated.

    Returns completion_mask [N, T] (long) and truncated [N] (bool).
    """
    is_eos = torch.isin(completion_ids, torch.tensor(list(eos_ids), device=completion_ids.device))  # [N, T]
    seen_before = is_eos.long().cumsum(dim=1) - is_eos.long()  # [N, T]: end-of-turns strictly before t
    mask = (seen_before == 0).long()  # [N, T]
    truncated = ~is_eos.any(dim=1)  # [N]
    return mask, truncated


def _cache_kwarg(model: Any) -> str:
    """The KV cache's argument and output name: `cache` on newer transformers, `past_key_values` on the floor."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _prefill_cache(model: Any, inputs: OracleInputs, g: int, *, spec: OracleSpec) -> Any:
    """Step 3a: the KV cache of prompt_ids[:, :-1] for the B distinct prompts, injected, repeated G times.

    The placeholders never sit on the last prompt token, so generate() runs that token and every decode
    step without a hook, as the hook itself does on the one-call path (`Injection.apply` skips a forward
    that does not reach its positions). -> cache of B·G rows, P-1 positions
    """
    p = inputs.prompt_ids.shape[1]
    assert max(max(pos) for pos in inputs.positions) < p - 1, "a placeholder is the last prompt token"
    device = next(model.parameters()).device
    ids = inputs.prompt_ids[:, :-1].to(device)  # [B, P-1]
    mask = inputs.prompt_mask[:, :-1].to(device)  # [B, P-1]
    # the position ids generate() derives from a left-padded mask
    position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)  # [B, P-1]
    with inject(model, inputs.vectors, inputs.positions, spec.injection_layer, spec.coef):
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=True, logits_to_keep=1)
    cache = getattr(out, _cache_kwarg(model))
    cache.batch_repeat_interleave(g)  # in place: row b → rows b·G .. b·G+G-1, as repeat_interleave on the prompts
    return cache


class _SampledLogprobs:
    """Forward hook on the causal LM during generate(): log softmax(logits / T) of each sampled token.

    Step t's distribution waits until step t+1's forward, whose input id is the token sampled from it; only
    one step's [N, V] is held (generate's `output_logits` would hold all T of them).
    """

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature
        self.pending: torch.Tensor | None = None  # [N, V] the last step's log-probabilities
        self.steps: list[torch.Tensor] = []  # T' - 1 tensors [N]

    def hook(self, module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        if self.pending is not None:
            self.steps.append(self.pending.gather(-1, kwargs["input_ids"][:, -1:])[:, 0])  # [N]
        # float32 as generate() samples from: the same quantity `completion_logprobs` computes
        self.pending = torch.log_softmax(output.logits[:, -1].float() / self.temperature, dim=-1)  # [N, V]

    def logprobs(self, completion_ids: torch.Tensor) -> torch.Tensor:
        """completion_ids [N, T'] as generate() returned them -> [N, T'] log-probabilities."""
        assert self.pending is not None and len(self.steps) == completion_ids.shape[1] - 1, "one forward per token"
        last = self.pending.gather(-1, completion_ids[:, -1:].to(self.pending.device))[:, 0]  # [N]
        return torch.stack([*self.steps, last], dim=1)  # [N, T']


def generate_rollouts(model: Any, tokenizer: Any, inputs: OracleInputs, sampling: SamplingConfig, *,
                      spec: OracleSpec) -> Rollouts:
    """Steps 3–4: G completions per prompt, sampled with injection (`spec.injection_layer`, `spec.coef`)
    in eval mode, and the sampler's log-probabilities of the sampled ids.

      3a. prefill the B distinct prompts once with the injection hook, all but their last token;
          repeat the KV cache G times (B rows of prefill, not B·G). G = 1 skips 3a: generate() runs its
          own prefill under the hook, one forward fewer, the same steering;
      3b. generate() from that cache with no hook installed: the last prompt token, then T decode steps;
          a forward hook keeps log softmax(logits / T) of each sampled token (T = 1 when greedy);
      4.  fix the completion width to max_new_tokens, mask after the first end-of-turn, decode the text.
    """
    g = sampling.num_generations
    device = next(model.parameters()).device
    prompt_ids = inputs.prompt_ids.repeat_interleave(g, dim=0)  # [N, P]
    prompt_mask = inputs.prompt_mask.repeat_interleave(g, dim=0)  # [N, P]
    eos_ids = end_of_turn_ids(model, tokenizer)
    kwargs: dict[str, Any] = {"do_sample": False} if sampling.greedy else {
        "do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k,
    }
    recorder = _SampledLogprobs(1.0 if sampling.greedy else sampling.temperature)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    was_training = model.training
    model.eval()  # no LoRA dropout while sampling
    try:
        with torch.no_grad():
            if g == 1:  # nothing to share: one call, the hook steering generate's own prefill (a split is ~4 % slower)
                steer, cache = inject(model, inputs.vectors, inputs.positions, spec.injection_layer, spec.coef), {}
            else:  # 3a.
                steer, cache = contextlib.nullcontext(), {_cache_kwarg(model): _prefill_cache(model, inputs, g, spec=spec)}
            handle = base.register_forward_hook(recorder.hook, with_kwargs=True)
            try:  # 3b.
                with steer:
                    out = model.generate(
                        input_ids=prompt_ids.to(device), attention_mask=prompt_mask.to(device),
                        max_new_tokens=sampling.max_new_tokens, min_new_tokens=sampling.min_new_tokens,
                        eos_token_id=eos_ids,
                        pad_token_id=tokenizer.pad_token_id, **cache, **kwargs,
                    )
            finally:
                handle.remove()
    finally:
        model.train(was_training)
    completion_ids = out[:, prompt_ids.shape[1]:].cpu()  # [N, T'] 4.
    logprobs = recorder.logprobs(completion_ids).cpu()  # [N, T']
    pad = sampling.max_new_tokens - completion_ids.shape[1]
    if pad:  # generate stops early when every row finished; keep T fixed
        completion_ids = torch.nn.functional.pad(completion_ids, (0, pad), value=tokenizer.pad_token_id)
        logprobs = torch.nn.functional.pad(logprobs, (0, pad))
    completion_mask, truncated = completion_mask_for(completion_ids, eos_ids)
    completion_ids = completion_ids.masked_fill(completion_mask == 0, tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    return Rollouts(prompt_ids, prompt_mask, [p for p in inputs.positions for _ in range(g)],
                    [v for v in inputs.vectors for _ in range(g)], completion_ids, completion_mask, truncated, texts, g,
                    sampling_logprobs=logprobs.masked_fill(completion_mask == 0, 0.0))


def answer_in_batches(model: Any, tokenizer: Any, tasks: Sequence[Any], sampling: SamplingConfig, batch_size: int,
                      *, spec: OracleSpec) -> Iterator[tuple[Sequence[Any], OracleInputs, Rollouts]]:
    """Steps 1–4 for many tasks, `batch_size` tasks at a time: yields (tasks, inputs, rollouts) per batch."""
    for start in range(0, len(tasks), batch_size):
        chunk = tasks[start:start + batch_size]
        inputs = build_oracle_inputs(model, tokenizer, chunk, spec=spec)
        yield chunk, inputs, generate_rollouts(model, tokenizer, inputs, sampling, spec=spec)


@dataclass(frozen=True)
class PromptGroups:
    """The distinct prompts of a batch: consecutive rows with the same prompt ids, mask, placeholders and vectors."""

    first: list[int]  # B' rows, the first row of each distinct prompt
    inverse: torch.Tensor  # [n] long: row i's prompt is `first[inverse[i]]`

    @property
    def shared(self) -> bool:
        """Some prompt has more than one row (so a shared prefix saves work)."""
        return len(self.first) < len(self.inverse)


def prompt_groups(rollouts: Rollouts) -> PromptGroups:
    """Group consecutive rows of `rollouts` that read the same prompt with the same injection."""
    first, inverse = [], []
    for i in range(len(rollouts.positions)):
        j = first[-1] if first else -1
        same = j >= 0 and rollouts.positions[i] == rollouts.positions[j] and (
            rollouts.vectors[i] is rollouts.vectors[j] or torch.equal(rollouts.vectors[i], rollouts.vectors[j])
        ) and torch.equal(rollouts.prompt_ids[i], rollouts.prompt_ids[j]) and torch.equal(
            rollouts.prompt_mask[i], rollouts.prompt_mask[j])
        if not same:
            first.append(i)
        inverse.append(len(first) - 1)
    return PromptGroups(first, torch.tensor(inverse, dtype=torch.long))


def group_micro_batches(rows: Sequence[int], num_generations: int, size: int) -> list[list[int]]:
    """`rows` (ascending indices of rollouts whose row i belongs to prompt i // G) in micro-batches of at most `size`
    rows, each prompt's rows in one micro-batch; a prompt with more than `size` rows is cut into pieces of `size`.

    >>> group_micro_batches([0, 1, 2, 4, 5, 6, 7], num_generations=4, size=4)
    [[0, 1, 2], [4, 5, 6, 7]]
    """
    batches, current = [], []
    for _, group in itertools.groupby(rows, key=lambda i: i // num_generations):
        group = list(group)
        if current and len(current) + len(group) > size:
            batches.append(current)
            current = []
        while len(group) > size:  # current is empty here
            batches.append(group[:size])
            group = group[size:]
        current += group
    if current:
        batches.append(current)
    return batches


def _checkpointing_drops_cache(model: Any) -> bool:
    """Gradient checkpointing makes the decoder layers drop the KV cache: in train mode (transformers 5.23+ only
    with grad enabled, 5.0–5.22 without as well; both count here)."""
    return model.training and any(getattr(layer, "gradient_checkpointing", False) for layer in decoder_layers(model))


@functools.cache
def _warn_once(message: str) -> None:
    logger.warning(message)


def _expand_cache(cache: Any, inverse: torch.Tensor) -> None:
    """Row i of every layer's keys and values becomes row `inverse[i]` ([B', H, P, D] -> [n, H, P, D]), in place.

    `index_select`, whose backward sums the n rows' gradients in a fixed order, and not the cache's own
    `batch_select_indices`: its advanced indexing backpropagates through `index_put_(accumulate=True)`, whose CPU
    kernel adds with float atomics across threads, so the LoRA gradient changed in the last bits from run to run
    (4.8e-7 on the tiny Qwen3 of tests/test_grpo_recipe.py, 2 threads)."""
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(0, inverse)
        layer.values = layer.values.index_select(0, inverse)


def _prefix_shared_logprobs(model: Any, rollouts: Rollouts, groups: PromptGroups, temperature: float, *,
                            spec: OracleSpec) -> torch.Tensor:
    """The training forward with each distinct prompt computed once: B' prompt rows, then n completion rows.

      1. the B' distinct prompts [B', P], injected, with gradient: their KV cache and the logits of the last
         prompt token (which predict completion token 0);
      2. the cache indexed to the n rows (`inverse`, `_expand_cache`): index_select, whose backward sums the n
         rows' gradients into their prompt's keys and values;
      3. completion tokens 0..T-2 [n, T-1] on that cache, hook removed (it acts on prompt positions only),
         attention mask = prompt mask ++ completion mask, position ids as the one-forward path derives them.
    Tokens: B'·P + n·(T-1) instead of n·(P+T).  -> logprobs [n, T]
    """
    from grpo_ao.loss import token_logprobs

    device = next(model.parameters()).device
    kw = _cache_kwarg(model)
    first, inverse = torch.tensor(groups.first), groups.inverse.to(device)
    p, t = rollouts.prompt_ids.shape[1], rollouts.completion_ids.shape[1]
    prompt_ids = rollouts.prompt_ids[first].to(device)  # [B', P]
    prompt_mask = rollouts.prompt_mask[first].to(device)  # [B', P]
    completion_ids = rollouts.completion_ids.to(device)  # [n, T]
    with inject(model, [rollouts.vectors[i] for i in groups.first], [rollouts.positions[i] for i in groups.first],
                spec.injection_layer, spec.coef):  # 1.
        out = model(input_ids=prompt_ids, attention_mask=prompt_mask,
                    position_ids=(prompt_mask.cumsum(dim=1) - 1).clamp(min=0), use_cache=True, logits_to_keep=1)
    head = token_logprobs(out.logits.index_select(0, inverse), completion_ids[:, :1], temperature)  # [n, 1]
    if t == 1:
        return head
    cache = getattr(out, kw)
    _expand_cache(cache, inverse)  # 2. B' rows -> n rows
    mask = torch.cat([prompt_mask[inverse], rollouts.completion_mask.to(device)], dim=1)  # [n, P+T]
    position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)[:, p:-1]  # [n, T-1]
    logits = model(input_ids=completion_ids[:, :-1], attention_mask=mask[:, :-1], position_ids=position_ids,
                   use_cache=True, **{kw: cache}).logits  # 3. [n, T-1, V]
    assert cache.get_seq_length() == p + t - 1, "the completion forward did not read the prompt's KV cache"
    return torch.cat([head, token_logprobs(logits, completion_ids[:, 1:], temperature)], dim=1)  # [n, T]


@contextlib.contextmanager
def injected_logprobs(model: Any, rollouts: Rollouts, temperature: float, *, spec: OracleSpec,
                      prefix_shared: bool = True) -> Iterator[torch.Tensor]:
    """log π(sampled id) at the sampling temperature with the same injection, yielded while the injection hook
    is still installed. Run the backward inside the block:

        with injected_logprobs(model, mb, temperature, spec=spec) as logprobs:  # [n, T]
            loss, st = policy_loss(logprobs, ...)
            loss.backward()

    Two forms, equal logprobs and gradients (tests/test_prefix_shared.py):
      - prefix-shared (`prefix_shared`, when consecutive rows share a prompt: `prompt_groups`): each distinct
        prompt runs once with the injection and its KV cache serves all of its rows (`_prefix_shared_logprobs`);
      - one padded forward of prompt + completion per row, the injection hook installed until the block ends.
    Gradient checkpointing drops the KV cache in train mode, so the one-forward form runs then (logged once).

    Args:
        model: the oracle (adapter on; train mode for a loss, eval mode for fixed logprobs).
        rollouts: n rows, prompt [n, P] and completion [n, T] ids with their masks.
        temperature: the sampling temperature; logits are divided by it.
        spec: the oracle spec; only `injection_layer` (block steered at the placeholders) and `coef` are used.
        prefix_shared: allow the prefix-shared form (the GRPO recipe passes `grpo.prefix_shared_forward`).

    Yields:
        logprobs [n, T]; entries outside the completion mask are meaningless (mask them).
    """
    from grpo_ao.loss import token_logprobs

    groups = prompt_groups(rollouts) if prefix_shared else None
    if groups is not None and groups.shared and _checkpointing_drops_cache(model):
        _warn_once("gradient checkpointing drops the KV cache in train mode: the training forward runs prompt + "
                   "completion for every rollout (grpo.prefix_shared_forward has no effect while it is on)")
        groups = None
    if groups is not None and groups.shared:
        yield _prefix_shared_logprobs(model, rollouts, groups, temperature, spec=spec)  # [n, T]
        return
    device = next(model.parameters()).device
    ids = torch.cat([rollouts.prompt_ids, rollouts.completion_ids], dim=1).to(device)  # [n, P+T]
    mask = torch.cat([rollouts.prompt_mask, rollouts.completion_mask], dim=1).to(device)  # [n, P+T]
    # the same position ids generate() derives from a left-padded mask
    position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)  # [n, P+T]
    t = rollouts.completion_ids.shape[1]
    with inject(model, rollouts.vectors, rollouts.positions, spec.injection_layer, spec.coef):
        # use_cache=False: a training forward needs no KV cache
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False,
                       logits_to_keep=t + 1).logits  # [n, T+1, V]
        yield token_logprobs(logits[:, :-1], rollouts.completion_ids.to(device), temperature)  # [n, T]


def completion_logprobs(model: Any, rollouts: Rollouts, temperature: float, *, spec: OracleSpec,
                        prefix_shared: bool = True) -> torch.Tensor:
    """`injected_logprobs` without gradient (old/reference logprobs, eval): [n, T], masked entries meaningless.

    Always no-grad: a loss needs its backward under the hook, so it uses `injected_logprobs`.
    """
    with torch.no_grad(), injected_logprobs(model, rollouts, temperature, spec=spec,
                                            prefix_shared=prefix_shared) as logprobs:
        return logprobs  # [n, T]
