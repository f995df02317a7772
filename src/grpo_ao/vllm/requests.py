"""What one vLLM request carries and what one completion means: the token prompt with its cache salt and its
injection, the sampler seed per prompt, and a completion's mask from vLLM's finish reason.

No vLLM import here (pure functions, tested in the main environment).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from grpo_ao.steering import Injection


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw bytes of `t` in its own dtype, from any device and any dtype (bfloat16 has no numpy dtype): copied
    to the CPU first, never `.numpy()` on a GPU tensor."""
    cpu = t.detach().to("cpu").contiguous()
    return cpu.reshape(-1).view(torch.uint8).numpy().tobytes()


def prompt_request(ids: torch.Tensor, mask: torch.Tensor, positions: list[int], vectors: torch.Tensor,
                   layer: int, coef: float) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One left-padded row -> (vLLM token prompt with its cache salt, the injection for `extra_args`).

    Args:
        ids, mask: [P] the padded prompt row and its attention mask (left padding).
        positions: K placeholder indices in padded coordinates; K = 0 means no injection (and no salt).
        vectors: [K, hidden] subject activations, on any device, in any dtype.

    Returns:
        ({"prompt_token_ids": [...], "cache_salt": sha256 of the unit vectors, positions, layer, coef}, injection)
        where injection = {"positions": unpadded indices, "units": float32 bytes of [K, hidden] v/||v||}.
    """
    keep = mask.bool()  # [P]
    offset = int((~keep).sum())  # left padding: the first `offset` entries are padding
    assert keep[offset:].all(), "prompt rows must be left-padded"
    prompt: dict[str, Any] = {"prompt_token_ids": ids[keep].tolist()}
    if not positions:
        return prompt, None
    units = Injection([vectors], [positions], coef).units  # [K, hidden] fp32, as the HF hook uses
    units = tensor_bytes(units.float())  # the vectors live on the model's device (a GPU in a real run)
    shifted = [p - offset for p in positions]
    digest = hashlib.sha256(units)
    digest.update(json.dumps([shifted, layer, coef]).encode())
    prompt["cache_salt"] = digest.hexdigest()
    return prompt, {"positions": shifted, "units": units}


def request_seed(seed: int, prompt: int) -> int:
    """vLLM's sampler seed for prompt `prompt` of a call seeded `seed`: a 63-bit hash of the two, so the G samples
    of a prompt depend on nothing else (not the batch, the rank, the engine's past requests or a restart).

    >>> request_seed(7, 0) == request_seed(7, 0) != request_seed(7, 1)
    True
    """
    digest = hashlib.sha256(f"grpo-ao:{seed}:{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def completion_row(token_ids: list[int], finish_reason: str | None, max_new_tokens: int, pad_id: int
                   ) -> tuple[list[int], int, bool]:
    """One vLLM completion -> (ids padded to max_new_tokens, completion length, truncated).

    vLLM says why it stopped: "stop" (an end-of-turn id, kept as the last sampled id) or "length" (max_tokens, or
    max_model_len when the prompt leaves less room). Only "stop" ends a completion: a completion cut short by
    max_model_len is truncated, and the pad after it stays outside the mask even where the pad id is itself an
    end-of-turn id (Qwen3's <|endoftext|>), which reading the ids alone would take for an end.

    >>> completion_row([5, 6], "length", 4, pad_id=0)
    ([5, 6, 0, 0], 2, True)
    >>> completion_row([5, 2], "stop", 4, pad_id=0)
    ([5, 2, 0, 0], 2, False)
    """
    ids = list(token_ids)[:max_new_tokens]
    ended = finish_reason == "stop" and len(token_ids) <= max_new_tokens
    return ids + [pad_id] * (max_new_tokens - len(ids)), len(ids), not ended
