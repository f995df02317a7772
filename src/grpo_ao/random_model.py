"""`model.source: random`: a shipped architecture with random weights and the offline tokenizer, no download.

The weights are created directly on the target device in the target dtype (an 8B model never passes through
CPU memory or fp32) and initialised by the architecture's own `_init_weights` (normal, std initializer_range),
seeded by `model.seed`. The tokenizer is the tiny source's (`models.build_tiny_tokenizer`): its ids all lie below
the architecture's vocabulary, and the architecture's token ids (bos/eos/pad) are replaced by the tokenizer's, so
generation stops on the tokenizer's own end-of-turn. A random model samples ids anywhere in its vocabulary; ids
the tokenizer does not know decode to nothing, which is fine for what this source is for (speed, memory and
plumbing checks at a real shape), never for quality.
"""

from __future__ import annotations

from typing import Any

import torch

from grpo_ao.errors import GrpoAoError
from grpo_ao.models import (
    DTYPES,
    RANDOM_MARKER,
    build_tiny_tokenizer,
    random_architecture_config,
    random_architectures,
)

# keys of a hub config.json that describe the file, not the architecture
_FILE_KEYS = ("architectures", "torch_dtype", "dtype", "transformers_version", "_name_or_path")


def architecture_config(name: str, tokenizer: Any) -> Any:
    """The transformers config of shipped architecture `name`, with the tokenizer's special-token ids.

    Raises:
        GrpoAoError: an unknown name, or a vocabulary smaller than the tokenizer.
    """
    from transformers import AutoConfig

    if name not in random_architectures():
        raise GrpoAoError(f"model.random_architecture={name!r} is not shipped; use one of "
                          f"{', '.join(random_architectures())}.")
    values = {k: v for k, v in random_architecture_config(name).items() if k not in _FILE_KEYS}
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    if config.vocab_size < len(tokenizer):
        raise GrpoAoError(f"model.random_architecture={name!r} has a vocabulary of {config.vocab_size}, smaller than "
                          f"the offline tokenizer's {len(tokenizer)} tokens.")
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.bos_token_id = None
    setattr(config, RANDOM_MARKER, name)
    return config


def build_random_model(name: str, device: torch.device, dtype: str, seed: int,
                       attn_implementation: str | None = "sdpa") -> tuple[Any, Any]:
    """(model, tokenizer): architecture `name` with random weights on `device` in `dtype`, eval mode.

    `device` may be `meta` (shapes and parameter counts without memory).
    """
    from transformers import AutoModelForCausalLM, GenerationConfig

    tokenizer = build_tiny_tokenizer()
    config = architecture_config(name, tokenizer)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.device(device):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype], **kwargs)
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id], pad_token_id=tokenizer.pad_token_id
    )
    model.eval()
    return model, tokenizer
