"""The parity check: the HF training forward, teacher-forced on the vLLM engine's own greedy tokens, must give the
engine's logprobs within a tolerance per dtype (`RolloutConfig.parity_tolerance`).

What it compares is what training uses: the trainer scores the engine's sampled ids with its own forward, so a gap
there is what biases the loss. Teacher forcing keeps both sides on the same tokens, so two greedy paths that part
at a near-tie (common in bfloat16, where fused vLLM kernels and HF's attention round differently) cannot fail it.
Where the engine's greedy path parts from HF's greedy path and HF preferred its own token by more than the
tolerance, the split is reported (`ParityReport.confident_splits`), not failed.

Run at start-up (after the first weight sync) and every `rollout.parity_every` syncs. On a failure the message
names the likely cause, narrowed by two cheap re-runs: with the prefix cache emptied (stale or unsalted cache) and
against the HF model with its adapter off (weights never synced), each prompt alone.

We deliberately do not demand equal greedy tokens any more: in bfloat16 that fails ordinary runs on ties.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from grpo_ao.errors import GrpoAoError
from grpo_ao.rollout import OracleInputs, Rollouts, SamplingConfig, completion_logprobs, generate_rollouts


@dataclass(frozen=True)
class Split:
    """Where the engine's greedy path first parts from HF's: prompt `row`, token `token`, and HF's margin there,
    lp_HF(HF's token) − lp_HF(the engine's token) on the shared prefix."""

    row: int
    token: int
    hf_margin: float


@dataclass(frozen=True)
class ParityReport:
    """The engine's logprobs agreed with the HF training forward's on the engine's own greedy tokens."""

    prompts: int
    tokens_compared: int
    max_abs_logprob_diff: float
    """max |engine logprob − HF teacher-forced logprob| over the compared tokens."""
    tolerance: float
    splits: tuple[Split, ...] = ()
    """Every row whose greedy path parts from HF's greedy path (near-ties included)."""

    @property
    def confident_splits(self) -> tuple[Split, ...]:
        """The splits where HF preferred its own token by more than the tolerance: worth a look, not a failure."""
        return tuple(s for s in self.splits if s.hf_margin > self.tolerance)

    def summary(self) -> str:
        """One line for the log."""
        line = (f"vLLM parity: {self.tokens_compared} tokens of {self.prompts} prompts, max |Δ logprob| "
                f"{self.max_abs_logprob_diff:.3g} ≤ {self.tolerance:g}; {len(self.splits)} greedy path(s) part from HF's")
        if self.confident_splits:
            where = ", ".join(f"prompt {s.row} token {s.token} (HF margin {s.hf_margin:.3g})"
                              for s in self.confident_splits)
            line += f"; where HF's top-1 margin exceeds the tolerance: {where}"
        return line


def max_logprob_gap(engine: Rollouts, hf_logprobs: torch.Tensor) -> float:
    """max over completion tokens of |engine sampling logprob − HF logprob|  ([N, T], [N, T] -> float)."""
    assert engine.sampling_logprobs is not None, "the engine's rollouts carry their sampling logprobs"
    gap = (engine.sampling_logprobs - hf_logprobs.float().cpu()).abs() * engine.completion_mask  # [N, T]
    return float(gap.max()) if gap.numel() else 0.0


def greedy_splits(ours: Rollouts, hf: Rollouts, hf_on_ours: torch.Tensor, hf_on_hf: torch.Tensor) -> list[Split]:
    """The first differing token of each row whose greedy paths part, with HF's margin there.

    Args:
        ours, hf: the engine's and HF's greedy rollouts of the same prompts ([N, T] ids and masks).
        hf_on_ours, hf_on_hf: [N, T] HF teacher-forced logprobs of each path's own ids (temperature 1).
    """
    differ = (ours.completion_ids != hf.completion_ids) & ((ours.completion_mask + hf.completion_mask) > 0)  # [N, T]
    differ |= ours.completion_mask != hf.completion_mask
    out = []
    for row in differ.any(dim=1).nonzero().flatten().tolist():
        col = int(differ[row].nonzero()[0])
        out.append(Split(row, col, float(hf_on_hf[row, col] - hf_on_ours[row, col])))
    return out


