"""Speed and memory of one GRPO batch against the naive loop: `grpo-ao bench --config CONFIG [--repeats N]`.

What is compared, on cfg's model for one batch of B = grpo.prompts_per_step tasks × G = sampling.num_generations:
  1. sampling: `generate_rollouts` (all N = B·G rows in one generate call) against the naive loop, one
     generate call per prompt and generation at batch size 1 (prompt unpadded, same injection);
  2. the training logprob pass + backward on the same rollouts: `injected_logprobs` over micro-batches
     of grpo.micro_batch_size against one forward + backward per rollout (unpadded), the prototype's way.
     Both backpropagate the same surrogate, −Σ masked logprobs ÷ (N·T), so the gradients agree too;
  3. medians over `repeats` timed runs after one warm-up, tokens/s, speed-ups and peak memory.
     Peak memory is torch.cuda.max_memory_allocated per variant on CUDA; on CPU it is the process's
     peak RSS (resource.getrusage), which only grows, so it does not separate the variants.

Not measured: the judge, the reward and the optimizer step (identical in both variants).
Writes run_dir/bench.json and prints a table.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from grpo_ao.config import RunConfig
from grpo_ao.errors import GrpoAoError
from grpo_ao.recipes.setup import (
    load_oracle,
    oracle_spec,
    seed_everything,
    start_run,
    task_sampler,
    write_json,
)
from grpo_ao.rollout import (
    OracleInputs,
    OracleSpec,
    Rollouts,
    SamplingConfig,
    build_oracle_inputs,
    generate_rollouts,
    injected_logprobs,
)


def _unpadded_inputs(inputs: OracleInputs, b: int) -> OracleInputs:
    """Prompt b alone, its left padding removed (placeholder positions shifted to match)."""
    pad = int((inputs.prompt_mask[b] == 0).sum())
    return OracleInputs(inputs.prompt_ids[b:b + 1, pad:], inputs.prompt_mask[b:b + 1, pad:],
                        [[p - pad for p in inputs.positions[b]]], [inputs.vectors[b]], [inputs.layers[b]])


def _unpadded_rollout(rollouts: Rollouts, i: int) -> Rollouts:
    """Rollout i alone: prompt without left padding, completion cut to its own length."""
    one = rollouts.select([i])
    pad = int((one.prompt_mask[0] == 0).sum())
    length = int(one.completion_mask[0].sum())
    return Rollouts(one.prompt_ids[:, pad:], one.prompt_mask[:, pad:], [[p - pad for p in one.positions[0]]],
                    one.vectors, one.completion_ids[:, :length], one.completion_mask[:, :length],
                    one.truncated, one.texts, one.num_generations)


def naive_rollouts(model: Any, tokenizer: Any, inputs: OracleInputs, sampling: SamplingConfig, *,
                   spec: OracleSpec) -> list[Rollouts]:
    """The naive loop: B·G generate calls of batch size 1, each with the same injection."""
    one = replace(sampling, num_generations=1)
    return [generate_rollouts(model, tokenizer, _unpadded_inputs(inputs, b), one, spec=spec)
            for b in range(len(inputs.positions)) for _ in range(sampling.num_generations)]


def batched_logprobs(model: Any, rollouts: Rollouts, micro_batch_size: int, temperature: float, *,
                     spec: OracleSpec) -> torch.Tensor:
    """Micro-batched training forward + backward of −Σ masked logprobs ÷ (N·T). Returns logprobs [N, T]."""
    n, t = rollouts.completion_ids.shape
    out = []
    for start in range(0, n, micro_batch_size):
        mb = rollouts.select(range(start, min(start + micro_batch_size, n)))
        with injected_logprobs(model, mb, temperature, spec=spec) as logprobs:  # [n_mb, T]
            mask = mb.completion_mask.to(logprobs.device)  # [n_mb, T]
            loss = -(logprobs * mask).sum() / (n * t)  # constant normaliser: the same loss however it is split
            loss.backward()  # inside: a checkpointed block is recomputed with its injection hook
        out.append(logprobs.detach().cpu())
    return torch.cat(out)  # [N, T]


def naive_logprobs(model: Any, rollouts: Rollouts, temperature: float, *, spec: OracleSpec) -> torch.Tensor:
    """One unpadded forward + backward per rollout, same loss. Returns logprobs [N, T], 0 past each length."""
    n, t = rollouts.completion_ids.shape
    out = torch.zeros(n, t)  # [N, T]
    for i in range(n):
        one = _unpadded_rollout(rollouts, i)
        with injected_logprobs(model, one, temperature, spec=spec) as logprobs:  # [1, T_i]
            loss = -logprobs.sum() / (n * t)  # every kept token is in the mask
            loss.backward()
        out[i, :logprobs.shape[1]] = logprobs.detach().cpu()[0]
    return out


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def measure(fn: Callable[[], Any], repeats: int, device: torch.device, seed: int) -> tuple[dict[str, Any], Any]:
    """One warm-up, then `repeats` timed calls, each after the same seed. Returns stats and the last result."""
    seed_everything(seed)
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times, result = [], None
    for _ in range(repeats):
        seed_everything(seed)  # both variants sample from the same RNG state
        t0 = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "times_s": times, "peak_memory_mb": _peak_memory_mb(device)}, result


def _variants(batched: dict, naive: dict, tokens_batched: int, tokens_naive: int) -> dict[str, Any]:
    batched["tokens"], naive["tokens"] = tokens_batched, tokens_naive
    for v in (batched, naive):
        v["tokens_per_s"] = v["tokens"] / v["median_s"]
    return {"batched": batched, "naive": naive, "speedup": naive["median_s"] / batched["median_s"]}


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"grpo-ao bench · {result['config']} · {result['device']} · B={result['B']} G={result['G']} "
                        f"T={result['max_new_tokens']} micro-batch={result['micro_batch_size']} "
                        f"· median of {result['repeats']}")
    table.caption = ("peak MB: torch.cuda.max_memory_allocated per variant" if result["memory_source"] ==
                     "cuda_max_allocated" else "peak MB: process peak RSS so far (grows; not per variant)")
    for col in ("stage", "variant", "median s", "tokens", "tokens/s", "peak MB", "speed-up"):
        table.add_column(col, justify="left" if col in ("stage", "variant") else "right")
    for stage, label in (("sampling", "sampling"), ("logprobs", "logprobs+backward")):
        s = result[stage]
        for name, note in (("batched", f"{s['speedup']:.2f}×"), ("naive", "1.00×")):
            v = s[name]
            table.add_row(label, name, f"{v['median_s']:.4f}", str(v["tokens"]), f"{v['tokens_per_s']:.1f}",
                          f"{v['peak_memory_mb']:.0f}", note)
    Console().print(table)
    print(f"max |logprob difference| batched vs naive: {result['logprobs_max_abs_diff']:.2e}")


def run(cfg: RunConfig, repeats: int = 3) -> dict[str, Any]:
    """Benchmark one batch (see the module docstring); return the results (also run_dir/bench.json)."""
    if repeats < 1:
        raise GrpoAoError(f"--repeats {repeats}: the bench needs at least 1 timed run per variant.")
    run_dir = start_run(cfg, "bench")
    seed_everything(cfg.seed)
    model, tokenizer = load_oracle(cfg, gradient_checkpointing=cfg.grpo.gradient_checkpointing)
    device = next(model.parameters()).device
    tasks = task_sampler(cfg.data, tokenizer).next_batch(cfg.grpo.prompts_per_step)  # the same tasks for both
    spec = oracle_spec(cfg)
    inputs = build_oracle_inputs(model, tokenizer, tasks, spec=spec)
    s = cfg.sampling

    # 1. sampling
    naive_s, naive_out = measure(lambda: naive_rollouts(model, tokenizer, inputs, s, spec=spec),
                                 repeats, device, cfg.seed)
    batched_s, rollouts = measure(lambda: generate_rollouts(model, tokenizer, inputs, s, spec=spec),
                                  repeats, device, cfg.seed)
    sampling_result = _variants(batched_s, naive_s, int(rollouts.lengths.sum()),
                                sum(int(r.lengths.sum()) for r in naive_out))

    # 2. training logprobs + backward, on the batched rollouts for both variants
    model.train()  # as in the update (LoRA dropout on, if configured)
    mbs = cfg.grpo.micro_batch_size

    def batched() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        return batched_logprobs(model, rollouts, mbs, s.temperature, spec=spec)

    def naive() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        return naive_logprobs(model, rollouts, s.temperature, spec=spec)

    naive_l, naive_lp = measure(naive, repeats, device, cfg.seed)
    batched_l, batched_lp = measure(batched, repeats, device, cfg.seed)
    model.zero_grad(set_to_none=True)
    model.eval()
    tokens = int(rollouts.lengths.sum())
    mask = rollouts.completion_mask.bool()  # [N, T]

    # 3. report
    result = {
        "config": cfg.name, "device": str(device), "B": len(tasks), "G": s.num_generations,
        "N": len(tasks) * s.num_generations, "max_new_tokens": s.max_new_tokens, "micro_batch_size": mbs,
        "repeats": repeats,
        "memory_source": "cuda_max_allocated" if device.type == "cuda" else "process_max_rss",
        "sampling": sampling_result,
        "logprobs": _variants(batched_l, naive_l, tokens, tokens),
        "logprobs_max_abs_diff": float((batched_lp - naive_lp)[mask].abs().max()) if tokens else 0.0,
    }
    write_json(run_dir / "bench.json", result)
    print_table(result)
    return result
