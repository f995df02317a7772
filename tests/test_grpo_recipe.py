"""The GRPO trainer on the tiny model: end-to-end CLI run, resume after a kill, invariances of the
update path (micro-batching, accumulation, masking, permutation), the KL reference adapter, and judge
failures masked through the whole loop.

Every run starts from the session's format-SFT'd adapter (`sft_adapter` in conftest.py): a fresh
LoRA never writes the tag, so all its rewards are equal and nothing would move.
"""

import contextlib
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import grpo_ao.judge
from grpo_ao import metrics as M
from grpo_ao.config import load_config, to_dict
from grpo_ao.errors import GrpoAoError
from grpo_ao.format import parse_epistemic_status
from grpo_ao.judge import JudgeResult, build_judge
from grpo_ao.loss import group_advantages
from grpo_ao.metrics import ALL_METRICS, read_metrics
from grpo_ao.recipes import grpo, grpo_tag
from grpo_ao.recipes.setup import load_oracle, oracle_spec, task_sampler, trainable_parameters
from grpo_ao.rollout import build_oracle_inputs, group_micro_batches

GRPO_AO = Path(sys.executable).with_name("grpo-ao")

FAST = [
    # tiny.yaml's lr (5e-3) makes the tiny oracle's groups collapse to identical answers (zero reward
    # spread, no gradient) within 3-4 steps; at 1e-3 the first ~6 steps all have spread and gradient.
    "grpo.lr=1e-3",
    "logging.progress=false",
]
"""Overrides every trainer test adds to the tiny config (with model.adapter=<sft adapter>)."""

STEP_METRICS = set(M.GRPO_METRICS) - (set() if torch.cuda.is_available() else {M.PERF_PEAK_MEMORY_GB})
"""What one GRPO step logs: every trainer metric (peak memory only where CUDA is available)."""


def _cfg(sft_adapter, run_dir, *overrides):
    return load_config("tiny", [f"model.adapter={sft_adapter}", f"logging.output_dir={run_dir}", *FAST,
                                *overrides])


def _steps(run_dir):
    return {r["step"]: r for r in read_metrics(run_dir, last_per_step=True)}


def _adapter(path):
    return load_file(str(Path(path) / "adapter_model.safetensors"))


def _samples(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "samples.jsonl").read_text().splitlines()]


# --- 1. end to end through the real CLI ----------------------------------------------------------


