"""Whole GRPO steps on a matched workload: `grpo-ao bench --config CONFIG [--engines hf,vllm] [--repeats N]`.

Workload (the same for every variant): B = grpo.prompts_per_step tasks × G = sampling.num_generations
completions, every completion forced to T = sampling.max_new_tokens tokens (end-of-turn suppressed until then),
the config's prompt layout and injection, one optimizer step on the surrogate −Σ masked logprobs ÷ (N·T).
No judge: it is the same network wait in every variant (and hidden behind rollouts in ours).

Variants:
  prototype: the earlier prototype's step: 1. per task a full subject forward with output_hidden_states;
     2. per prompt one generate call for its G rows with the injection hook installed on every decode step;
     3. per rollout one training forward + backward and one reference forward (adapter off), then AdamW.
  hf / vllm: `grpo-ao grpo`'s step with rollout.engine=hf or vllm: 1. extraction batched over the tasks, stopping
     at the deepest block needed; 2. the engine's rollouts (HF: each distinct prompt prefilled once with the
     injection, its G rows decoded from the shared KV cache without a hook; vLLM: per-request injection);
     3. micro-batched training forwards + backward (`injected_logprobs`), AdamW, and the engine's weight sync.
     The update path is `grpo.prefix_shared_forward`'s (default: each prompt computed once, its KV cache expanded
     to its G completions); the first engine also runs with the other path (variant "hf one-forward": prompt +
     completion for every rollout), so one run gives both, and `update_speedup_prefix_shared` their ratio.
For each: median s/step over `repeats` timed steps after a warm-up step (its time kept: it includes compilation
with model.compile), rollout (1+2) s and tok/s, update (3) s, peak memory (torch.cuda.max_memory_allocated per
variant on CUDA, and of the update alone; on CPU the process's peak RSS, which only grows and so does not separate
the variants), and the prototype's s/step ÷ the variant's (`prototype=False` skips the prototype, whose per-rollout
loop is slow at real shapes), and for ours where the time goes (`phases_s`: extraction, sampling = prefill +
decode, training forward, backward, optimizer, weight sync). The report also gives the model's parameter and weight-byte counts and its KV-cache
bytes per token (for a bandwidth roofline). Writes run_dir/bench.json.
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
from grpo_ao.engine import build_engine
from grpo_ao.errors import GrpoAoError
from grpo_ao.model_compile import is_compiled
from grpo_ao.recipes.setup import (
    load_oracle,
    optimizer_and_scheduler,
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
    completion_mask_for,
    end_of_turn_ids,
    group_micro_batches,
    injected_logprobs,
    oracle_inputs,
    subject_layers,
)
from grpo_ao.steering import inject, render_context, subject_mode

VARIANTS = ("prototype", "hf", "vllm")
OTHER_UPDATE = {True: " one-forward", False: " prefix-shared"}
"""The name suffix of the variant that runs the update path `grpo.prefix_shared_forward` does not choose."""


def prototype_inputs(model: Any, tokenizer: Any, tasks: list, *, spec: OracleSpec) -> OracleInputs:
    """1 (prototype): one full forward per task with every hidden state returned, then the prompts."""
    device = next(model.parameters()).device
    layers = subject_layers(model, tasks)
    vectors = []
    for task, layer in zip(tasks, layers, strict=True):
        enc = tokenizer(render_context(tokenizer, task.context, spec.context_format), return_tensors="pt",
                        add_special_tokens=False).to(device)
        with torch.no_grad(), subject_mode(model):
            hidden = model(**enc, output_hidden_states=True).hidden_states  # L+1 × [1, S, H]
        vectors.append(hidden[layer + 1][0, -task.num_positions:].detach().clone())  # [K, H]
    return oracle_inputs(tokenizer, tasks, layers, vectors, spec=spec)


def prototype_rollouts(model: Any, tokenizer: Any, inputs: OracleInputs, sampling: SamplingConfig, *,
                       spec: OracleSpec) -> list[Rollouts]:
    """2 (prototype): per prompt, one generate call of its G rows, the hook installed for every decode step."""
    device = next(model.parameters()).device
    g, eos_ids, out = sampling.num_generations, end_of_turn_ids(model, tokenizer), []
    model.eval()
    for b in range(len(inputs.vectors)):
        pad = int((inputs.prompt_mask[b] == 0).sum())
        ids = inputs.prompt_ids[b:b + 1, pad:].repeat(g, 1)  # [G, P_b]
        positions, vectors = [[p - pad for p in inputs.positions[b]]] * g, [inputs.vectors[b]] * g
        with torch.no_grad(), inject(model, vectors, positions, spec.injection_layer, spec.coef):
            gen = model.generate(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device),
                                 do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p,
                                 top_k=sampling.top_k, max_new_tokens=sampling.max_new_tokens,
                                 min_new_tokens=sampling.min_new_tokens, eos_token_id=eos_ids,
                                 pad_token_id=tokenizer.pad_token_id)
        completion = gen[:, ids.shape[1]:].cpu()  # [G, T]
        mask, truncated = completion_mask_for(completion, eos_ids)
        out.append(Rollouts(ids, torch.ones_like(ids), positions, vectors, completion, mask, truncated,
                            [""] * g, g))
    return out


def prototype_update(model: Any, groups: list[Rollouts], optimizer: Any, *, spec: OracleSpec,
                     temperature: float) -> None:
    """3 (prototype): one training forward + backward and one reference forward (adapter off) per rollout."""
    n = sum(r.completion_ids.shape[0] for r in groups)
    t = groups[0].completion_ids.shape[1]
    model.train()
    optimizer.zero_grad(set_to_none=True)
    for group in groups:
        for i in range(group.completion_ids.shape[0]):
            one = group.select([i])
            with torch.no_grad(), model.disable_adapter(), injected_logprobs(model, one, temperature, spec=spec):
                pass  # the reference forward
            with injected_logprobs(model, one, temperature, spec=spec) as logprobs:  # [1, T]
                (-(logprobs * one.completion_mask.to(logprobs.device)).sum() / (n * t)).backward()
    optimizer.step()
    model.eval()


def micro_batched_update(model: Any, rollouts: Rollouts, optimizer: Any, micro_batch_size: int, *,
                         spec: OracleSpec, temperature: float, prefix_shared: bool,
                         phases: dict[str, float] | None = None) -> None:
    """3 (ours): micro-batched training forwards (each prompt's rows in one micro-batch; `prefix_shared`: each
    prompt computed once per micro-batch), the backward inside each (as `grpo.update`), AdamW. `phases`, when
    given, gets the seconds of "forward", "backward" and "optimizer" added (device-synchronised)."""
    n, t = rollouts.completion_ids.shape
    device = next(model.parameters()).device
    clock = _Clock(device, phases)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    for idx in group_micro_batches(range(n), rollouts.num_generations, micro_batch_size):
        mb = rollouts.select(idx)
        with injected_logprobs(model, mb, temperature, spec=spec, prefix_shared=prefix_shared) as logprobs:  # [n_mb, T]
            loss = -(logprobs * mb.completion_mask.to(logprobs.device)).sum() / (n * t)  # constant normaliser
            clock.lap("forward")
            loss.backward()
            clock.lap("backward")
    optimizer.step()
    clock.lap("optimizer")
    model.eval()


class _Clock:
    """Adds the seconds since the previous lap to `phases[name]` (nothing when `phases` is None)."""

    def __init__(self, device: torch.device, phases: dict[str, float] | None) -> None:
        self.device, self.phases = device, phases
        self.t = self._now()

    def _now(self) -> float:
        if self.phases is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def lap(self, name: str) -> None:
        if self.phases is None:
            return
        now = self._now()
        self.phases[name] = self.phases.get(name, 0.0) + now - self.t
        self.t = now


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


Step = Callable[[], dict[str, Any]]
"""One benchmarked step: {"rollout_s", "update_s", "tokens", "update_peak_mb" (or None), "phases" (name -> s, or
None)}."""
PHASES = ("extraction", "sampling", "forward", "backward", "optimizer", "sync")
"""Where our step's time goes: subject extraction, the engine's prefill + decode, the training forwards, their
backwards, AdamW, the engine's weight sync. No judge in the bench (see the module docstring)."""


