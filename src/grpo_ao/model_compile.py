"""`model.compile`: torch.compile of each decoder block's attention and MLP.

Every block's `self_attn` and `mlp` get a compiled `forward` (regional compilation: the blocks share the compiled
code, so compile time does not grow with depth). The block itself stays eager: its forward hooks (the injection
on block `oracle.injection_layer`, the activation capture, transformers' hidden-state recording) and its
gradient-checkpointing wrapper run as without compile, so the injection acts on exactly the forwards it acted on
before (training forward, prefill) and a checkpointed block is recomputed with its hook. Decode steps run through
the same compiled attention and MLP.

We deliberately do not compile the whole model: the injection hook's state changes every batch (a graph holding it
would recompile each time) and the capture hook ends the forward with an exception. Shapes are dynamic from the
start (prompt lengths and micro-batch sizes vary every step), and the recompile limit is raised because adapter
on/off, train/eval and grad/no-grad are separate variants of one graph.
Compilation happens on the first call of each variant; a failure there becomes a GrpoAoError naming
`model.compile=false`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from grpo_ao.errors import GrpoAoError
from grpo_ao.models import decoder_layers

COMPILED_PARTS = ("self_attn", "mlp")
RECOMPILE_LIMIT = 64
BACKEND = "inductor"
"""Variants per compiled code object before torch falls back to eager (torch's default is 8)."""
_COMPILER_MODULES = ("torch._dynamo", "torch._inductor", "triton")
_CACHE_KWARGS = ("past_key_values", "past_key_value", "cache", "layer_past")  # the names across 5.x releases


def compile_blocks(model: Any) -> int:
    """Replace `forward` of each decoder block's attention and MLP by its torch.compile'd form.  -> parts compiled

    Raises:
        GrpoAoError: the model has no such parts.
    """
    import torch._dynamo

    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # the name changed in torch 2.6
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))
    if hasattr(config, "accumulated_recompile_limit"):
        config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 8 * RECOMPILE_LIMIT)
    count = 0
    for block in decoder_layers(model):
        for part in COMPILED_PARTS:
            module = getattr(block, part, None)
            if isinstance(module, torch.nn.Module):
                compiled = torch.compile(module.forward, dynamic=True, backend=BACKEND)
                module.forward = _dispatching(compiled, module.forward if part == "self_attn" else None, part)
                count += 1
    if not count:
        raise GrpoAoError(f"model.compile=true: the decoder blocks of {type(model).__name__} have no "
                          f"{' or '.join(COMPILED_PARTS)} to compile; set model.compile=false.")
    return count


def is_compiled(model: Any) -> bool:
    """True when `compile_blocks` has run on this model."""
    return any(hasattr(getattr(block, part, None), "forward") and
               getattr(getattr(block, part).forward, "grpo_ao_compiled", False)
               for block in decoder_layers(model) for part in COMPILED_PARTS)


def _is_compiler_error(error: BaseException) -> bool:
    return type(error).__module__.startswith(_COMPILER_MODULES)


def _has_cache(kwargs: dict[str, Any]) -> bool:
    return any(kwargs.get(name) is not None for name in _CACHE_KWARGS)


def _dispatching(compiled: Callable[..., Any], eager: Callable[..., Any] | None, part: str) -> Callable[..., Any]:
    """`compiled`, or `eager` (when given) for a call that carries a KV cache; a compiler failure becomes a
    GrpoAoError (other errors pass unchanged)."""

    @functools.wraps(compiled)
    def forward(*args: Any, **kwargs: Any) -> Any:
        if eager is not None and _has_cache(kwargs):
            return eager(*args, **kwargs)
        try:
            return compiled(*args, **kwargs)
        except Exception as e:
            if not _is_compiler_error(e):
                raise
            raise GrpoAoError(f"torch.compile of the decoder blocks' {part} failed ({type(e).__name__}: "
                              f"{str(e)[:500]}). Run with model.compile=false.") from e

    forward.grpo_ao_compiled = True  # type: ignore[attr-defined]
    return forward
