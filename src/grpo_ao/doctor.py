"""`grpo-ao doctor` findings and the arithmetic behind them: parameter counts, a GPU memory estimate, versions.

The arithmetic is pure; the probes at the end read this machine or the network but know nothing of a run config.
The checks that turn a config into findings live in `grpo_ao.recipes.doctor`.

What we deliberately do *not* do: import vLLM (its import starts CUDA and takes seconds; its version comes from
package metadata), download anything to size a model (a hub model's `config.json` is read only when it is
already cached), or measure memory by loading the model. The memory estimate is a rule of thumb for dense
Llama/Qwen-style decoders, good to tell an 80 GiB card from a 24 GiB one, not to the last GiB.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

STATUSES = ("OK", "WARN", "FAIL", "SKIP")
"""A finding's status, from fine to skipped. Any FAIL makes `grpo-ao doctor` exit 1."""

GIB = 1024**3
LORA_TRAIN_BYTES = 16
"""Bytes per trainable LoRA parameter: fp32 weight + fp32 gradient + AdamW's two fp32 moments (4 × 4 B; peft
keeps adapter weights in fp32 on a bf16 base)."""
CHECKPOINT_BYTES = 12
"""Bytes per LoRA parameter in a checkpoint: fp32 adapter weight + AdamW's two fp32 moments."""
ACTIVATION_VALUES_PER_LAYER = 17
"""Hidden-width values a training forward keeps per token per decoder block without gradient checkpointing:
34·s·b·h bytes per layer at 2 bytes a value (Korthikanti et al. 2022, https://arxiv.org/abs/2205.05198, with
fused attention, which drops their 5·a·s/h term)."""
LOGIT_BYTES = 8
"""Bytes per vocabulary entry per token in the training forward: fp32 logits + fp32 log-softmax."""
PROMPT_TOKENS = 256
"""Assumed oracle prompt length (system prompt, layer line, placeholders, question) in tokens."""
CUDA_OVERHEAD_BYTES = 1 * GIB
"""CUDA context, cuBLAS workspaces and allocator fragmentation."""