def measure(step: Step, repeats: int, device: torch.device, seed: int) -> dict[str, Any]:
    """One warm-up step, then `repeats` timed steps from the same seed; medians."""
    seed_everything(seed)
    warmup = step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    runs = []
    for _ in range(repeats):
        seed_everything(seed)
        runs.append(step())
    rollout_s = statistics.median(r["rollout_s"] for r in runs)
    tokens = runs[-1]["tokens"]
    update_peaks = [r["update_peak_mb"] for r in runs if r["update_peak_mb"] is not None]
    phases = None if runs[-1]["phases"] is None else {
        k: statistics.median(r["phases"].get(k, 0.0) for r in runs) for k in PHASES}
    return {"step_s": statistics.median(r["rollout_s"] + r["update_s"] for r in runs),
            "steps_s": [r["rollout_s"] + r["update_s"] for r in runs],
            "warmup_s": warmup["rollout_s"] + warmup["update_s"], "rollout_s": rollout_s,
            "update_s": statistics.median(r["update_s"] for r in runs), "tokens": tokens,
            "rollout_tokens_per_s": tokens / rollout_s, "peak_memory_mb": _peak_memory_mb(device),
            "update_peak_memory_mb": max(update_peaks) if update_peaks else None, "phases_s": phases}


def model_facts(model: Any) -> dict[str, Any]:
    """Parameter counts, the bytes of all weights (what one decode step reads) and KV-cache bytes per token."""
    config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    params = list(model.parameters())
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = params[0].element_size()
    return {"parameters": sum(p.numel() for p in params),
            "trainable_parameters": sum(p.numel() for p in params if p.requires_grad),
            "weight_bytes": sum(p.numel() * p.element_size() for p in params),
            "kv_bytes_per_token": 2 * config.num_hidden_layers * kv_heads * head_dim * element}


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, out


