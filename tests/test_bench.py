"""`grpo-ao bench` on the tiny model: the report has its keys and sane numbers, and the batched and
naive training passes it times compute the same logprobs and gradients (what makes the comparison fair).
No speed-up is asserted: timings do not belong in unit tests."""

import json
import math

import torch

from grpo_ao.config import load_config
from grpo_ao.recipes import bench
from grpo_ao.recipes.setup import (
    load_oracle,
    oracle_spec,
    seed_everything,
    task_sampler,
    trainable_parameters,
)
from grpo_ao.rollout import SamplingConfig, build_oracle_inputs, generate_rollouts

SMALL = ["grpo.prompts_per_step=2", "sampling.num_generations=2", "sampling.max_new_tokens=6",
         "grpo.micro_batch_size=3", "logging.progress=false"]
"""N = 4 rollouts in micro-batches of 3 (one full, one partial)."""


def test_bench_writes_report_with_positive_finite_timings(tmp_path):
    cfg = load_config("tiny", [f"logging.output_dir={tmp_path}", *SMALL])
    result = bench.run(cfg, repeats=2)
    written = json.loads((tmp_path / "bench.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert {"config", "device", "B", "G", "N", "max_new_tokens", "micro_batch_size", "repeats", "memory_source",
            "sampling", "logprobs", "logprobs_max_abs_diff"} <= set(result)
    assert (result["B"], result["G"], result["N"], result["repeats"]) == (2, 2, 4, 2)
    for stage in ("sampling", "logprobs"):
        assert set(result[stage]) == {"batched", "naive", "speedup"}
        assert math.isfinite(result[stage]["speedup"]) and result[stage]["speedup"] > 0
        for variant in ("batched", "naive"):
            v = result[stage][variant]
            assert len(v["times_s"]) == 2
            assert all(math.isfinite(t) and t > 0 for t in v["times_s"])
            assert math.isfinite(v["median_s"]) and v["median_s"] > 0
            assert 0 < v["tokens"] <= 4 * 6
            assert math.isfinite(v["tokens_per_s"]) and v["tokens_per_s"] > 0
            assert v["peak_memory_mb"] > 0
    assert result["logprobs_max_abs_diff"] <= 1e-5


def test_batched_and_naive_logprob_passes_agree(tmp_path):
    cfg = load_config("tiny", [f"logging.output_dir={tmp_path}", *SMALL])
    seed_everything(cfg.seed)
    model, tokenizer = load_oracle(cfg)
    tasks = task_sampler(cfg.data, tokenizer).next_batch(cfg.grpo.prompts_per_step)
    spec = oracle_spec(cfg)
    inputs = build_oracle_inputs(model, tokenizer, tasks, spec=spec)
    rollouts = generate_rollouts(model, tokenizer, inputs, SamplingConfig(2, max_new_tokens=6), spec=spec)
    assert (inputs.prompt_mask == 0).any(), "the prompts should differ in length so padding is exercised"
    model.train()
    params = trainable_parameters(model)

    batched = bench.batched_logprobs(model, rollouts, micro_batch_size=3, temperature=1.0, spec=spec)  # [N, T]
    batched_grads = [p.grad.clone() for p in params]
    model.zero_grad(set_to_none=True)
    naive = bench.naive_logprobs(model, rollouts, temperature=1.0, spec=spec)  # [N, T]
    naive_grads = [p.grad.clone() for p in params]

    mask = rollouts.completion_mask.bool()
    assert batched.shape == naive.shape == mask.shape
    torch.testing.assert_close(batched[mask], naive[mask], atol=1e-5, rtol=0)
    assert any(g.abs().sum() > 0 for g in batched_grads), "the surrogate loss produced no gradient"
    for b, n in zip(batched_grads, naive_grads, strict=True):
        torch.testing.assert_close(b, n, atol=1e-5, rtol=1e-4)


def test_naive_sampling_makes_one_row_per_prompt_and_generation(tmp_path):
    cfg = load_config("tiny", [f"logging.output_dir={tmp_path}", *SMALL])
    model, tokenizer = load_oracle(cfg, trainable=False)
    tasks = task_sampler(cfg.data, tokenizer).next_batch(2)
    spec = oracle_spec(cfg)
    inputs = build_oracle_inputs(model, tokenizer, tasks, spec=spec)
    rows = bench.naive_rollouts(model, tokenizer, inputs, SamplingConfig(3, max_new_tokens=4), spec=spec)
    assert len(rows) == 2 * 3
    assert all(r.prompt_ids.shape[0] == 1 and bool(r.prompt_mask.all()) for r in rows), "naive rows are unpadded"