@dataclass(frozen=True)
class Finding:
    """One line of the doctor's report."""

    check: str
    """What was checked, e.g. `torch` or `gpu memory`."""
    status: str
    """OK | WARN | FAIL | SKIP."""
    detail: str
    """What was found (never a secret's value)."""
    fix: str = ""
    """What to do about a WARN or FAIL (empty when there is nothing to do)."""

    def __post_init__(self) -> None:
        assert self.status in STATUSES, f"unknown status {self.status!r}"


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak GPU memory of a LoRA GRPO run, in bytes, by part. total = weights + lora + max(kv_cache, activations)
    + overhead: sampling (KV cache) and the training forward (activations) do not overlap."""

    weights: int
    lora: int
    kv_cache: int
    activations: int
    overhead: int

    @property
    def total(self) -> int:
        return self.weights + self.lora + max(self.kv_cache, self.activations) + self.overhead


def _dims(hf_config: Mapping[str, object]) -> tuple[int, int, int, int, int, int]:
    """(d, L, f, H, kv, hd) from a transformers config.json: width, blocks, MLP width, heads, KV heads, head dim."""
    d, heads = int(hf_config["hidden_size"]), int(hf_config["num_attention_heads"])
    kv = int(hf_config.get("num_key_value_heads") or heads)
    hd = int(hf_config.get("head_dim") or d // heads)
    return d, int(hf_config["num_hidden_layers"]), int(hf_config["intermediate_size"]), heads, kv, hd


def count_parameters(hf_config: Mapping[str, object]) -> int:
    """Parameters of a dense Llama/Qwen-style decoder (gated MLP, RMSNorm), from its config.json.

    P = L·(attn + mlp + norms) + V·d·(1 if tied else 2) + d, with
    attn = d·H·hd + 2·d·kv·hd + H·hd·d (q, k, v, o; + H·hd + 2·kv·hd biases with `attention_bias` or Qwen2),
    mlp = 3·d·f (gate, up, down), norms = 2·d (+ 2·hd for Qwen3's q/k norms). Exact for Llama, Qwen2 and Qwen3;
    a mixture-of-experts config is undercounted.
    """
    d, layers, f, heads, kv, hd = _dims(hf_config)
    kind = str(hf_config.get("model_type", ""))
    attn = d * heads * hd + 2 * d * kv * hd + heads * hd * d
    if hf_config.get("attention_bias") or kind == "qwen2":
        attn += heads * hd + 2 * kv * hd
    norms = 2 * d + (2 * hd if kind.startswith("qwen3") else 0)
    embeddings = int(hf_config["vocab_size"]) * d * (1 if hf_config.get("tie_word_embeddings") else 2)
    return layers * (attn + 3 * d * f + norms) + embeddings + d


def lora_parameters(hf_config: Mapping[str, object], r: int, target_modules: tuple[str, ...]) -> int:
    """Trainable LoRA parameters: L · Σ_modules r·(in + out). Module names other than the seven linear layers
    of a Llama/Qwen block are not counted."""
    d, layers, f, heads, kv, hd = _dims(hf_config)
    shapes = {"q_proj": (d, heads * hd), "k_proj": (d, kv * hd), "v_proj": (d, kv * hd), "o_proj": (heads * hd, d),
              "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}
    return layers * sum(r * sum(shapes[m]) for m in target_modules if m in shapes)


def estimate_memory(hf_config: Mapping[str, object], bytes_per_param: int, lora_params: int, rollouts: int,
                    micro_batch: int, max_new_tokens: int, gradient_checkpointing: bool) -> MemoryEstimate:
    """Peak GPU memory of GRPO with a LoRA on a frozen base, sequences of T = PROMPT_TOKENS + max_new_tokens.

    weights     = P · b                                    (frozen base, b bytes per value)
    lora        = 16 · P_lora                              (LORA_TRAIN_BYTES)
    kv_cache    = rollouts · T · L · 2 · kv·hd · b          (sampling all of a step's rollouts at once)
    activations = micro_batch · T · (d·b·n + LOGIT_BYTES·V), n = L·17 values per token, or L + 17 with
                  gradient checkpointing (one input kept per block, one block recomputed at a time)

    Args:
        hf_config: the model's config.json.
        bytes_per_param: 4 for float32, 2 for bfloat16 / float16.
        lora_params: trainable LoRA parameters (`lora_parameters`).
        rollouts: sequences sampled together (prompts_per_step · num_generations).
        micro_batch: rollouts per training forward.
        max_new_tokens: completion length cap.
        gradient_checkpointing: whether blocks are recomputed in backward.
    """
    d, layers, _, _, kv, hd = _dims(hf_config)
    tokens = PROMPT_TOKENS + max_new_tokens
    kept = layers + ACTIVATION_VALUES_PER_LAYER if gradient_checkpointing else layers * ACTIVATION_VALUES_PER_LAYER
    per_token = d * bytes_per_param * kept + LOGIT_BYTES * int(hf_config["vocab_size"])
    return MemoryEstimate(
        weights=count_parameters(hf_config) * bytes_per_param,
        lora=LORA_TRAIN_BYTES * lora_params,
        kv_cache=rollouts * tokens * layers * 2 * kv * hd * bytes_per_param,
        activations=micro_batch * tokens * per_token,
        overhead=CUDA_OVERHEAD_BYTES,
    )


def gib(n: float) -> str:
    """Bytes as GiB with one decimal: `gib(3 * 2**30) == '3.0 GiB'`."""
    return f"{n / GIB:.1f} GiB"


def memory_finding(estimate: MemoryEstimate, free: int, total: int, device: str, vllm_share: float = 0.0) -> Finding:
    """Compare the estimate with a GPU's free and total memory, less vLLM's share when it shares the GPU.

    With a vLLM engine on the same GPU (`rollout.vllm_gpu_memory_utilization` = s > 0), vLLM takes s·total for
    its weights and KV cache, so the trainer has (1 − s)·total of the card and free − s·total of what is free
    now. FAIL when the weights and LoRA states alone exceed the trainer's part of the card (certain to fail), WARN
    when the whole estimate exceeds the trainer's part of what is free now (a rule of thumb, or another process
    holds memory), OK otherwise.
    """
    e = estimate
    reserved = int(vllm_share * total)  # vLLM's weights + KV cache
    card, room = total - reserved, free - reserved
    parts = (f"need ≈ {gib(e.total)} (weights {gib(e.weights)}, LoRA+AdamW {gib(e.lora)}, "
             f"max(KV cache {gib(e.kv_cache)}, activations {gib(e.activations)}), CUDA {gib(e.overhead)}); "
             f"{device}: {gib(free)} free of {gib(total)}")
    if vllm_share:
        parts += (f"; vLLM takes rollout.vllm_gpu_memory_utilization={vllm_share:g} of it ({gib(reserved)}), the "
                  f"trainer gets the other {1 - vllm_share:.0%}: {gib(max(room, 0))} free of {gib(card)}")
    share_fix = ", or a lower rollout.vllm_gpu_memory_utilization" if vllm_share else ""
    if e.weights + e.lora > card:
        return Finding("gpu memory", "FAIL", parts, "the weights alone do not fit this GPU: use a GPU with more "
                       f"memory, model.dtype=bfloat16, a smaller lora.r, or shard the model across GPUs (FSDP)"
                       f"{share_fix}.")
    if e.total > room:
        return Finding("gpu memory", "WARN", parts, "lower grpo.micro_batch_size or sampling.max_new_tokens, turn on "
                       "grpo.gradient_checkpointing if it is off, or free the GPU (nvidia-smi shows who holds it)"
                       f"{share_fix}.")
    return Finding("gpu memory", "OK", parts)


def version_finding(name: str, installed: str | None, specifier: str | None, install_hint: str) -> Finding:
    """One package against the version range grpo-ao declares (`specifier`, e.g. ">=5.2.0,<6"; None = any).

    >>> version_finding("peft", "0.18.0", ">=0.17", "pip install -e .").status
    'OK'
    >>> version_finding("transformers", "4.57.1", ">=5.2.0,<6", "pip install -e .").status
    'FAIL'
    """
    from packaging.specifiers import SpecifierSet

    needs = f" (needs {specifier})" if specifier else ""
    if installed is None:
        return Finding(name, "FAIL", f"not installed{needs}", install_hint)
    if specifier and installed not in SpecifierSet(specifier, prereleases=True):
        return Finding(name, "FAIL", f"{installed}{needs}", f'pip install "{name}{specifier}"')
    return Finding(name, "OK", f"{installed}{needs}")


def render(findings: list[Finding], title: str) -> str:
    """The report: a title, one line per finding (its fix indented below it) and the count per status."""
    width = max((len(f.check) for f in findings), default=0)
    lines = [title]
    for f in findings:
        lines.append(f"{f.status:<5} {f.check:<{width}}  {f.detail}")
        if f.fix:
            lines.append(f"{'':<{width + 8}}fix: {f.fix}")
    counts = ", ".join(f"{sum(f.status == s for f in findings)} {s}" for s in STATUSES)
    return "\n".join([*lines, counts])


def exit_code(findings: list[Finding]) -> int:
    """1 when any finding failed, else 0 (WARN and SKIP do not fail the doctor)."""
    return int(any(f.status == "FAIL" for f in findings))


# ---------------------------------------------------------------------------- probes: this machine, the network

def requirements() -> dict[str, str]:
    """grpo-ao's declared ranges, {name: specifier}: "python" and every dependency outside the extras; {} when
    grpo-ao is not installed."""
    from packaging.requirements import Requirement

    try:
        declared = metadata.requires("grpo-ao") or []
        python = metadata.metadata("grpo-ao")["Requires-Python"]
    except metadata.PackageNotFoundError:
        return {}
    reqs = [Requirement(r) for r in declared]
    return {"python": python or "", **{r.name.lower(): str(r.specifier) for r in reqs if r.marker is None}}


def installed_version(name: str) -> str | None:
    """The installed version of distribution `name` from its metadata (nothing is imported), or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def existing_parent(path: Path) -> Path:
    """`path` or its nearest ancestor that exists (where a file under `path` would land)."""
    path = path.expanduser().absolute()
    while not path.exists():
        path = path.parent
    return path


def hub_cached(repo: str, filename: str) -> str | None:
    """Local path of `repo`/`filename` in the Hugging Face cache, or None (never downloads)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo, filename)
    except ValueError:  # not a valid repo id
        return None
    return found if isinstance(found, str) else None


def probe_hub(repo: str, filename: str, timeout_s: float) -> str | None:
    """None when the hub serves `repo`/`filename`, else why not."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    try:
        get_hf_file_metadata(hf_hub_url(repo, filename), timeout=timeout_s)
    except Exception as e:  # noqa: BLE001 - every failure (missing, gated, offline, timeout) is the finding
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def writable(path: Path) -> bool:
    """Whether a file or directory could be created at `path`."""
    return os.access(existing_parent(path), os.W_OK)


def http_status(url: str, headers: dict[str, str], timeout_s: float) -> int | str:
    """The HTTP status of GET `url` (an error status too), or why no answer came (refused, DNS, timeout)."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            return reply.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError) as e:
        return str(getattr(e, "reason", e))
