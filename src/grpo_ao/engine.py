"""Rollout engines: what samples the G completions per prompt (`rollout.engine: hf | vllm`).

Both engines take the same `OracleInputs` (subject activations extracted on the training model with the
adapter off, prompts rendered and left-padded) and return the same `Rollouts`, with the sampler's own
logprobs of the sampled ids (`Rollouts.sampling_logprobs`) so the trainer can measure and correct the gap
between the sampler and the training forward.

- `HfEngine` samples with the training model itself (`rollout.generate_rollouts`): always in sync, nothing to do
  after an optimizer step.
- The vLLM engine (`grpo_ao.vllm.VllmEngine`) holds its own copy of the base weights: after each
  optimizer step `sync_weights` makes it sample from the current adapter, and a parity check (the HF training
  forward's logprobs on the engine's own greedy tokens, within a tolerance per dtype) runs at start-up and every
  `rollout.parity_every` syncs.

Imports read top-down: the settings (`grpo_ao.rollout_config`) → this module, which picks the engine → the
engines (`grpo_ao.rollout`, and `grpo_ao.vllm` imported only when chosen); no engine imports this module back.

We deliberately do not fall back from vLLM to HF when vLLM is missing or fails its parity check: the run stops
with the reason, because a silent switch would change speed and numerics under the user.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from grpo_ao.distributed import print0
from grpo_ao.rollout import OracleInputs, OracleSpec, Rollouts, SamplingConfig, generate_rollouts
from grpo_ao.rollout_config import RolloutConfig

__all__ = ["HfEngine", "RolloutConfig", "RolloutEngine", "SyncedEngine", "build_engine"]


class RolloutEngine(Protocol):
    """Samples rollouts for a batch of oracle inputs and follows the trained adapter."""

    def generate(self, inputs: OracleInputs, sampling: SamplingConfig, seed: int | None = None) -> Rollouts:
        """G completions per prompt; `seed` (the chunk's sampling seed) fixes them, whichever process or
        engine instance samples and whatever it sampled before; None: the engine's own random state."""
        ...

    def sync_weights(self, model: Any) -> None: ...

    def sleep(self) -> None: ...

    def wake_up(self) -> None: ...

    def close(self) -> None: ...


class HfEngine:
    """Hugging Face sampling on the training model (adapter on, eval mode, injection in the prefill)."""

    def __init__(self, model: Any, tokenizer: Any, *, spec: OracleSpec) -> None:
        self.model, self.tokenizer, self.spec = model, tokenizer, spec

    def generate(self, inputs: OracleInputs, sampling: SamplingConfig, seed: int | None = None) -> Rollouts:
        if seed is not None:  # generate() samples from torch's global generator
            torch.manual_seed(seed)
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

    def generate(self, inputs: OracleInputs, sampling: SamplingConfig, seed: int | None = None) -> Rollouts:
        return self.engine.generate(inputs, sampling, seed=seed)

    def check_parity(self, model: Any, tokenizer: Any) -> Any:
        """Raise `GrpoAoError` when the HF training forward, on the engine's own greedy tokens, gives logprobs
        beyond the dtype's tolerance; else print the report's line (greedy splits where HF was confident) and
        return it (None: no check configured, or an engine that is the training model)."""
        if self.parity_inputs is None or not hasattr(self.engine, "parity_check"):
            return None
        report = self.engine.parity_check(model, tokenizer, self.parity_inputs)
        print0(report.summary())
        return report

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
        seed: the run's seed (vLLM's generator for calls without a seed of their own).
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
