"""vLLM model classes that add the activation-oracle injection, per request, in the prefill.

Imported only inside vLLM's process (by `ModelRegistry` through the `module:Class` names in `ARCHITECTURES`);
importing it imports vLLM.

The decoder block `grpo_ao_injection_layer` (an `hf_overrides` key, like `grpo_ao_coef`) gets the same update as
`grpo_ao.steering.Injection.apply` at the placeholder tokens of the requests that carry an injection:

    h = hidden + residual                       # vLLM layers return (hidden, residual): the block output is the sum
    h' = h + (coef · ||h||) · u                 # u = v/||v|| in the model dtype at a placeholder, 0 elsewhere

and returns (h', 0), so the next block's fused add-norm sees the steered stream. The per-token `u` is a fixed-size
buffer on that block, written by the model's (uncompiled) outer `forward` before the compiled body runs and
zeroed after it, so it works eager, under torch.compile and with CUDA graphs: a replayed decode graph reads zeros.

Which flattened tokens are placeholders comes from the model runner (attached after start-up with
`attach_runner`): request i of the step owns tokens query_start_loc[i]..query_start_loc[i+1] at prompt
positions num_computed_tokens[i]..; its placeholders and unit vectors travel in its SamplingParams
`extra_args[INJECTION_KEY]` (positions, float32 bytes). Only requests still in their prompt are looked at, so a
decode step costs one numpy comparison.

Not done here: anything at decode steps (the injection is prefill-only, like the HF path), pipeline parallelism.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.model_executor.models.qwen3 import Qwen3ForCausalLM

INJECTION_KEY = "grpo_ao_injection"
"""SamplingParams.extra_args key: {"positions": [p, ...], "units": float32 bytes of [K, hidden] unit vectors}."""
ARCHITECTURES = {
    "Qwen3ForCausalLM": "GrpoAoQwen3ForCausalLM",
    "LlamaForCausalLM": "GrpoAoLlamaForCausalLM",
}
"""HF architecture -> the registered class that injects (same weights, same names)."""


class _InjectingLayer:
    """Mixed in front of a vLLM decoder layer class (its `forward` returns (hidden, residual))."""

    grpo_ao_units: torch.Tensor  # [max_num_batched_tokens, hidden] in the model dtype, 0 off the placeholders
    grpo_ao_coef: float

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor, residual: torch.Tensor | None):
        hidden_states, residual = super().forward(positions, hidden_states, residual)  # type: ignore[misc]
        h = hidden_states if residual is None else hidden_states + residual  # [n, hidden] the block output
        units = self.grpo_ao_units[: h.shape[0]]  # [n, hidden]
        h = h + (self.grpo_ao_coef * h.norm(dim=-1, keepdim=True)) * units  # [n, hidden]
        return h, torch.zeros_like(h)


def _make_injecting(layer: torch.nn.Module, coef: float, max_tokens: int, hidden: int) -> torch.Tensor:
    """Turn `layer` into an injecting layer in place (class swap: same parameters, names and weights);
    returns its unit buffer [max_tokens, hidden]."""
    cls = type(layer)
    layer.__class__ = type(f"Injecting{cls.__name__}", (_InjectingLayer, cls), {})
    layer.grpo_ao_coef = float(coef)
    dtype = next(layer.parameters()).dtype
    layer.register_buffer("grpo_ao_units", torch.zeros(max_tokens, hidden, dtype=dtype), persistent=False)
    return layer.grpo_ao_units


def injection_rows(req_ids: list[str], requests: dict[str, Any], query_start_loc: np.ndarray,
                   num_computed: np.ndarray, num_prompt: np.ndarray) -> tuple[list[int], list[torch.Tensor]]:
    """Flattened token rows of this step that are placeholders, and their unit vectors.

    Args:
        req_ids: the step's requests in batch order (R).
        requests: req_id -> the runner's request state (`.sampling_params.extra_args`).
        query_start_loc: [R + 1] first flattened token of each request.
        num_computed: [R] prompt tokens already in the KV cache before this step (prefix hits included).
        num_prompt: [R] prompt lengths.

    Returns:
        rows (flattened token indices) and one [k_i, hidden] float32 tensor of units per request with rows here.
    """
    rows: list[int] = []
    units: list[torch.Tensor] = []
    for i in np.nonzero(num_computed[: len(req_ids)] < num_prompt[: len(req_ids)])[0].tolist():
        params = requests[req_ids[i]].sampling_params
        spec = (params.extra_args or {}).get(INJECTION_KEY) if params is not None else None
        if spec is None:
            continue
        start, count = int(num_computed[i]), int(query_start_loc[i + 1] - query_start_loc[i])
        positions = np.asarray(spec["positions"], dtype=np.int64)  # [K]
        here = np.nonzero((positions >= start) & (positions < start + count))[0]  # the chunk holds these
        if here.size == 0:
            continue
        vectors = torch.frombuffer(bytearray(spec["units"]), dtype=torch.float32).view(len(positions), -1)
        rows += (int(query_start_loc[i]) + positions[here] - start).tolist()
        units.append(vectors[torch.from_numpy(here)])
    return rows, units


class _InjectionMixin:
    """The outer (uncompiled) forward: fill the injecting block's buffer from the runner's batch, run, clear."""

    def _grpo_ao_setup(self, vllm_config: Any) -> None:
        config = vllm_config.model_config.hf_config
        layer = int(config.grpo_ao_injection_layer)
        max_tokens = vllm_config.scheduler_config.max_num_batched_tokens
        self._grpo_ao_units = _make_injecting(self.model.layers[layer], float(config.grpo_ao_coef),
                                              max_tokens, config.hidden_size)
        self._grpo_ao_runner: Any = None
        self._grpo_ao_rows: torch.Tensor | None = None
        self.grpo_ao_injected_tokens = 0  # tokens steered since start (tests read it through collective_rpc)

    def attach_runner(self, runner: Any) -> None:
        """Read each step's requests from `runner` (a vLLM GPU/CPU model runner)."""
        self._grpo_ao_runner = runner

    def _grpo_ao_fill(self) -> None:
        runner = self._grpo_ao_runner
        if runner is None:
            return
        batch = runner.input_batch
        num_reqs = batch.num_reqs
        rows, units = injection_rows(batch.req_ids[:num_reqs], runner.requests, runner.query_start_loc.np,
                                     batch.num_computed_tokens_cpu, batch.num_prompt_tokens)
        if not rows:
            return
        buffer = self._grpo_ao_units
        index = torch.tensor(rows, dtype=torch.long, device=buffer.device)  # [M]
        # the dtype cast of HF's Injection.apply: unit vectors in fp32, then to the activations' dtype
        buffer[index] = torch.cat(units).to(buffer.device, buffer.dtype)  # [M, hidden]
        self._grpo_ao_rows = index
        self.grpo_ao_injected_tokens += len(rows)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor, intermediate_tensors: Any = None,
                inputs_embeds: torch.Tensor | None = None, **kwargs: Any) -> Any:
        self._grpo_ao_fill()
        try:
            return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds,  # type: ignore[misc]
                                   **kwargs)
        finally:
            if self._grpo_ao_rows is not None:
                self._grpo_ao_units[self._grpo_ao_rows] = 0  # later steps (and replayed graphs) read zeros
                self._grpo_ao_rows = None


class GrpoAoQwen3ForCausalLM(_InjectionMixin, Qwen3ForCausalLM):
    def __init__(self, *, vllm_config: Any, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._grpo_ao_setup(vllm_config)


class GrpoAoLlamaForCausalLM(_InjectionMixin, LlamaForCausalLM):
    def __init__(self, *, vllm_config: Any, prefix: str = "", **kwargs: Any):
        super().__init__(vllm_config=vllm_config, prefix=prefix, **kwargs)
        self._grpo_ao_setup(vllm_config)


def register() -> None:
    """Register the injecting classes with vLLM (idempotent)."""
    from vllm import ModelRegistry

    for name in ARCHITECTURES.values():
        ModelRegistry.register_model(name, f"{__name__}:{name}")


def attach_runner(worker: Any) -> int:
    """collective_rpc target: give the injecting model its runner; returns the number attached (1)."""
    runner = worker.model_runner
    runner.get_model().attach_runner(runner)
    return 1


def injected_tokens(worker: Any) -> int:
    """collective_rpc target: tokens steered so far."""
    return worker.model_runner.get_model().grpo_ao_injected_tokens


__all__ = ["ARCHITECTURES", "INJECTION_KEY", "attach_runner", "injected_tokens", "injection_rows", "register"]