def _hf_logprobs(model: Any, rollouts: Rollouts, spec: Any, adapter: bool = True) -> torch.Tensor:
    """HF teacher-forced logprobs at temperature 1 (greedy requests report them so), adapter on or off.  [N, T]"""
    if adapter or not hasattr(model, "disable_adapter"):
        return completion_logprobs(model, rollouts, 1.0, spec=spec).float().cpu()
    with model.disable_adapter():
        return completion_logprobs(model, rollouts, 1.0, spec=spec).float().cpu()


def _alone(inputs: OracleInputs, b: int) -> OracleInputs:
    """Prompt b of `inputs` on its own (its row keeps the batch's left padding)."""
    return replace(inputs, prompt_ids=inputs.prompt_ids[b:b + 1], prompt_mask=inputs.prompt_mask[b:b + 1],
                   positions=inputs.positions[b:b + 1], vectors=inputs.vectors[b:b + 1], layers=inputs.layers[b:b + 1])


def diagnose(engine: Any, model: Any, inputs: OracleInputs, greedy: SamplingConfig, tol: float) -> str:
    """The likely cause of a logprob gap above `tol`, from re-runs of each prompt alone on an emptied prefix cache
    (nothing cached, not even a batch neighbour's blocks, can reach it): against HF, and HF with its adapter off."""
    on, off = 0.0, 0.0
    for b in range(inputs.prompt_ids.shape[0]):
        engine.llm.reset_prefix_cache()
        fresh = engine.generate(_alone(inputs, b), greedy)
        on = max(on, max_logprob_gap(fresh, _hf_logprobs(model, fresh, engine.spec)))
        off = max(off, max_logprob_gap(fresh, _hf_logprobs(model, fresh, engine.spec, adapter=False)))
    engine.llm.reset_prefix_cache()  # what the re-runs cached is not the check's business
    if on <= tol:
        return ("the prefix cache served KV computed under other weights or another injection (a weight sync "
                "without a cache reset, or prompts sent without their cache_salt)")
    if off <= tol:
        return ("stale weights: the engine samples the base model without the adapter; call "
                "engine.sync_weights(model) after loading the adapter and after every optimizer step")
    return (f"a different forward: the injection layer or coefficient (engine: block {engine.spec.injection_layer}, "
            f"coef {engine.spec.coef}), stale weights on some layers, or the dtype (engine {engine.dtype}, HF "
            f"{next(model.parameters()).dtype})")


def check_parity(engine: Any, model: Any, tokenizer: Any, inputs: OracleInputs) -> ParityReport:
    """`VllmEngine.parity_check`: returns a `ParityReport`, raises GrpoAoError when the logprobs disagree.

    1. the engine's greedy completions (`rollout.parity_tokens` tokens of the first `rollout.parity_prompts`
       prompts) and its logprobs of them;
    2. the HF training forward's logprobs of the same ids (teacher-forced, with the injection): the check;
    3. HF's own greedy completions: where they part from the engine's, HF's margin (reported, never failed).
    """
    from grpo_ao.vllm.engine import subset

    settings = engine.settings
    tol = settings.parity_tolerance(engine.dtype_name)
    sub = subset(inputs, min(settings.parity_prompts, inputs.prompt_ids.shape[0]))
    greedy = SamplingConfig(num_generations=1, max_new_tokens=settings.parity_tokens, greedy=True)
    ours = engine.generate(sub, greedy)  # 1.
    hf_on_ours = _hf_logprobs(model, ours, engine.spec)  # [N, T] 2.
    gap = max_logprob_gap(ours, hf_on_ours)
    if gap > tol:
        tolerance = (f"rollout.parity_logprob_tol={tol:g}" if settings.parity_logprob_tol is not None else
                     f"the {engine.dtype_name} default {tol:g} (rollout.parity_logprob_tol)")
        raise GrpoAoError(
            f"vLLM parity check failed: on the engine's own greedy tokens the HF training forward's logprobs differ "
            f"by up to {gap:.3g} > {tolerance}. Likely cause: {diagnose(engine, model, sub, greedy, tol)}. "
            "Use rollout.engine=hf until it is fixed.")
    hf = generate_rollouts(model, tokenizer, sub, greedy, spec=engine.spec)  # 3.
    splits = greedy_splits(ours, hf, hf_on_ours, _hf_logprobs(model, hf, engine.spec))
    return ParityReport(prompts=sub.prompt_ids.shape[0], tokens_compared=int(ours.completion_mask.sum()),
                        max_abs_logprob_diff=gap, tolerance=tol, splits=tuple(splits))
