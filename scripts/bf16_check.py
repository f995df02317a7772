"""bf16 against fp32 for the HF path on the CPU (issue 17, item 2): the logprob gap on the same tokens, and speed.

    python scripts/bf16_check.py --config smollm2 grpo.prompts_per_step=2 sampling.num_generations=8 \
        sampling.max_new_tokens=32

One model per dtype from the same config (shipped adapter, prompt layout, injection). fp32 samples the rollouts
(B prompts × G, forced to T tokens); both models then score those same tokens teacher-forced with the training
forward (`rollout.completion_logprobs`, prefix-shared), so the gap is the dtype's alone, never a split sampling
path. Printed: |Δ logprob| over the completion tokens (mean, median, p99, max), the mean Δ (a bias would show
here), and per dtype the seconds of sampling the rollouts, of the no-grad scoring forward and of one update
(forward + backward + AdamW, micro-batched as `grpo.update`), median of --repeats after a warm-up, and
`rollout/logprob_mismatch` as GRPO logs it (mean |sampler logprob − training-forward logprob| on the dtype's own
samples; nan when the engine records no sampler logprobs). bf16 on this
CPU uses AVX-512 BF16 matmuls when torch has them (`torch.backends.mkldnn`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace

import torch

from grpo_ao.config import load_config
from grpo_ao.recipes.bench import micro_batched_update
from grpo_ao.recipes.setup import (
    load_oracle,
    optimizer_and_scheduler,
    oracle_spec,
    seed_everything,
    task_sampler,
)
from grpo_ao.rollout import build_oracle_inputs, completion_logprobs, generate_rollouts


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds of `repeats` calls after one warm-up call, and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="smollm2")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg = load_config(args.config, [*args.overrides, "logging.progress=false", "model.dtype=float32"])
    sampling = replace(cfg.sampling, min_new_tokens=cfg.sampling.max_new_tokens)
    spec = oracle_spec(cfg)
    models = {}
    for dtype in ("float32", "bfloat16"):
        seed_everything(cfg.seed)
        models[dtype] = load_oracle(replace(cfg, model=replace(cfg.model, dtype=dtype)))
    model32, tokenizer = models["float32"]
    tasks = task_sampler(cfg.data, tokenizer).next_batch(cfg.grpo.prompts_per_step)
    seed_everything(cfg.seed)
    rollouts = generate_rollouts(model32, tokenizer, build_oracle_inputs(model32, tokenizer, tasks, spec=spec),
                                 sampling, spec=spec)
    mask = rollouts.completion_mask.bool()
    scores, rows = {}, []
    for dtype, (model, _) in models.items():
        cast = replace(rollouts, vectors=[v.to(getattr(torch, dtype)) for v in rollouts.vectors])
        model.eval()

        def sample(model=model):
            seed_everything(cfg.seed)
            return generate_rollouts(model, tokenizer, build_oracle_inputs(model, tokenizer, tasks, spec=spec),
                                     sampling, spec=spec)

        def score(model=model, cast=cast):
            return completion_logprobs(model, cast, cfg.sampling.temperature, spec=spec).float()

        optimizer, _ = optimizer_and_scheduler(model, 0.0, 0.0, 0, "constant", 1)  # lr 0: the weights stay

        def update(model=model, cast=cast, optimizer=optimizer):
            micro_batched_update(model, cast, optimizer, cfg.grpo.micro_batch_size, spec=spec,
                                 temperature=cfg.sampling.temperature, prefix_shared=cfg.grpo.prefix_shared_forward)

        t_sample, own = timed(sample, args.repeats)
        t_score, scores[dtype] = timed(score, args.repeats)
        t_update, _ = timed(update, args.repeats)
        # rollout/logprob_mismatch of this dtype: its sampler's logprobs vs its training forward, its own tokens
        if own.sampling_logprobs is None:
            mismatch = float("nan")
        else:
            trained = completion_logprobs(model, own, cfg.sampling.temperature, spec=spec).float()
            on = own.completion_mask.bool()
            mismatch = float((own.sampling_logprobs.float() - trained)[on].abs().mean())
        rows.append((dtype, t_sample, t_score, t_update, mismatch))
    gap = (scores["bfloat16"] - scores["float32"])[mask]
    a = gap.abs()
    print(f"{cfg.name}: B={len(tasks)} G={sampling.num_generations} T={sampling.max_new_tokens} (forced), "
          f"{int(mask.sum())} completion tokens, threads {torch.get_num_threads()}")
    print(f"|Δ logprob| bf16 vs fp32: mean {a.mean():.4f} median {a.median():.4f} "
          f"p99 {a.quantile(0.99):.4f} max {a.max():.4f}; mean Δ {gap.mean():+.4f}")
    print("| dtype | sampling s | scoring forward s | update s | rollout/logprob_mismatch |\n|---|---|---|---|---|")
    for dtype, t_sample, t_score, t_update, mismatch in rows:
        print(f"| {dtype} | {t_sample:.2f} | {t_score:.2f} | {t_update:.2f} | {mismatch:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
