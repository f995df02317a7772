"""What the vLLM engine loads from the trainer's model: the base checkpoint once, the policy after every step.

- `save_for_vllm`: the base weights (the LoRA adapter NOT merged) and the tokenizer, in Hugging Face format.
- `merged_weights`: every base weight, and for each LoRA-adapted linear layer W = W_base + ΔW with ΔW = scaling·B@A as peft
  computes it (`get_delta_weight`: rsLoRA and fan-in/fan-out included), named as in the base checkpoint, for
  vLLM's in-place `reload_weights` (TRL's colocate sync). All weights, not only the adapted ones: vLLM's CPU
  linear layers repack their weights after loading, and a reload re-processes whole layers. Always from the
  frozen base weights: syncing twice never adds a delta twice.

No vLLM import here: this runs in the trainer's process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

BASE_LAYER = ".base_layer"


def base_model_of(model: Any) -> Any:
    """The transformers model under a peft wrapper (with its LoRA layers still inserted), or `model`."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def base_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The base model's weights under their plain checkpoint names: LoRA tensors dropped,
    `x.base_layer.weight` renamed `x.weight`."""
    out = {}
    for name, tensor in base_model_of(model).state_dict().items():
        if ".lora_" in name or "lora_embedding" in name:
            continue
        out[name.replace(BASE_LAYER + ".", ".")] = tensor
    return out


def save_for_vllm(model: Any, tokenizer: Any, out_dir: str | Path) -> Path:
    """Write the base weights (adapter NOT merged), config, generation config and tokenizer to `out_dir`.

    Args:
        model: a transformers causal LM or a peft model around one.
        tokenizer: its tokenizer.
        out_dir: the checkpoint directory vLLM loads (created).

    Returns:
        out_dir as a Path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = base_model_of(model)
    base.save_pretrained(out, state_dict=base_state_dict(model))
    tokenizer.save_pretrained(out)
    return out


def _lora_modules(model: Any) -> Iterator[tuple[str, Any]]:
    from peft.tuners.lora import LoraLayer

    for name, module in base_model_of(model).named_modules():
        if isinstance(module, LoraLayer) and hasattr(module, "base_layer"):
            yield name, module


def lora_delta(name: str, module: Any) -> torch.Tensor:
    """ΔW of one adapted linear layer `name`: the sum over its active adapters, fp32.  -> [out, in]"""
    if module.merged:
        raise ValueError(f"{name}: the adapter is merged into the base weights; unmerge it before syncing")
    active = [] if module.disable_adapters else [a for a in module.active_adapters if a in module.lora_A]
    weight = module.base_layer.weight
    delta = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)  # [out, in]
    for adapter in active:
        delta += module.get_delta_weight(adapter).float()
    return delta


@torch.no_grad()
def merged_weights(model: Any, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """Every base weight under its checkpoint name, in `dtype`; an adapted linear layer's as W_base + ΔW, summed
    in fp32, one layer at a time (an 8B model's deltas never all exist at once)."""
    adapted = {f"{name}.weight": (name, module) for name, module in _lora_modules(model)}
    for key, weight in base_state_dict(model).items():
        if key in adapted:
            weight = weight.float() + lora_delta(*adapted[key])
        yield key, weight.to(dtype)


def save_adapter(model: Any, out_dir: str | Path) -> Path:
    """The peft adapter as `adapter_config.json` + safetensors (what a vLLM `LoRARequest` loads)."""
    out = Path(out_dir)
    model.save_pretrained(out)
    return out
