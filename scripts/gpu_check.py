"""The GPU check: one prepared run on a lent GPU machine (no network, no pip), started by scripts/gpu_check.sh.

The HF path at the Qwen3-8B shape with random bf16 weights (`model.source=random`, no download), B=4 prompts × G=8
completions forced to 300 new tokens (`grpo-ao bench`'s workload, `recipes.bench`), in parts run in this order:
  1. env: versions, the GPU, the optional packages missing here;
  2. bandwidth: device-to-device copy bandwidth (bytes read + written per second) and a bf16 matmul rate;
  3. bench_eager: `bench.run` with model.compile=false (rollout tok/s, update s, peak memory; no prototype, whose
     per-rollout loop is slow at this shape) and the bandwidth roofline of a decode step: weight bytes (+ mean
     KV-cache bytes) ÷ the measured copy bandwidth, over the measured time per decode step (rollout s ÷ T,
     prefill and extraction included, so the fraction is a lower bound);
  4. grpo_steps: 3 `grpo-ao grpo` steps with the reference judge (fresh LoRA), their times from metrics.jsonl;
  5. parity: the same random weights in bf16 and fp32 on the GPU, a few prompts: extracted vectors, greedy tokens,
     and teacher-forced logprobs on the bf16 greedy tokens, with and without the injection (coef 0);
  6. bench_compiled: part 3 with model.compile=true (warm-up time includes compilation).
Each part is guarded (a failure is recorded, the next part runs), and a global time budget stops the run (the part
in flight is interrupted, the rest skipped). After every part gpu_check.json is rewritten, with gpu_check.md (a
Markdown block for docs/RESULTS.md), into $OUT when set, else runs/gpu_check/; run directories go to a scratch dir
(checkpoints are far too big to come back).

`--cpu-smoke`: the same parts on the `tiny` config (random weights of the qwen3-tiny architecture) on the CPU, at a
toy workload, compiling with Dynamo's `eager` backend (Inductor's C++ code generation costs minutes on small CPUs).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

GPU = {"config": "qwen3-8b", "budget_s": 450, "repeats": 2, "parity_prompts": 4, "parity_tokens": 32,
       "bytes": 2 * 2**30, "matmul": 8192,
       "overrides": ["model.source=random", "model.adapter=null", "model.device=cuda", "judge.kind=reference",
                     "sampling.num_generations=8", "sampling.max_new_tokens=300", "grpo.prompts_per_step=4"]}
SMOKE = {"config": "tiny", "budget_s": 120, "repeats": 1, "parity_prompts": 2, "parity_tokens": 6,
         "bytes": 2**24, "matmul": 256,
         "overrides": ["model.source=random", "model.adapter=null", "model.device=cpu", "judge.kind=reference",
                       "sampling.num_generations=2", "sampling.max_new_tokens=6", "grpo.prompts_per_step=2",
                       "grpo.micro_batch_size=4", "grpo.gradient_checkpointing=true"]}
COMMON = ["logging.progress=false", "logging.tensorboard=false", "logging.wandb_project=null",
          "logging.push_to_hub=null"]
MIN_S = {"bench_eager": 60, "grpo_steps": 60, "parity": 45, "bench_compiled": 120}
"""Seconds of budget a part needs to start on a GPU (skipped with less left); the smoke run ignores them."""
OPTIONAL = ("openai", "dotenv", "datasets", "gguf", "vllm", "tensorboard", "yaml")


class Budget(Exception):
    """The global time budget ran out while a part was running."""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu-smoke", action="store_true", help="the same parts on the tiny config, CPU, seconds")
    p.add_argument("--budget-s", type=float, help="global time budget in seconds (default 450 on GPU, 120 smoke)")
    p.add_argument("--out", help="output folder (default $OUT, else runs/gpu_check)")
    p.add_argument("--parts", help="comma-separated subset of the parts to run")
    args = p.parse_args(argv)
    plan = SMOKE if args.cpu_smoke else GPU
    out = Path(args.out or os.environ.get("OUT") or "runs/gpu_check")
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="grpo_ao_gpu_check_"))
    deadline = time.monotonic() + (args.budget_s or plan["budget_s"])
    report: dict[str, Any] = {"mode": "cpu-smoke" if args.cpu_smoke else "gpu", "config": plan["config"],
                              "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "parts": {}}
    parts = [("env", lambda: env_part()), ("bandwidth", lambda: bandwidth_part(plan)),
             ("bench_eager", lambda: bench_part(plan, scratch, compiled=False)),
             ("grpo_steps", lambda: grpo_part(plan, scratch)), ("parity", lambda: parity_part(plan, scratch)),
             ("bench_compiled", lambda: bench_part(plan, scratch, compiled=True, smoke=args.cpu_smoke))]
    wanted = set(args.parts.split(",")) if args.parts else {name for name, _ in parts}
    signal.signal(signal.SIGALRM, _out_of_time)
    for name, part in parts:
        left = deadline - time.monotonic()
        if name not in wanted:
            continue
        if left < (0 if args.cpu_smoke else MIN_S.get(name, 0)) or left <= 1:
            report["parts"][name] = {"status": "skipped", "reason": f"{left:.0f} s of the budget left"}
            continue
        report["parts"][name] = run_part(part, left)
        print(f"[gpu_check] {name}: {report['parts'][name]['status']} ({report['parts'][name]['seconds']:.1f} s)",
              flush=True)
        derive(report)
        write(out, report)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    write(out, report)
    print(markdown(report))
    failed = [n for n, r in report["parts"].items() if r["status"] == "failed"]
    return 1 if failed else 0


def _out_of_time(signum: int, frame: Any) -> None:
    raise Budget("the global time budget ran out")


def run_part(part: Any, seconds_left: float) -> dict[str, Any]:
    """Run one part under the budget alarm; a failure is recorded with its traceback, never raised."""
    t0 = time.perf_counter()
    signal.alarm(max(1, int(seconds_left)))
    try:
        result = {"status": "ok", **part()}
    except Exception as e:  # noqa: BLE001 - every failure is recorded and the next part runs
        result = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:2000],
                  "traceback": traceback.format_exc()[-4000:]}
    finally:
        signal.alarm(0)
        free_memory()
    result["seconds"] = time.perf_counter() - t0
    return result


def free_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load(plan: dict[str, Any], scratch: Path, name: str, extra: list[str]) -> Any:
    from grpo_ao.config import load_config

    return load_config(plan["config"], [*plan["overrides"], *COMMON, f"logging.output_dir={scratch / name}", *extra])


def env_part() -> dict[str, Any]:
    import torch

    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "numpy", "yaml"):
        with contextlib.suppress(Exception):
            versions[name] = getattr(__import__(name), "__version__", "?")
    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = {"name": props.name, "memory_gib": props.total_memory / 2**30,
               "capability": f"{props.major}.{props.minor}", "count": torch.cuda.device_count(),
               "cuda": torch.version.cuda}
    missing = [m for m in OPTIONAL if not _importable(m)]
    print(f"[gpu_check] versions {versions}\n[gpu_check] gpu {gpu}\n[gpu_check] missing optional packages {missing}")
    return {"versions": versions, "gpu": gpu, "missing_optional": missing}


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a module blocked with sys.modules[name] = None
        return False


def _timed_cuda(fn: Any, repeats: int, device: Any) -> float:
    """Mean seconds per call after 3 warm-up calls."""
    import torch

    for _ in range(3):
        fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - t0) / repeats


def bandwidth_part(plan: dict[str, Any]) -> dict[str, Any]:
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n = plan["bytes"]
    src, dst = torch.empty(n, dtype=torch.uint8, device=device), torch.empty(n, dtype=torch.uint8, device=device)
    copy_s = _timed_cuda(lambda: dst.copy_(src), 10, device)
    m = plan["matmul"]
    a, b = (torch.randn(m, m, device=device, dtype=torch.bfloat16) for _ in range(2))
    mm_s = _timed_cuda(lambda: a @ b, 10, device)
    return {"device": str(device), "copy_bytes": n, "copy_bandwidth_gb_s": 2 * n / copy_s / 1e9,
            "bf16_matmul_size": m, "bf16_matmul_tflop_s": 2 * m**3 / mm_s / 1e12}


def bench_part(plan: dict[str, Any], scratch: Path, compiled: bool, smoke: bool = False) -> dict[str, Any]:
    from grpo_ao import model_compile
    from grpo_ao.recipes import bench

    name = "bench_compiled" if compiled else "bench_eager"
    cfg = load(plan, scratch, name, [f"model.compile={'true' if compiled else 'false'}"])
    if compiled and smoke:
        model_compile.BACKEND = "eager"
    result = bench.run(cfg, repeats=plan["repeats"], engines=("hf",), prototype=False)
    return {"bench": result}


def grpo_part(plan: dict[str, Any], scratch: Path) -> dict[str, Any]:
    from grpo_ao.recipes import grpo

    cfg = load(plan, scratch, "grpo_steps", ["grpo.max_steps=3", "model.compile=false", "logging.checkpoint_every=3"])
    summary = grpo.run(cfg)
    metrics = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    keys = ("time/step_s", "time/rollout_s", "time/update_s", "perf/tokens_per_s", "reward/mean",
            "format/parse_rate", "loss/policy")
    return {"steps": [{k: m.get(k) for k in ("step", *keys)} for m in metrics if "time/step_s" in m],
            "summary_keys": sorted(summary) if isinstance(summary, dict) else None}


def parity_part(plan: dict[str, Any], scratch: Path) -> dict[str, Any]:
    """bf16 vs fp32, the same random weights: the fp32 model's weights copied (rounded) into a bf16 one loaded as a
    bf16 run loads it (the LoRA stays fp32 there, as peft keeps it), so only the dtype differs."""
    import torch

    from grpo_ao.recipes.setup import load_oracle, oracle_spec, task_sampler
    from grpo_ao.rollout import SamplingConfig, build_oracle_inputs, completion_logprobs, generate_rollouts

    cfg = load(plan, scratch, "parity", ["model.dtype=float32", "model.compile=false"])
    model32, tokenizer = load_oracle(cfg, trainable=False)
    model16, _ = load_oracle(load(plan, scratch, "parity", ["model.dtype=bfloat16", "model.compile=false"]),
                             trainable=False)
    with torch.no_grad():
        pairs = list(zip(model16.named_parameters(), model32.named_parameters(), strict=True))
        assert all(n16 == n32 for (n16, _), (n32, _) in pairs), "the two models must have the same parameters"
        for (_, p16), (_, p32) in pairs:
            p16.copy_(p32)
    spec = oracle_spec(cfg)
    tasks = task_sampler(cfg.data, tokenizer).next_batch(plan["parity_prompts"])
    greedy = SamplingConfig(1, max_new_tokens=plan["parity_tokens"], greedy=True)
    inputs = {k: build_oracle_inputs(m, tokenizer, tasks, spec=spec) for k, m in (("bf16", model16), ("fp32", model32))}
    rollouts = {k: generate_rollouts(m, tokenizer, inputs[k], greedy, spec=spec)
                for k, m in (("bf16", model16), ("fp32", model32))}
    forced = {"bf16": rollouts["bf16"], "fp32": replace(rollouts["bf16"], vectors=inputs["fp32"].vectors)}
    lp = {}
    for k, m in (("bf16", model16), ("fp32", model32)):
        for label, s in (("injected", spec), ("plain", replace(spec, coef=0.0))):
            lp[k, label] = completion_logprobs(m, forced[k], 1.0, spec=s).float().cpu()  # [n, T]
    mask = forced["bf16"].completion_mask.bool()

    def gap(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
        d = (a - b).abs()[mask]
        return {"max": float(d.max()), "mean": float(d.mean())} if d.numel() else {"max": None, "mean": None}

    same = rollouts["bf16"].completion_ids == rollouts["fp32"].completion_ids  # [n, T]
    first_split = [int((~row).nonzero()[0]) if (~row).any() else row.numel() for row in same]
    vec_err = [float((a.float().cpu() - b.float().cpu()).norm() / b.float().cpu().norm())
               for a, b in zip(inputs["bf16"].vectors, inputs["fp32"].vectors, strict=True)]
    return {"prompts": len(tasks), "tokens": plan["parity_tokens"],
            "vector_relative_error_max": max(vec_err),
            "logprob_gap_bf16_vs_fp32_injected": gap(lp["bf16", "injected"], lp["fp32", "injected"]),
            "logprob_gap_bf16_vs_fp32_plain": gap(lp["bf16", "plain"], lp["fp32", "plain"]),
            "injection_effect_bf16": gap(lp["bf16", "injected"], lp["bf16", "plain"]),
            "injection_effect_fp32": gap(lp["fp32", "injected"], lp["fp32", "plain"]),
            "greedy_rows_identical": int(same.all(dim=1).sum()), "greedy_first_split": first_split}


def derive(report: dict[str, Any]) -> None:
    """The roofline of a decode step and the compiled/eager ratio, from the parts that ran."""
    parts = report["parts"]
    bw = parts.get("bandwidth", {}).get("copy_bandwidth_gb_s")
    for name in ("bench_eager", "bench_compiled"):
        part = parts.get(name, {})
        if part.get("status") != "ok" or not bw:
            continue
        b = part["bench"]
        v = b["variants"]["hf"]
        step_s = v["rollout_s"] / b["max_new_tokens"]
        kv = b["N"] * (b["prompt_tokens_mean"] + b["max_new_tokens"] / 2) * b["model"]["kv_bytes_per_token"]
        part["roofline"] = {"decode_step_s": step_s, "weight_bytes": b["model"]["weight_bytes"],
                            "kv_bytes_mean": kv, "ideal_step_s_weights": b["model"]["weight_bytes"] / (bw * 1e9),
                            "fraction_weights": b["model"]["weight_bytes"] / (bw * 1e9) / step_s,
                            "fraction_weights_kv": (b["model"]["weight_bytes"] + kv) / (bw * 1e9) / step_s}
    eager, comp = parts.get("bench_eager", {}), parts.get("bench_compiled", {})
    if eager.get("status") == comp.get("status") == "ok":
        e, c = eager["bench"]["variants"]["hf"], comp["bench"]["variants"]["hf"]
        report["compiled_vs_eager"] = {"rollout": e["rollout_s"] / c["rollout_s"],
                                       "update": e["update_s"] / c["update_s"], "step": e["step_s"] / c["step_s"]}


def write(out: Path, report: dict[str, Any]) -> None:
    texts = {"gpu_check.json": json.dumps(report, indent=2, default=str), "gpu_check.md": markdown(report)}
    for name, text in texts.items():
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)


def _fmt(x: Any, spec: str = ".3g") -> str:
    return "–" if x is None else format(x, spec) if isinstance(x, (int, float)) else str(x)


def _not_ok(name: str, part: dict[str, Any]) -> str:
    return f"| {name} | {part.get('status', 'not run')}: {part.get('error', part.get('reason', ''))[:120]} |"


def _bench_rows(name: str, part: dict[str, Any]) -> list[str]:
    b, v, r = part["bench"], part["bench"]["variants"]["hf"], part.get("roofline", {})
    shape = (f"B={b['B']} G={b['G']} T={b['max_new_tokens']} forced, {b['dtype']}, "
             f"{b['model']['parameters'] / 1e6:.4g} M params")
    return [f"| {name} ({shape}): rollout | {_fmt(v['rollout_s'])} s, {_fmt(v['rollout_tokens_per_s'], '.0f')} tok/s |",
            f"| {name}: decode-step roofline, weights / weights + KV | {_fmt(r.get('fraction_weights'))} / "
            f"{_fmt(r.get('fraction_weights_kv'))} (ideal {_fmt(r.get('ideal_step_s_weights'))} s per step) |",
            f"| {name}: one GRPO update | {_fmt(v['update_s'])} s, peak {_fmt(v['update_peak_memory_mb'], '.0f')} MB |",
            f"| {name}: step / warm-up / peak | {_fmt(v['step_s'])} s / {_fmt(v['warmup_s'])} s / "
            f"{_fmt(v['peak_memory_mb'], '.0f')} MB |"]


def _parity_rows(pa: dict[str, Any]) -> list[str]:
    inj, eff16, eff32 = (pa["logprob_gap_bf16_vs_fp32_injected"], pa["injection_effect_bf16"],
                         pa["injection_effect_fp32"])
    return [f"| parity bf16 vs fp32, injected: max / mean abs Δ logprob | {_fmt(inj['max'])} / {_fmt(inj['mean'])} |",
            f"| injection effect, bf16 / fp32: mean abs Δ logprob | {_fmt(eff16['mean'])} / {_fmt(eff32['mean'])} |",
            f"| greedy rows identical bf16 vs fp32 | {pa['greedy_rows_identical']}/{pa['prompts']} "
            f"(first split at {pa['greedy_first_split']}) |"]


def markdown(report: dict[str, Any]) -> str:
    """A Markdown block for docs/RESULTS.md: the machine, then one table row per measured number."""
    parts = report["parts"]
    env = parts.get("env", {})
    gpu, versions = env.get("gpu") or {}, env.get("versions", {})
    lines = [f"### GPU check ({report['mode']}, {report['started']})", "",
             f"{gpu.get('name', 'no GPU')} ({_fmt(gpu.get('memory_gib'), '.0f')} GiB, CUDA {gpu.get('cuda')}); "
             + ", ".join(f"{k} {v}" for k, v in versions.items() if k != "platform")
             + f"; missing: {', '.join(env.get('missing_optional', [])) or 'none'}.", "",
             "| measure | value |", "|---|---|"]
    bw = parts.get("bandwidth", {})
    lines += [f"| copy bandwidth (read + write) | {_fmt(bw.get('copy_bandwidth_gb_s'), '.0f')} GB/s |",
              f"| bf16 matmul {bw.get('bf16_matmul_size')}³ | {_fmt(bw.get('bf16_matmul_tflop_s'), '.0f')} TFLOP/s |"]
    for name in ("bench_eager", "bench_compiled"):
        part = parts.get(name, {})
        lines += _bench_rows(name, part) if part.get("status") == "ok" else [_not_ok(name, part)]
    if "compiled_vs_eager" in report:
        c = report["compiled_vs_eager"]
        lines.append(f"| compiled ÷ eager speed-up, rollout / update / step | {c['rollout']:.2f}× / "
                     f"{c['update']:.2f}× / {c['step']:.2f}× |")
    g = parts.get("grpo_steps", {})
    steps = ", ".join(f"{_fmt(s['time/step_s'])} s" for s in g.get("steps") or [])
    done = steps or g.get("error", "")[:120]
    lines.append(f"| 3 GRPO steps, reference judge | {g.get('status', 'not run')}: {done} |")
    pa = parts.get("parity", {})
    lines += _parity_rows(pa) if pa.get("status") == "ok" else [_not_ok("parity", pa)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