def test_cli_grpo_two_steps_moves_lora_and_writes_metrics_checkpoint_and_run_files(sft_adapter, tmp_path):
    run_dir = tmp_path / "run"
    overrides = [f"model.adapter={sft_adapter}", *FAST, "logging.samples_every=1", "logging.checkpoint_every=2"]
    env = {**os.environ, "GRPO_AO_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(GRPO_AO), "grpo", "--config", "tiny", *overrides, "--output-dir", str(run_dir),
                           "--max-steps", "2"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GRPO done" in proc.stdout

    # metrics: one record per step, exactly the trainer's metric names, all of them known
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        logged = set(r) - {"step", "time"}
        assert logged <= set(ALL_METRICS), logged - set(ALL_METRICS)
        assert logged == STEP_METRICS, STEP_METRICS ^ logged
        hist = [r[M.confidence_hist_key(x)] for x in M.CONFIDENCE_LEVELS]
        assert math.isclose(sum(hist), 1.0 if r[M.FORMAT_PARSE_RATE] > 0 else 0.0, abs_tol=1e-9)
        assert r[M.TIME_STEP_S] > 0 and r[M.PERF_TOKENS_PER_S] > 0 and r[M.JUDGE_FAILURES] == 0
        assert r[M.OPTIM_LR] == 1e-3  # FAST; tiny.yaml: constant schedule, no warm-up
    assert any(r[M.GROUP_ZERO_STD_FRAC] < 1 and r[M.OPTIM_GRAD_NORM] > 0 for r in records)

    # samples (samples_every=1): B=4 rows per step, G=4 completions each; they agree with the metrics
    samples = _samples(run_dir)
    assert [s["step"] for s in samples] == [1] * 4 + [2] * 4
    for step, r in ((1, records[0]), (2, records[1])):
        rows = [s for s in samples if s["step"] == step]
        comps = [c for s in rows for c in s["completions"]]
        assert len(comps) == 16
        parsed = [c["confidence"] is not None for c in comps]
        assert r[M.FORMAT_PARSE_RATE] == pytest.approx(sum(parsed) / 16, abs=1e-9)
        assert r[M.REWARD_MEAN] == pytest.approx(sum(c["reward"] for c in comps) / 16, abs=1e-6)
        # the reference judge dedupes a step's items and counts one call per distinct item; parse failures
        # are not sent (their reward is fixed)
        distinct = {(s["context"], s["question"], parse_epistemic_status(c["text"]).answer)
                    for s in rows for c in s["completions"] if parse_epistemic_status(c["text"]).ok}
        assert r[M.JUDGE_CALLS] == len(distinct)

    # the LoRA weights moved away from the starting adapter
    ckpt = run_dir / "checkpoints" / "step-000002"
    start, final = _adapter(sft_adapter), _adapter(ckpt / "adapter")
    assert start.keys() == final.keys() and len(start) == 8 * 7 * 2  # 8 layers x 7 modules x (A, B)
    moved = [k for k in start if not torch.equal(start[k], final[k])]
    assert len(moved) == len(start), f"{len(start) - len(moved)} LoRA tensors did not move"

    # checkpoint: complete, with every part; the adapter loads with plain peft on the tiny base
    assert {p.name for p in ckpt.iterdir()} == {"COMPLETE", "adapter", "optimizer.pt", "scheduler.pt", "rng.pt",
                                                "trainer_state.json"}
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["sampler"]["draws"] == 8 and state["judge_cache"]
    for name in ("optimizer.pt", "scheduler.pt", "rng.pt"):
        assert torch.load(ckpt / name, weights_only=True)
    from peft import PeftModel, get_peft_model_state_dict

    from grpo_ao.models import build_tiny_model_and_tokenizer

    plain = PeftModel.from_pretrained(build_tiny_model_and_tokenizer(0)[0], str(ckpt / "adapter"))
    loaded = get_peft_model_state_dict(plain)
    assert loaded.keys() == final.keys()
    for k in final:
        torch.testing.assert_close(loaded[k], final[k], atol=0, rtol=0)

    # run files
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2 and Path(summary["adapter"]) == ckpt / "adapter"
    # window_mean over 2 steps: first 20 % = [0, max(1, round(0.4))) = step 1; last 20 % = [1, 2) = step 2
    assert summary["reward_first_20pct"] == pytest.approx(records[0][M.REWARD_MEAN], abs=1e-12)
    assert summary["reward_last_20pct"] == pytest.approx(records[1][M.REWARD_MEAN], abs=1e-12)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    expected = load_config("tiny", [*overrides, f"logging.output_dir={run_dir}", "grpo.max_steps=2"])
    assert load_config(str(run_dir / "config.yaml")) == expected and saved == to_dict(expected)
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["seed"] == 0 and info["config"]["stage"] == "grpo" and "git_commit" in info


# --- 2. resume after a kill ----------------------------------------------------------------------


class _Killed(KeyboardInterrupt):
    pass


def test_resume_after_kill_reproduces_the_uninterrupted_run(sft_adapter, tmp_path, monkeypatch):
    overrides = ["grpo.max_steps=4", "logging.checkpoint_every=2", "logging.samples_every=0"]
    full = grpo.run(_cfg(sft_adapter, tmp_path / "full", *overrides))

    # the second run dies after step 3 was logged (checkpoint at 2): the kind of kill --resume is for
    real_run_sinks = grpo.run_sinks

    def dying_sinks(*args, **kwargs):
        sinks = real_run_sinks(*args, **kwargs)
        log = sinks.log

        def log_then_die(metrics, step):
            log(metrics, step)
            if step == 3:
                raise _Killed

        sinks.log = log_then_die
        return sinks

    cfg = _cfg(sft_adapter, tmp_path / "killed", *overrides)
    monkeypatch.setattr(grpo, "run_sinks", dying_sinks)
    with pytest.raises(_Killed):
        grpo.run(cfg)
    monkeypatch.setattr(grpo, "run_sinks", real_run_sinks)
    assert grpo.latest_checkpoint(cfg.run_dir).name == "step-000002"
    resumed = grpo.run(cfg, resume=True)

    assert [r["step"] for r in read_metrics(cfg.run_dir)] == [1, 2, 3, 3, 4]  # step 3 redone
    a, b = _steps(tmp_path / "full"), _steps(cfg.run_dir)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    keys = [M.REWARD_MEAN, M.REWARD_STD, M.FORMAT_PARSE_RATE, M.CALIB_CONFIDENCE_MEAN, M.ROLLOUT_LEN_MEAN,
            M.ADV_STD, M.LOSS_POLICY, M.LOSS_TOTAL, M.OPTIM_GRAD_NORM, M.JUDGE_CALLS]
    assert any(a[s][M.OPTIM_GRAD_NORM] > 0 for s in (3, 4)), "steps 3-4 must train for this test to mean anything"
    for step in (3, 4):
        for k in keys:
            assert b[step][k] == pytest.approx(a[step][k], abs=1e-6, nan_ok=True), (step, k)
    assert resumed["steps"] == full["steps"] == 4
    assert resumed["reward_last_20pct"] == pytest.approx(full["reward_last_20pct"], abs=1e-6)
    final_a, final_b = _adapter(full["adapter"]), _adapter(resumed["adapter"])
    for k in final_a:
        torch.testing.assert_close(final_b[k], final_a[k], atol=1e-6, rtol=0)


# --- 3. invariances of the update path, on real rollouts -----------------------------------------


@pytest.fixture(scope="module")
def setup(sft_adapter, tmp_path_factory):
    """The SFT'd oracle and one real chunk of B=4 tasks × G=4 rollouts (advantages replaced below)."""
    cfg = _cfg(sft_adapter, tmp_path_factory.mktemp("update"))
    torch.manual_seed(0)
    model, tokenizer = load_oracle(cfg)
    sampler = task_sampler(cfg.data, tokenizer)
    judge = build_judge(cfg.judge)
    engine = grpo.start_engine(cfg, model, tokenizer, cfg.run_dir)
    chunk, = grpo.collect_chunks(cfg, model, tokenizer, engine, sampler, judge, 1, {"rollout": 0.0, "judge": 0.0})
    if chunk.rollouts.lengths.min() == chunk.rollouts.lengths.max():
        # the tiny oracle rarely stops by itself; the normaliser tests need completions of different
        # lengths, so end some early (the loss only sees ids and masks)
        mask = chunk.rollouts.completion_mask.clone()
        for row in range(mask.shape[0]):
            mask[row, mask.shape[1] - row % 5:] = 0
        chunk = dataclasses.replace(chunk, rollouts=dataclasses.replace(chunk.rollouts, completion_mask=mask))
    assert chunk.rollouts.lengths.min() < chunk.rollouts.lengths.max(), "want completions of different lengths"
    return cfg, model, tokenizer, chunk


def _with(cfg, **grpo_fields):
    return dataclasses.replace(cfg, grpo=dataclasses.replace(cfg.grpo, **grpo_fields))


def _chunk(chunk, rewards=None, valid=None, **fields):
    """A copy of `chunk` with advantages recomputed from `rewards` [N] (default: fixed random ones)."""
    g = chunk.rollouts.num_generations
    n = len(chunk.valid)
    if rewards is None:
        rewards = torch.rand(n, generator=torch.Generator().manual_seed(0))  # [N]; every group has spread
    valid = torch.ones(n, dtype=torch.bool) if valid is None else valid
    adv = group_advantages(rewards.view(-1, g), valid.view(-1, g)).view(-1)  # [N]
    return dataclasses.replace(chunk, advantages=adv, valid=valid, **fields)


@contextlib.contextmanager
def _gradient_step(params, scale):
    """Apply p -= scale · p.grad to the LoRA parameters inside the block, then restore them and clear the grads."""
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p -= scale * p.grad
        yield
    finally:
        with torch.no_grad():
            for p, old in zip(params, saved):
                p.copy_(old)
            for p in params:
                p.grad = None


def _grads(cfg, model, chunks, num_rollouts=None):
    """LoRA gradient (flattened) and summed loss stats of one `update` call."""
    num_rollouts = num_rollouts or sum(len(c.valid) for c in chunks)
    num_tokens = int(sum(c.rollouts.completion_mask[c.valid].sum() for c in chunks))
    model.zero_grad(set_to_none=True)
    model.train()
    stats = grpo.update(cfg, model, chunks, num_rollouts, num_tokens)
    model.eval()
    grad = torch.cat([p.grad.flatten() for p in trainable_parameters(model)])
    return grad, sum(s.loss for s in stats), len(stats)


@pytest.mark.parametrize("loss_type", ["dr_grpo", "grpo", "dapo"])
def test_update_micro_batch_1_equals_whole_batch(setup, loss_type):
    cfg, model, _, chunk = setup
    chunk = _chunk(chunk)
    g1, loss1, n1 = _grads(_with(cfg, micro_batch_size=1, loss_type=loss_type), model, [chunk])
    g16, loss16, n16 = _grads(_with(cfg, micro_batch_size=16, loss_type=loss_type), model, [chunk])
    assert (n1, n16) == (16, 1)  # 16 forwards of one rollout vs one forward of 16
    assert g16.abs().max() > 1e-3
    torch.testing.assert_close(g1, g16, atol=1e-6, rtol=1e-5)
    assert loss1 == pytest.approx(loss16, abs=1e-6)


def test_update_accumulating_4_one_prompt_chunks_equals_one_4_prompt_chunk(setup):
    """Each 1-prompt chunk is rendered and padded on its own (as with prompts_per_step=1,
    grad_accum_steps=4); the rollouts (ids, vectors) are the same."""
    cfg, model, tokenizer, chunk = setup
    chunk = _chunk(chunk)
    g = chunk.rollouts.num_generations
    small = []
    for b, task in enumerate(chunk.tasks):
        rows = list(range(b * g, (b + 1) * g))
        alone = build_oracle_inputs(model, tokenizer, [task], spec=oracle_spec(cfg))
        assert alone.prompt_ids.shape[1] <= chunk.rollouts.prompt_ids.shape[1]
        r = chunk.rollouts.select(rows)
        r = dataclasses.replace(r, prompt_ids=alone.prompt_ids.repeat(g, 1), prompt_mask=alone.prompt_mask.repeat(g, 1),
                                positions=alone.positions * g)
        small.append(dataclasses.replace(chunk, tasks=[task], rollouts=r, advantages=chunk.advantages[rows],
                                         valid=chunk.valid[rows]))
    assert len({c.rollouts.prompt_ids.shape[1] for c in small}) > 1, "want prompts of different lengths"
    cfg = _with(cfg, loss_type="dr_grpo", micro_batch_size=3)
    whole, loss_whole, _ = _grads(cfg, model, [chunk])
    accumulated, loss_acc, _ = _grads(cfg, model, small)
    torch.testing.assert_close(accumulated, whole, atol=1e-6, rtol=1e-5)
    assert loss_acc == pytest.approx(loss_whole, abs=1e-6)


def test_update_ignores_a_rollout_masked_for_judge_failure(setup):
    """With beta > 0 a rollout in the loss moves the gradient even at advantage 0 (through the KL),
    so changing the ids of an included rollout would show."""
    cfg, model, tokenizer, chunk = setup
    cfg = _with(cfg, beta=0.5, micro_batch_size=4)
    n, t = chunk.rollouts.completion_ids.shape
    ref = chunk.rollouts.completion_mask * -0.7 - 1.0  # [N, T]: any logprobs different from the policy's
    valid = torch.ones(n, dtype=torch.bool)
    valid[5] = False  # the judge failed on rollout 5 (group 1)
    base = _chunk(chunk, valid=valid, ref_logprobs=ref)
    assert base.advantages[5] == 0
    other_ids = torch.randint(0, len(tokenizer) - 2, (t,), generator=torch.Generator().manual_seed(1))
    ids = chunk.rollouts.completion_ids.clone()
    ids[5] = other_ids
    mask = chunk.rollouts.completion_mask.clone()
    mask[5] = 1
    changed = dataclasses.replace(base, rollouts=dataclasses.replace(chunk.rollouts, completion_ids=ids,
                                                                     completion_mask=mask))
    g_base, loss_base, _ = _grads(cfg, model, [base], num_rollouts=n)
    g_changed, loss_changed, _ = _grads(cfg, model, [changed], num_rollouts=n)
    assert torch.equal(g_base, g_changed) and loss_base == loss_changed
    # control: the same change to a valid rollout does move the gradient
    valid_changed = dataclasses.replace(changed, valid=torch.ones(n, dtype=torch.bool))
    g_control, _, _ = _grads(cfg, model, [valid_changed], num_rollouts=n)
    assert not torch.allclose(g_control, g_base, atol=1e-6)


def test_update_is_invariant_to_permuting_rollouts_within_a_group(setup):
    cfg, model, _, chunk = setup
    cfg = _with(cfg, micro_batch_size=3)  # G = 4 > 3: each group is cut in two, so the pieces' members change too
    rewards = torch.rand(16, generator=torch.Generator().manual_seed(2))
    g_ref, loss_ref, _ = _grads(cfg, model, [_chunk(chunk, rewards)])
    perm = torch.tensor([2, 0, 3, 1, 4, 5, 6, 7, 11, 8, 10, 9, 12, 13, 14, 15])  # within groups 0 and 2
    permuted = dataclasses.replace(chunk, rollouts=chunk.rollouts.select(perm.tolist()))
    g_perm, loss_perm, _ = _grads(cfg, model, [_chunk(permuted, rewards[perm])])
    torch.testing.assert_close(g_perm, g_ref, atol=1e-6, rtol=1e-5)
    assert loss_perm == pytest.approx(loss_ref, abs=1e-6)


# --- 4. KL against the frozen starting adapter ---------------------------------------------------


def test_kl_reference_adapter_changes_the_gradient_and_stays_frozen(setup, sft_adapter):
    cfg, model, _, chunk = setup
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    start = {k: v.clone() for k, v in get_peft_model_state_dict(model).items()}  # clone: views of the weights
    model.add_adapter(grpo.REFERENCE_ADAPTER, model.peft_config["default"])
    try:
        set_peft_model_state_dict(model, start, adapter_name=grpo.REFERENCE_ADAPTER)
        model.set_adapter("default")
        with torch.no_grad():  # the trained adapter has moved away from the reference
            for name, p in model.named_parameters():
                if "lora_B.default" in name:
                    p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
        own = grpo.fixed_logprobs(cfg, model, chunk)  # [N, T]
        with grpo.reference_adapter(model):
            ref = grpo.fixed_logprobs(cfg, model, chunk)  # [N, T]
        m = chunk.rollouts.completion_mask.bool()
        assert (own - ref)[m].abs().max() > 1e-3
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable and all(".default." in n for n in trainable), "reference adapter must stay frozen"

        kl_chunk = _chunk(chunk, ref_logprobs=ref)
        g0, _, _ = _grads(_with(cfg, beta=0.0), model, [kl_chunk])
        g1, _, _ = _grads(_with(cfg, beta=0.1), model, [kl_chunk])
        assert (g1 - g0).abs().max() > 1e-5
        ref_weights = {n: p for n, p in model.named_parameters() if f".{grpo.REFERENCE_ADAPTER}." in n}
        assert ref_weights and all(p.grad is None for p in ref_weights.values())
        for k, v in get_peft_model_state_dict(model, adapter_name=grpo.REFERENCE_ADAPTER).items():
            torch.testing.assert_close(v, start[k], atol=0, rtol=0)
    finally:
        model.set_adapter("default")
        model.delete_adapter(grpo.REFERENCE_ADAPTER)
        set_peft_model_state_dict(model, start)
        model.zero_grad(set_to_none=True)


def test_run_with_beta_logs_kl_and_only_then_changes_the_update(sft_adapter, tmp_path):
    """Step 1: policy == reference, so k3 = 0 and its gradient 1 − exp(ref − lp) = 0: the step is the
    beta = 0 step. Step 2 samples the same rollouts (same weights, same RNG) but the policy has moved:
    KL > 0 and the gradient differs."""
    runs = {}
    for beta in (0.0, 0.5):
        cfg = _cfg(sft_adapter, tmp_path / f"beta{beta}", "grpo.max_steps=2", f"grpo.beta={beta}",
                   "logging.samples_every=0")
        grpo.run(cfg)
        runs[beta] = _steps(cfg.run_dir)
    off, on = runs[0.0], runs[0.5]
    assert on[1][M.LOSS_KL] == pytest.approx(0.0, abs=1e-7)
    assert on[1][M.OPTIM_GRAD_NORM] == pytest.approx(off[1][M.OPTIM_GRAD_NORM], abs=1e-6)
    assert on[2][M.REWARD_MEAN] == pytest.approx(off[2][M.REWARD_MEAN], abs=1e-9)  # same rollouts
    assert off[2][M.LOSS_KL] == 0.0 and on[2][M.LOSS_KL] > 1e-4
    assert abs(on[2][M.OPTIM_GRAD_NORM] - off[2][M.OPTIM_GRAD_NORM]) > 1e-4


# --- 5. judge failures through the trainer -------------------------------------------------------


def test_judge_failures_are_masked_counted_and_excluded_from_the_loss(sft_adapter, tmp_path, monkeypatch):
    """Step 1: the judge fails on every item; step 2: on every other item (odd global index)."""
    import contextlib

    calls, rows_in_loss = [], []
    real_score, real_logprobs = grpo_ao.judge.score_sync, grpo.injected_logprobs

    def flaky_score(judge, items):
        results = real_score(judge, items)
        fail = (lambda i: True) if not calls else (lambda i: i % 2 == 1)
        calls.append(len(items))
        failed = JudgeResult(None, None, "", False, 0.0, 3, "test: judge unreachable")
        return [failed if fail(i) else r for i, r in enumerate(results)]

    @contextlib.contextmanager
    def counting_logprobs(model, rollouts, *args, **kwargs):
        rows_in_loss.append(len(rollouts.texts))
        with real_logprobs(model, rollouts, *args, **kwargs) as logprobs:
            yield logprobs

    monkeypatch.setattr(grpo_ao.judge, "score_sync", flaky_score)
    monkeypatch.setattr(grpo, "injected_logprobs", counting_logprobs)
    # every answer is sent (also parse failures), so the failing pattern is by global rollout index
    cfg = _cfg(sft_adapter, tmp_path / "run", "judge.score_parse_failures=true", "grpo.max_steps=2",
               "logging.samples_every=1",
               "logging.checkpoint_every=1", "logging.keep_last=2", "grpo.micro_batch_size=5")
    summary = grpo.run(cfg)
    assert calls == [16, 16] and summary["steps"] == 2
    steps, samples = _steps(cfg.run_dir), {}
    for s in _samples(cfg.run_dir):
        samples.setdefault(s["step"], []).extend(s["completions"])
    for step, failing in ((1, lambda i: True), (2, lambda i: i % 2 == 1)):
        comps = samples[step]
        assert len(comps) == 16
        # masked = the judge failed on a PARSED answer; a parse failure keeps its penalty either way
        masked = [failing(i) and c["confidence"] is not None for i, c in enumerate(comps)]
        assert steps[step][M.JUDGE_MASKED_FRAC] == pytest.approx(sum(masked) / 16, abs=1e-9)
        for c, m in zip(comps, masked):
            assert (c["reward"] is None) == m
            if c["confidence"] is None:
                assert c["reward"] == -0.5
            if m:
                assert c["advantage"] == 0
        for j in range(0, 16, 4):  # A = r − mean over the valid members of each group
            kept = [c for c, m in zip(comps[j:j + 4], masked[j:j + 4]) if not m]
            mean = sum(c["reward"] for c in kept) / max(len(kept), 1)
            for c in kept:
                assert c["advantage"] == pytest.approx(c["reward"] - mean, abs=6e-5)  # advantage rounded to 4 places
        kept_rewards = [c["reward"] for c, m in zip(comps, masked) if not m]
        if kept_rewards:
            assert steps[step][M.REWARD_MEAN] == pytest.approx(sum(kept_rewards) / len(kept_rewards), abs=1e-6)
    # step 1: every judged answer masked, every kept rollout a parse failure at −0.5 → no gradient
    start = _adapter(sft_adapter)
    after_1 = _adapter(cfg.run_dir / "checkpoints" / "step-000001" / "adapter")
    assert all(torch.equal(start[k], after_1[k]) for k in start), "a step without reward spread must not move"
    valid_1 = [i for i, c in enumerate(samples[1]) if c["confidence"] is None]
    valid_2 = [i for i, c in enumerate(samples[2]) if not (i % 2 == 1 and c["confidence"] is not None)]

    def micro(rows):  # micro-batches of at most 5 over the valid rollouts only, each prompt's (G = 4) rows together
        return [len(mb) for mb in group_micro_batches(rows, 4, 5)]

    assert rows_in_loss == micro(valid_1) + micro(valid_2)


def test_a_judge_outage_stops_the_run_with_a_user_error_and_keeps_checkpoints(sft_adapter, tmp_path, monkeypatch,
                                                                               capsys):
    """Every judge call failing for max_judge_outage_steps consecutive steps → GrpoAoError, not silent noise."""
    down = JudgeResult(None, None, "", False, 0.0, 6, "HTTP 401: invalid key")
    monkeypatch.setattr(grpo_ao.judge, "score_sync", lambda judge, items: [down] * len(items))
    cfg = _cfg(sft_adapter, tmp_path / "run", "grpo.max_steps=6", "grpo.max_judge_outage_steps=2",
               "logging.checkpoint_every=1")
    with pytest.raises(GrpoAoError, match="judge failed for every rollout in 2 consecutive steps"):
        grpo.run(cfg)
    out = capsys.readouterr().out
    assert out.count("the judge failed for 100% of rollouts") == 2 and "HTTP 401: invalid key" in out
    assert sorted(_steps(cfg.run_dir)) == [1, 2]
    assert (cfg.run_dir / "checkpoints" / "step-000002" / "COMPLETE").exists()


def test_loss_forward_has_no_dropout_so_the_first_ratio_is_exactly_one(tiny_model, tokenizer):
    """LoRA dropout must not make the loss forward a different policy from the one that sampled."""
    from grpo_ao.models import LoraSettings, attach_lora
    from grpo_ao.rollout import SamplingConfig, completion_logprobs, generate_rollouts

    model = attach_lora(tiny_model, LoraSettings(r=4, dropout=0.5, target_modules=("q_proj", "v_proj")))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained-looking adapter, so dropout would change the output
    cfg = load_config("tiny")
    tasks = task_sampler(cfg.data, tokenizer).next_batch(2)
    spec = oracle_spec(cfg)
    assert spec.mode == "merged" and spec.injection_layer == 1 and spec.coef == 1.0
    inputs = build_oracle_inputs(model, tokenizer, tasks, spec=spec)
    rollouts = generate_rollouts(model, tokenizer, inputs, SamplingConfig(2, max_new_tokens=6), spec=spec)
    chunk = grpo.Chunk(tasks, rollouts, inputs.layers, [], [], [], torch.zeros(4), torch.ones(4, dtype=torch.bool))
    old = grpo.fixed_logprobs(dataclasses.replace(cfg, grpo=dataclasses.replace(cfg.grpo, micro_batch_size=4)),
                              model, chunk)
    mask = rollouts.completion_mask.bool()
    with grpo.train_without_dropout(model):
        assert model.training
        new = completion_logprobs(model, rollouts, cfg.sampling.temperature, spec=spec)
    torch.testing.assert_close(new.detach()[mask], old[mask], atol=1e-5, rtol=1e-5)
    model.train()
    torch.manual_seed(0)
    with_dropout = completion_logprobs(model, rollouts, cfg.sampling.temperature, spec=spec).detach()
    assert not torch.allclose(with_dropout[mask], old[mask], atol=1e-3), "control: dropout does change it"


def test_split_routing_gives_tag_tokens_the_calibration_advantage_and_answer_tokens_the_info_one(setup):
    from grpo_ao.format import tag_token_mask

    cfg, model, tokenizer, chunk = setup
    g = chunk.rollouts.num_generations
    routed = grpo_tag.routed_advantages(tokenizer, chunk.rollouts, chunk.breakdowns,
                                    torch.tensor([b.total if b.total is not None else math.nan for b in chunk.breakdowns]),
                                    chunk.valid, cfg.reward.lam)  # [N, T]
    scored = [b.brier is not None for b in chunk.breakdowns]
    assert any(scored), "the SFT'd oracle parses some answers"
    tag_mask = tag_token_mask(tokenizer, chunk.rollouts.completion_ids, scored)
    for i, bd in enumerate(chunk.breakdowns):
        if not chunk.valid[i]:
            continue
        if bd.brier is None:  # a parse failure keeps the sequence advantage on every token
            torch.testing.assert_close(routed[i], torch.full_like(routed[i], float(chunk.advantages[i])))
            continue
        tag_value, answer_value = routed[i][tag_mask[i]], routed[i][~tag_mask[i]]
        assert tag_mask[i].any() and len(set(tag_value.tolist())) == 1 and len(set(answer_value.tolist())) == 1
        # recompute the two parts of this rollout's group by hand from the breakdowns
        group = range(i // g * g, i // g * g + g)
        members = [j for j in group if chunk.breakdowns[j].brier is not None and chunk.valid[j]]
        valid = [j for j in group if chunk.valid[j]]
        delta = (sum(chunk.breakdowns[j].total for j in members) / len(members)
                 - sum(chunk.breakdowns[j].total for j in valid) / len(valid))
        calib = [-cfg.reward.lam * chunk.breakdowns[j].brier for j in members]
        info = [chunk.breakdowns[j].info + chunk.breakdowns[j].bonus for j in members]
        assert float(tag_value[0]) == pytest.approx(-cfg.reward.lam * bd.brier - sum(calib) / len(calib) + delta,
                                                    abs=1e-5)
        assert float(answer_value[0]) == pytest.approx(bd.info + bd.bonus - sum(info) / len(info) + delta, abs=1e-5)


def test_tag_routing_keeps_the_tag_advantage_and_gives_a_scored_answer_none(setup):
    from grpo_ao.format import tag_token_mask

    cfg, model, tokenizer, chunk = setup
    rewards = torch.tensor([b.total if b.total is not None else math.nan for b in chunk.breakdowns])
    split = grpo_tag.routed_advantages(tokenizer, chunk.rollouts, chunk.breakdowns, rewards, chunk.valid, cfg.reward.lam)
    tag = grpo_tag.routed_advantages(tokenizer, chunk.rollouts, chunk.breakdowns, rewards, chunk.valid, cfg.reward.lam,
                                 answer_credit=False)  # [N, T]
    scored = [b.brier is not None for b in chunk.breakdowns]
    tag_mask = tag_token_mask(tokenizer, chunk.rollouts.completion_ids, scored)
    assert any(scored) and tag_mask.any()
    for i, bd in enumerate(chunk.breakdowns):
        if bd.brier is None:  # a parse failure (or a masked rollout) is routed as with split
            torch.testing.assert_close(tag[i], split[i])
            continue
        torch.testing.assert_close(tag[i][tag_mask[i]], split[i][tag_mask[i]])
        assert not tag[i][~tag_mask[i]].any(), "the answer tokens of a scored rollout get no advantage"
    assert split[~tag_mask & torch.tensor(scored).unsqueeze(1)].any(), "control: with split the answers get some"


def test_tag_candidates_ask_each_prompt_once_per_tag_value(setup):
    from grpo_ao.format import tag_candidate_ids

    cfg, model, tokenizer, chunk = setup
    g = chunk.rollouts.num_generations
    candidates, shared = grpo_tag.tag_candidates(chunk, tag_candidate_ids(tokenizer), tokenizer.pad_token_id)
    assert candidates.num_generations == 11 and len(candidates.positions) == len(chunk.valid) // g * 11
    assert shared > 0, "the 11 tags share their opening tokens"
    for n in range(len(candidates.positions)):
        prompt = n // 11 * g  # the first rollout of the candidate's prompt
        assert candidates.positions[n] == chunk.rollouts.positions[prompt]
        torch.testing.assert_close(candidates.vectors[n], chunk.rollouts.vectors[prompt])
        torch.testing.assert_close(candidates.prompt_ids[n], chunk.rollouts.prompt_ids[prompt])
        ids = candidates.completion_ids[n][candidates.completion_mask[n].bool()]
        assert tokenizer.decode(ids) == f"[epistemic status: {n % 11}]"
        assert tokenizer.decode(ids[:shared]) == tokenizer.decode(candidates.completion_ids[0, :shared])


def test_tag_expectation_moves_the_tag_towards_the_judged_targets(setup):
    """One small SGD step on the closed-form term raises Σ_X π(X)·c(X, t) for the chunk's own targets; the
    sampled tag tokens of scored rollouts then carry no advantage (tag_credit=False)."""
    from grpo_ao.format import tag_candidate_ids, tag_token_mask
    from grpo_ao.rollout import completion_logprobs

    cfg, model, tokenizer, chunk = setup
    cfg = dataclasses.replace(cfg, grpo=dataclasses.replace(cfg.grpo, advantage_routing="tag", tag_expectation=True))
    tag_ids, g = tag_candidate_ids(tokenizer), chunk.rollouts.num_generations
    scored = torch.tensor([bd.brier is not None for bd in chunk.breakdowns])
    assert scored.any()
    rewards = torch.tensor([b.total if b.total is not None else math.nan for b in chunk.breakdowns])
    routed = grpo_tag.routed_advantages(tokenizer, chunk.rollouts, chunk.breakdowns, rewards, chunk.valid, cfg.reward.lam,
                                    answer_credit=False, tag_credit=False)  # [N, T]
    assert not routed[scored].any(), "a scored rollout's tokens get no sampled advantage"
    sampled = grpo_tag.routed_advantages(tokenizer, chunk.rollouts, chunk.breakdowns, rewards, chunk.valid, cfg.reward.lam,
                                     answer_credit=False)
    tag_mask = tag_token_mask(tokenizer, chunk.rollouts.completion_ids, scored.tolist())
    assert sampled[tag_mask].any(), "control: without the expectation the sampled tags carry the advantage"

    targets = torch.tensor([float(j.informativeness) if ok else 0.0 for j, ok in zip(chunk.judged, scored.tolist())])
    x = torch.arange(11) / 10

    def expected_value() -> float:  # Σ_i Σ_j scored Σ_X π_i(X)·c(X, t_ij)
        candidates, _ = grpo_tag.tag_candidates(chunk, tag_ids, tokenizer.pad_token_id)
        lp = completion_logprobs(model, candidates, 1.0, spec=oracle_spec(cfg))
        pi = torch.softmax((lp * candidates.completion_mask).sum(dim=1).view(-1, 11), dim=-1)  # [B, 11]
        c = -cfg.reward.lam * (x.view(1, 1, -1) - targets.view(-1, g, 1)) ** 2  # [B, G, 11]
        return float((pi.unsqueeze(1) * c * scored.view(-1, g, 1)).sum())

    params = trainable_parameters(model)
    before = expected_value()
    model.zero_grad(set_to_none=True)
    n = len(chunk.valid)
    grpo_tag.tag_expectation_backward(cfg, model, chunk, tag_ids, tokenizer.pad_token_id, n,
                                  int(chunk.rollouts.completion_mask.sum()))
    grads = [p.grad for p in params if p.grad is not None]
    assert grads and any(gr.abs().sum() > 0 for gr in grads)
    with _gradient_step(params, 20.0):
        after = expected_value()
    assert after > before


def test_format_anchor_alone_raises_the_tags_opening_after_each_prompt(setup):
    """With λ = 0 the tag term has no gradient, so one SGD step on the chunk's tag backward is the anchor's:
    it raises log p(`[epistemic status: ` | prompt) for the chunk's prompts; with format_anchor 0 nothing moves."""
    from grpo_ao.format import tag_candidate_ids
    from grpo_ao.rollout import completion_logprobs

    cfg, model, tokenizer, chunk = setup
    tag_ids = tag_candidate_ids(tokenizer)
    candidates, shared = grpo_tag.tag_candidates(chunk, tag_ids, tokenizer.pad_token_id)

    def opening() -> float:
        lp = completion_logprobs(model, candidates, 1.0, spec=oracle_spec(cfg))  # [B·11, T']
        return float(lp[::11, :shared].sum())

    params = trainable_parameters(model)
    n, tokens = len(chunk.valid), int(chunk.rollouts.completion_mask.sum())
    for anchor in (0.0, 1.0):
        run_cfg = dataclasses.replace(cfg, reward=dataclasses.replace(cfg.reward, lam=0.0), grpo=dataclasses.replace(
            cfg.grpo, advantage_routing="tag", tag_expectation=True, format_anchor=anchor))
        before = opening()
        model.zero_grad(set_to_none=True)
        grpo_tag.tag_expectation_backward(run_cfg, model, chunk, tag_ids, tokenizer.pad_token_id, n, tokens)
        moved = any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
        assert moved == (anchor > 0)
        with _gradient_step(params, 20.0):
            if anchor > 0:
                assert opening() > before


def test_answer_anchor_raises_each_prompts_reference_answer_after_its_tag(setup):
    """One SGD step of `answer_anchor_backward` raises log p(reference | prompt, `[epistemic status: 5] `) summed over
    the chunk's prompts, and moves nothing through the tag's own tokens (only the answer's are in the loss)."""
    from grpo_ao.format import tagged_answer_ids
    from grpo_ao.rollout import Rollouts, completion_logprobs, right_pad

    cfg, model, tokenizer, chunk = setup
    g = chunk.rollouts.num_generations
    anchors = [tagged_answer_ids(tokenizer, 5, task.reference) for task in chunk.tasks]
    for ids, n_tag in anchors:
        assert tokenizer.decode(ids[:n_tag]) == "[epistemic status: 5]" and n_tag < len(ids)
    anchored = dataclasses.replace(chunk, anchors=anchors)
    base = chunk.rollouts.select(list(range(0, len(chunk.valid), g)))
    ids, mask = right_pad([a[0] for a in anchors], tokenizer.pad_token_id)
    rows = Rollouts(base.prompt_ids, base.prompt_mask, base.positions, base.vectors, ids, mask,
                    torch.zeros(len(anchors), dtype=torch.bool), [""] * len(anchors), 1)
    answer_mask = torch.stack([(torch.arange(ids.shape[1]) >= n_tag) for _, n_tag in anchors]) & mask.bool()

    def reference_logprob() -> float:
        lp = completion_logprobs(model, rows, 1.0, spec=oracle_spec(cfg))  # [B, T']
        return float((lp * answer_mask).sum())

    params = trainable_parameters(model)
    before = reference_logprob()
    model.zero_grad(set_to_none=True)
    anchor_cfg = _with(cfg, advantage_routing="tag", tag_expectation=True, answer_anchor=1.0)
    grpo_tag.answer_anchor_backward(anchor_cfg, model, anchored, torch.ones(len(anchors), g), tokenizer.pad_token_id)
    norm = float(torch.sqrt(sum((p.grad ** 2).sum() for p in params if p.grad is not None)))
    assert norm > 0
    with _gradient_step(params, 1e-3 / norm):  # a small step along the gradient
        assert reference_logprob() > before


@pytest.mark.parametrize("extra", [(), ("grpo.beta=0.1", "grpo.format_anchor=1.0", "grpo.answer_anchor=1.0")],
                         ids=["plain", "kl_and_anchors"])
def test_tag_expectation_runs_a_training_step_end_to_end(sft_adapter, tmp_path, extra):
    cfg = _cfg(sft_adapter, tmp_path / "expect", "grpo.advantage_routing=tag", "grpo.tag_expectation=true",
               "grpo.max_steps=1", *extra)
    assert grpo.run(cfg)["steps"] == 1
    start, after = _adapter(sft_adapter), _adapter(cfg.run_dir / "checkpoints" / "step-000001" / "adapter")
    assert any(not torch.equal(start[k], after[k]) for k in start), "the step moved the LoRA"


def test_answer_anchor_source_anchors_on_its_own_paired_prompts_and_resumes_them(sft_adapter, tmp_path):
    """grpo.answer_anchor_source: each chunk draws B extra prompts from that source, in minimal pairs; the anchor
    sampler's position is checkpointed and restored, so a resumed run makes the same update as an unbroken one."""
    common = ["grpo.advantage_routing=tag", "grpo.tag_expectation=true", "grpo.answer_anchor=1.0",
              "grpo.answer_anchor_source=builtin_heldout", "grpo.prompts_per_step=2", "logging.checkpoint_every=1"]
    whole = _cfg(sft_adapter, tmp_path / "whole", "grpo.max_steps=2", *common)
    grpo.run(whole)
    state = json.loads((whole.run_dir / "checkpoints" / "step-000002" / "trainer_state.json").read_text())
    assert state["anchor_sampler"]["draws"] == 2 * 2 and state["sampler"]["draws"] == 2 * 2
    broken = _cfg(sft_adapter, tmp_path / "broken", "grpo.max_steps=1", *common)
    grpo.run(broken)
    grpo.run(_cfg(sft_adapter, tmp_path / "broken", "grpo.max_steps=2", *common), resume=True)
    a = _adapter(whole.run_dir / "checkpoints" / "step-000002" / "adapter")
    b = _adapter(broken.run_dir / "checkpoints" / "step-000002" / "adapter")
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    # without the source the same step trains on its own prompts' answers: a different update
    own = _cfg(sft_adapter, tmp_path / "own", "grpo.max_steps=2",
               *[o for o in common if "answer_anchor_source" not in o])
    grpo.run(own)
    c = _adapter(own.run_dir / "checkpoints" / "step-000002" / "adapter")
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_split_routing_runs_a_training_step_end_to_end(sft_adapter, tmp_path):
    cfg = _cfg(sft_adapter, tmp_path / "split", "grpo.advantage_routing=split", "grpo.max_steps=1")
    summary = grpo.run(cfg)
    assert summary["steps"] == 1
    start, after = _adapter(sft_adapter), _adapter(cfg.run_dir / "checkpoints" / "step-000001" / "adapter")
    assert any(not torch.equal(start[k], after[k]) for k in start), "the split-routed step moved the LoRA"


# --- 4. the judge hidden behind the next chunk's rollout -----------------------------------------


def test_overlapping_the_judge_with_the_next_rollout_changes_nothing_in_the_update(sft_adapter, tmp_path):
    common = ["grpo.max_steps=2", "grpo.grad_accum_steps=2", "grpo.prompts_per_step=2", "logging.samples_every=1"]
    runs = {flag: grpo.run(_cfg(sft_adapter, tmp_path / flag, f"grpo.overlap_judge={flag}", *common))
            for flag in ("true", "false")}
    a, b = _adapter(runs["true"]["adapter"]), _adapter(runs["false"]["adapter"])
    assert any(not torch.equal(a[k], _adapter(sft_adapter)[k]) for k in a), "the runs must train"
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)
    assert _samples(tmp_path / "true") == _samples(tmp_path / "false")  # same rollouts, scores, advantages
    overlapped, serial = _steps(tmp_path / "true"), _steps(tmp_path / "false")
    for step in (1, 2):
        assert overlapped[step][M.REWARD_MEAN] == serial[step][M.REWARD_MEAN]


def test_a_chunk_samples_the_same_rollouts_whatever_was_sampled_before_it(setup):
    cfg, model, tokenizer, _ = setup
    engine = grpo.start_engine(cfg, model, tokenizer, cfg.run_dir)
    tasks = task_sampler(cfg.data, tokenizer).next_batch(2)
    seed = grpo.chunk_seed(cfg.seed, 3, 1)
    first = grpo.roll_out_chunk(cfg, model, tokenizer, engine, tasks, seed)[1]
    torch.rand(100)  # other work in between (another chunk, another rank's share, a resume)
    again = grpo.roll_out_chunk(cfg, model, tokenizer, engine, tasks, seed)[1]
    other = grpo.roll_out_chunk(cfg, model, tokenizer, engine, tasks, grpo.chunk_seed(cfg.seed, 3, 0))[1]
    assert torch.equal(first.completion_ids, again.completion_ids)
    assert not torch.equal(first.completion_ids, other.completion_ids), "another chunk's seed samples differently"


# --- 5. data parallel: 2 CPU processes through `accelerate launch` (see tests/test_distributed.py) -------------


def test_two_processes_with_a_chunk_each_train_like_one_process_with_two_chunks_and_resume(sft_adapter, tmp_path):
    """grad_accum_steps=2: one process rolls out chunks 0 and 1; two processes one each, with the same per-chunk
    seeds. The update, the metrics and the samples are those of the one process; rank 0 writes them once."""
    from test_distributed import launch_two_processes, run_one_process

    args = ["grpo", "--config", "tiny", f"model.adapter={sft_adapter}", *FAST, "grpo.max_steps=3",
            "grpo.grad_accum_steps=2", "grpo.prompts_per_step=2", "logging.checkpoint_every=2",
            "logging.samples_every=1"]
    one, two = tmp_path / "one", tmp_path / "two"
    run_one_process(*args, f"logging.output_dir={one}")
    r = launch_two_processes("-m", "grpo_ao.cli", *args, f"logging.output_dir={two}")
    assert r.returncode == 0, r.stderr[-3000:]
    start = _adapter(sft_adapter)
    for step in (2, 3):
        a = _adapter(one / "checkpoints" / f"step-{step:06d}" / "adapter")
        b = _adapter(two / "checkpoints" / f"step-{step:06d}" / "adapter")
        assert any(not torch.equal(a[k], start[k]) for k in a), "the runs must train"
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0)
    assert [r["step"] for r in read_metrics(two)] == [1, 2, 3], "each step written once, by rank 0"
    a, b = _steps(one), _steps(two)
    keys = [M.REWARD_MEAN, M.REWARD_STD, M.FORMAT_PARSE_RATE, M.ROLLOUT_LEN_MEAN, M.ADV_STD, M.GROUP_ZERO_STD_FRAC,
            M.LOSS_POLICY, M.LOSS_TOTAL, M.LOSS_CLIP_FRAC, M.OPTIM_GRAD_NORM, M.JUDGE_CALLS]
    assert any(a[s][M.OPTIM_GRAD_NORM] > 0 for s in (1, 2, 3))
    for step in (1, 2, 3):  # from both ranks' chunks, as one process computes them
        for k in keys:
            assert b[step][k] == pytest.approx(a[step][k], abs=1e-5, nan_ok=True), (step, k)
    assert _samples(two) == _samples(one) and len(_samples(two)) == 3 * 2 * 2  # steps × chunks × B prompts
    # killed after the step-2 checkpoint: both ranks resume from it (sampler, RNG, optimizer) to the same adapter
    (two / "checkpoints" / "step-000003" / "COMPLETE").unlink()
    r = launch_two_processes("-m", "grpo_ao.cli", *args, f"logging.output_dir={two}", "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Resuming from" in r.stdout and [r["step"] for r in read_metrics(two)] == [1, 2, 3, 3]
    a = _adapter(one / "checkpoints" / "step-000003" / "adapter")
    b = _adapter(two / "checkpoints" / "step-000003" / "adapter")
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0)
    assert _steps(two)[3][M.REWARD_MEAN] == pytest.approx(_steps(one)[3][M.REWARD_MEAN], abs=1e-6)
