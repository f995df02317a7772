"""`grpo-ao bench` on the tiny model: the report has its keys and sane numbers, every variant runs the same
workload (same tasks, same activations and prompts, every completion forced to T tokens), and the prototype's
per-rollout update and our micro-batched one compute the same gradient (what makes the comparison fair).
No speed-up is asserted: timings do not belong in unit tests."""

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
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
from grpo_ao.rollout import Rollouts, SamplingConfig, build_oracle_inputs, generate_rollouts

SMALL = ["grpo.prompts_per_step=2", "sampling.num_generations=2", "sampling.max_new_tokens=6",
         "grpo.micro_batch_size=3", "logging.progress=false"]
"""N = 4 rollouts in micro-batches of 3 (one full, one partial)."""


def test_bench_reports_every_variant_on_the_same_forced_length_workload(tmp_path):
    cfg = load_config("tiny", [f"logging.output_dir={tmp_path}", *SMALL])
    result = bench.run(cfg, repeats=2, engines=("hf",))
    assert json.loads((tmp_path / "bench.json").read_text()) == json.loads(json.dumps(result))
    assert (result["B"], result["G"], result["N"], result["max_new_tokens"], result["repeats"]) == (2, 2, 4, 6, 2)
    assert set(result["variants"]) == {"prototype", "hf", "hf one-forward"}
    assert result["prefix_shared_forward"] is True
    assert result["update_speedup_prefix_shared"] == pytest.approx(
        result["variants"]["hf one-forward"]["update_s"] / result["variants"]["hf"]["update_s"])
    assert result["variants"]["prototype"]["phases_s"] is None
    for name in ("hf", "hf one-forward"):
        phases = result["variants"][name]["phases_s"]
        assert set(phases) == set(bench.PHASES) and all(math.isfinite(t) and t >= 0 for t in phases.values())
        assert phases["forward"] > 0 and phases["backward"] > 0 and phases["sampling"] > 0
    for v in result["variants"].values():
        assert v["tokens"] == 4 * 6, "every completion is forced to max_new_tokens"
        assert len(v["steps_s"]) == 2 and all(math.isfinite(t) and t > 0 for t in v["steps_s"])
        for key in ("step_s", "rollout_s", "update_s", "rollout_tokens_per_s", "peak_memory_mb",
                    "speedup_vs_prototype"):
            assert math.isfinite(v[key]) and v[key] > 0, key
        assert v["step_s"] >= v["rollout_s"]
    assert result["variants"]["prototype"]["speedup_vs_prototype"] == 1.0


def test_bench_rejects_an_unknown_engine_as_a_user_error(tmp_path):
    out = subprocess.run([str(Path(sys.executable).with_name("grpo-ao")), "bench", "--config", "tiny",
                          "--engines", "hf,fast", f"--output-dir={tmp_path}"], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert "--engines" in out.stderr and "Traceback" not in out.stderr


def test_prototype_extraction_and_prompts_equal_ours(tmp_path):
    cfg = load_config("tiny", [f"logging.output_dir={tmp_path}", *SMALL])
    model, tokenizer = load_oracle(cfg, trainable=False)
    tasks = task_sampler(cfg.data, tokenizer).next_batch(3)
    spec = oracle_spec(cfg)
    ours = build_oracle_inputs(model, tokenizer, tasks, spec=spec)
    theirs = bench.prototype_inputs(model, tokenizer, tasks, spec=spec)
    assert torch.equal(ours.prompt_ids, theirs.prompt_ids) and ours.positions == theirs.positions
    assert ours.layers == theirs.layers
    for a, b in zip(ours.vectors, theirs.vectors, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_prototype_rollouts_are_one_group_per_prompt_forced_to_length(tmp_path):
    cfg = load_config("tiny", [f"logging.output_dir={tmp_path}", *SMALL])
    model, tokenizer = load_oracle(cfg, trainable=False)
    spec = oracle_spec(cfg)
    inputs = build_oracle_inputs(model, tokenizer, task_sampler(cfg.data, tokenizer).next_batch(2), spec=spec)
    groups = bench.prototype_rollouts(model, tokenizer, inputs, SamplingConfig(3, max_new_tokens=5, min_new_tokens=5),
                                      spec=spec)
    assert len(groups) == 2
    for g in groups:
        assert g.completion_ids.shape == (3, 5) and bool(g.prompt_mask.all()), "unpadded rows of one prompt"
        assert int(g.lengths.sum()) == 3 * 5


def _unpadded(group: Rollouts) -> Rollouts:
    """The rows of one prompt without their (shared) left padding."""
    pad = int((group.prompt_mask[0] == 0).sum())
    return dataclasses.replace(group, prompt_ids=group.prompt_ids[:, pad:], prompt_mask=group.prompt_mask[:, pad:],
                               positions=[[p - pad for p in pos] for pos in group.positions])


@pytest.mark.parametrize("prefix_shared", [True, False])
def test_prototype_update_and_micro_batched_update_give_the_same_gradient(tmp_path, prefix_shared):
    cfg = load_config("tiny", [f"logging.output_dir={tmp_path}", *SMALL])
    seed_everything(cfg.seed)
    model, tokenizer = load_oracle(cfg)
    spec = oracle_spec(cfg)
    tasks = task_sampler(cfg.data, tokenizer).next_batch(16)
    inputs = next(x for x in (build_oracle_inputs(model, tokenizer, [tasks[0], t], spec=spec) for t in tasks[1:])
                  if (x.prompt_mask == 0).any())  # two prompts of different token lengths
    rollouts = generate_rollouts(model, tokenizer, inputs, SamplingConfig(2, max_new_tokens=6), spec=spec)
    assert (inputs.prompt_mask == 0).any(), "the prompts should differ in length so padding is exercised"
    params = trainable_parameters(model)
    frozen = torch.optim.SGD(params, lr=0.0)  # the step must not move the weights between the two passes

    bench.micro_batched_update(model, rollouts, frozen, 3, spec=spec, temperature=1.0, prefix_shared=prefix_shared)
    ours = [p.grad.clone() for p in params]
    # the prototype's groups: each prompt's rows unpadded (as it prompted them), same completions
    groups = [_unpadded(rollouts.select(range(b * 2, b * 2 + 2))) for b in range(2)]
    bench.prototype_update(model, groups, frozen, spec=spec, temperature=1.0)
    theirs = [p.grad.clone() for p in params]
    assert any(g.abs().sum() > 0 for g in ours), "the surrogate loss produced no gradient"
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_bench_without_the_prototype_reports_the_model_and_the_update_alone(tmp_path):
    cfg = load_config("tiny", [f"logging.output_dir={tmp_path}", "model.source=random", *SMALL])
    result = bench.run(cfg, repeats=1, engines=("hf",), prototype=False, compare_update=False)
    assert set(result["variants"]) == {"hf"} and result["variants"]["hf"]["speedup_vs_prototype"] is None
    assert result["update_speedup_prefix_shared"] is None
    hf = result["variants"]["hf"]
    assert hf["warmup_s"] > 0 and hf["update_peak_memory_mb"] is None, "per-update peak memory only on CUDA"
    facts = result["model"]
    # qwen3-tiny, fp32: 8 blocks of K/V 2 heads × 16 → 2·8·2·16·4 bytes per token; weights 4 bytes per parameter
    assert facts["kv_bytes_per_token"] == 2 * 8 * 2 * 16 * 4
    assert facts["weight_bytes"] == 4 * facts["parameters"] and 0 < facts["trainable_parameters"] < facts["parameters"]
    assert (result["source"], result["compiled"]) == ("random", False) and result["prompt_tokens_mean"] > 0