def run(cfg: RunConfig, repeats: int = 3, engines: tuple[str, ...] = ("hf",), prototype: bool = True,
        compare_update: bool = True) -> dict[str, Any]:
    """Benchmark the prototype's step (unless `prototype=False`) and ours with each of `engines` (update path:
    `grpo.prefix_shared_forward`); with `compare_update`, also ours with the first engine and the other update path
    (`update_speedup_prefix_shared`: its update s ÷ the prefix-shared one's). Return the results (also bench.json)."""
    if repeats < 1:
        raise GrpoAoError(f"--repeats {repeats}: the bench needs at least 1 timed step per variant.")
    bad = [e for e in engines if e not in VARIANTS[1:]]
    if bad or not engines:
        raise GrpoAoError(f"--engines {','.join(engines)}: choose from hf, vllm (comma-separated).")
    run_dir = start_run(cfg, "bench")
    seed_everything(cfg.seed)
    model, tokenizer = load_oracle(cfg, gradient_checkpointing=cfg.grpo.gradient_checkpointing)
    device = next(model.parameters()).device
    tasks = task_sampler(cfg.data, tokenizer).next_batch(cfg.grpo.prompts_per_step)  # the same tasks for all
    spec, mbs = oracle_spec(cfg), cfg.grpo.micro_batch_size
    sampling = replace(cfg.sampling, min_new_tokens=cfg.sampling.max_new_tokens)  # every completion T tokens
    optimizer, _ = optimizer_and_scheduler(model, cfg.grpo.lr, 0.0, 0, "constant", cfg.grpo.max_steps)
    model.eval()

    def prototype_step() -> dict[str, Any]:
        t_roll, groups = _timed(lambda: prototype_rollouts(
            model, tokenizer, prototype_inputs(model, tokenizer, tasks, spec=spec), sampling, spec=spec), device)
        t_upd, _ = _timed(lambda: prototype_update(model, groups, optimizer, spec=spec,
                                                   temperature=sampling.temperature), device)
        return {"rollout_s": t_roll, "update_s": t_upd, "tokens": sum(int(r.lengths.sum()) for r in groups),
                "update_peak_mb": None, "phases": None}

    def our_step(engine: Any, prefix_shared: bool) -> Step:
        def step() -> dict[str, Any]:
            phases: dict[str, float] = {}
            t_ext, inputs = _timed(lambda: build_oracle_inputs(model, tokenizer, tasks, spec=spec), device)
            t_gen, rollouts = _timed(lambda: engine.generate(inputs, sampling), device)
            phases.update(extraction=t_ext, sampling=t_gen)

            def update() -> None:
                micro_batched_update(model, rollouts, optimizer, mbs, spec=spec, temperature=sampling.temperature,
                                     prefix_shared=prefix_shared, phases=phases)
                phases["sync"], _ = _timed(lambda: engine.after_step(model, tokenizer), device)

            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t_upd, _ = _timed(update, device)
            update_peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
            return {"rollout_s": t_ext + t_gen, "update_s": t_upd, "tokens": int(rollouts.lengths.sum()),
                    "update_peak_mb": update_peak, "phases": phases}
        return step

    parity_inputs = build_oracle_inputs(model, tokenizer, tasks, spec=spec)
    other = f"{engines[0]}{OTHER_UPDATE[cfg.grpo.prefix_shared_forward]}"  # the variant with the other update path
    results = {"prototype": measure(prototype_step, repeats, device, cfg.seed)} if prototype else {}
    for name in engines:
        engine = build_engine(replace(cfg.rollout, engine=name), model, tokenizer, spec=spec, dtype=cfg.model.dtype,
                              device=str(device), seed=cfg.seed, work_dir=run_dir / "engine",
                              parity_inputs=parity_inputs)
        try:
            results[name] = measure(our_step(engine, cfg.grpo.prefix_shared_forward), repeats, device, cfg.seed)
            if compare_update and name == engines[0]:  # the other update path, same rollouts engine and workload
                results[other] = measure(
                    our_step(engine, not cfg.grpo.prefix_shared_forward), repeats, device, cfg.seed)
        finally:
            engine.close()
    for v in results.values():
        v["speedup_vs_prototype"] = results["prototype"]["step_s"] / v["step_s"] if prototype else None
    update_speedup = None
    if compare_update:
        shared, plain = (engines[0], other) if cfg.grpo.prefix_shared_forward else (other, engines[0])
        update_speedup = results[plain]["update_s"] / results[shared]["update_s"]
    result = {
        "config": cfg.name, "device": str(device), "B": len(tasks), "G": sampling.num_generations,
        "N": len(tasks) * sampling.num_generations, "max_new_tokens": sampling.max_new_tokens,
        "micro_batch_size": mbs, "repeats": repeats, "dtype": cfg.model.dtype,
        "source": cfg.model.source, "compiled": is_compiled(model),
        "prompt_tokens_mean": float(parity_inputs.prompt_mask.sum(dim=1).float().mean()),
        "model": model_facts(model),
        "memory_source": "cuda_max_allocated" if device.type == "cuda" else "process_max_rss",
        "prefix_shared_forward": cfg.grpo.prefix_shared_forward,
        "update_speedup_prefix_shared": update_speedup,
        "variants": results,
    }
    write_json(run_dir / "bench.json", result)
    print_table(result)
    return result


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"grpo-ao bench · {result['config']} · {result['device']} {result['dtype']} · "
                        f"B={result['B']} G={result['G']} T={result['max_new_tokens']} (forced) "
                        f"micro-batch={result['micro_batch_size']} · median of {result['repeats']} steps")
    table.caption = ("peak MB: torch.cuda.max_memory_allocated per variant" if result["memory_source"] ==
                     "cuda_max_allocated" else "peak MB: process peak RSS so far (grows; not per variant)")
    if result.get("update_speedup_prefix_shared") is not None:
        table.caption += f" · update, one-forward ÷ prefix-shared: {result['update_speedup_prefix_shared']:.2f}×"
    for col in ("variant", "s/step", "warm-up s", "rollout s", "rollout tok/s", "update s", "peak MB", "vs prototype"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for name, v in result["variants"].items():
        speedup = v["speedup_vs_prototype"]
        table.add_row(name, f"{v['step_s']:.3f}", f"{v['warmup_s']:.3f}", f"{v['rollout_s']:.3f}",
                      f"{v['rollout_tokens_per_s']:.1f}", f"{v['update_s']:.3f}", f"{v['peak_memory_mb']:.0f}",
                      "–" if speedup is None else f"{speedup:.2f}×")
    phases = Table(title="where the time goes (s, median per phase)")
    for col in ("variant", *PHASES):
        phases.add_column(col, justify="left" if col == "variant" else "right")
    for name, v in result["variants"].items():
        if v.get("phases_s") is not None:
            phases.add_row(name, *(f"{v['phases_s'][k]:.3f}" for k in PHASES))
    console = Console()
    console.print(table)
    if phases.row_count:
        console.print(phases)
