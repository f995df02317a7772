"""The parity check: the vLLM engine's greedy tokens must be the HF injected path's, logprobs within a tolerance.

Run at start-up (after the first weight sync) and every `rollout.parity_every` syncs. On a mismatch the
message names the likely cause, narrowed by two cheap re-runs: with the prefix cache emptied (stale or unsalted
cache) and against the HF model with its adapter off (weights never synced).
"""

from __future__ import annotations

from typing import Any

import torch

from grpo_ao.errors import GrpoAoError
from grpo_ao.rollout import OracleInputs, Rollouts, SamplingConfig, completion_logprobs, generate_rollouts


def first_mismatch(a: Rollouts, b: Rollouts) -> tuple[int, int] | None:
    """(row, token) of the first differing sampled id inside either completion mask, or None."""
    differ = (a.completion_ids != b.completion_ids) & ((a.completion_mask + b.completion_mask) > 0)  # [N, T]
    differ |= a.completion_mask != b.completion_mask
    if not differ.any():
        return None
    row, col = differ.nonzero()[0].tolist()
    return row, col


def max_logprob_gap(engine: Rollouts, hf_logprobs: torch.Tensor) -> float:
    """max over completion tokens of |engine sampling logprob − HF logprob|  ([N, T], [N, T] -> float)."""
    assert engine.sampling_logprobs is not None, "the engine's rollouts carry their sampling logprobs"
    gap = (engine.sampling_logprobs - hf_logprobs.float()).abs() * engine.completion_mask  # [N, T]
    return float(gap.max()) if gap.numel() else 0.0


def _hf_greedy(model: Any, tokenizer: Any, inputs: OracleInputs, greedy: SamplingConfig, spec: Any,
               adapter: bool = True) -> Rollouts:
    if adapter or not hasattr(model, "disable_adapter"):
        return generate_rollouts(model, tokenizer, inputs, greedy, spec=spec)
    with model.disable_adapter():
        return generate_rollouts(model, tokenizer, inputs, greedy, spec=spec)


def diagnose(engine: Any, model: Any, tokenizer: Any, inputs: OracleInputs, greedy: SamplingConfig) -> str:
    """The likely cause of a token mismatch, from two re-runs."""
    engine.llm.reset_prefix_cache()
    fresh = engine.generate(inputs, greedy)  # with nothing cached
    if first_mismatch(fresh, _hf_greedy(model, tokenizer, inputs, greedy, engine.spec)) is None:
        return ("the prefix cache served KV computed under other weights or another injection (a weight sync "
                "without a cache reset, or prompts sent without their cache_salt)")
    if first_mismatch(fresh, _hf_greedy(model, tokenizer, inputs, greedy, engine.spec, adapter=False)) is None:
        return ("stale weights: the engine samples the base model without the adapter; call "
                "engine.sync_weights(model) after loading the adapter and after every optimizer step")
    return (f"a different forward: the injection layer or coefficient (engine: block {engine.spec.injection_layer}, "
            f"coef {engine.spec.coef}), stale weights, or the dtype (engine {engine.dtype}, HF "
            f"{next(model.parameters()).dtype}); bfloat16 greedy paths can part on near-ties: lower "
            "rollout.parity_tokens or check in float32")


def check_parity(engine: Any, model: Any, tokenizer: Any, inputs: OracleInputs) -> Any:
    """`VllmEngine.parity_check`: returns a `ParityReport`, raises GrpoAoError on a mismatch."""
    from grpo_ao.vllm.engine import ParityReport, subset

    settings = engine.settings
    sub = subset(inputs, min(settings.parity_prompts, inputs.prompt_ids.shape[0]))
    greedy = SamplingConfig(num_generations=1, max_new_tokens=settings.parity_tokens, greedy=True)
    hf = _hf_greedy(model, tokenizer, sub, greedy, engine.spec)
    ours = engine.generate(sub, greedy)
    where = first_mismatch(ours, hf)
    if where is not None:
        row, col = where
        raise GrpoAoError(
            f"vLLM parity check failed: prompt {row}, greedy token {col}: vLLM {ours.completion_ids[row].tolist()} vs "
            f"HF {hf.completion_ids[row].tolist()}. Likely cause: {diagnose(engine, model, tokenizer, sub, greedy)}. "
            "Use rollout.engine=hf until it is fixed.")
    # greedy logprobs are taken at temperature 1, as vLLM reports them for greedy requests
    gap = max_logprob_gap(ours, completion_logprobs(model, hf, 1.0, spec=engine.spec))
    if gap > settings.parity_logprob_tol:
        raise GrpoAoError(
            f"vLLM parity check failed: same greedy tokens but |Δ logprob| up to {gap:.3g} > "
            f"rollout.parity_logprob_tol={settings.parity_logprob_tol}. Likely cause: the dtype (engine {engine.dtype}) "
            "or stale weights on some layers; raise the tolerance for bfloat16 or check in float32.")
    return ParityReport(prompts=sub.prompt_ids.shape[0], tokens_compared=int(ours.completion_mask.sum()),
                        max_abs_logprob_diff=gap)
