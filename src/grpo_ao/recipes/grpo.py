"""Dr. GRPO training of the oracle: `grpo-ao grpo --config CONFIG`.

One optimizer step:
  1. for each of grad_accum_steps chunks: sample B tasks → rollouts (G each, injection, eval mode, the chunk's
     own seed, by the configured engine: `grpo_ao.engine`) → parse → judge (in a worker thread while the next
     chunk is rolled out) → reward → group advantages (judge failures masked out);
  2. (num_iterations > 1) old logprobs; (beta > 0) reference logprobs with the starting adapter;
  3. for each iteration: loss over micro-batches with gradient accumulation → clip → AdamW step;
     then the engine follows the new adapter (weight sync; parity check every rollout.parity_every syncs);
  4. log metrics, samples, checkpoint.
Training starts from model.adapter, which must have been trained in oracle.*'s layout (its grpo_ao_oracle.json;
a difference stops the run: `recipes.adapters.check_start_layout`). The recipe does not push to the Hub: the
`grpo-ao grpo` and `grpo-ao run` commands push last, after summary.json (and the eval) are written.

Data parallel (`accelerate launch`, see `grpo_ao.distributed`): the unit of work is the chunk. Every rank
draws every chunk's tasks (so the sampler, and resume, stay identical on all ranks) and rolls out, judges
and scores only its own chunks k ≡ rank (mod N), each with the seed of its GLOBAL index k; the loss
normalisers are summed over ranks and the gradients summed before clipping, so N processes with
grad_accum_steps = N·m make the update of one process with the same grad_accum_steps. Rank 0 logs
metrics computed from every rank's chunks (`ChunkRecord`s, gathered) and writes samples and checkpoints.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from grpo_ao import metrics as M
from grpo_ao.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from grpo_ao.config import RunConfig, anchor_data
from grpo_ao.distributed import (
    all_reduce_gradients,
    gather_objects,
    global_sum,
    place,
    print0,
    require_divisible,
)
from grpo_ao.engine import build_engine
from grpo_ao.errors import GrpoAoError
from grpo_ao.format import parse_epistemic_status, tag_candidate_ids, tag_token_mask
from grpo_ao.judge import build_judge
from grpo_ao.loss import group_advantages, policy_loss
from grpo_ao.recipes.adapters import check_start_layout, written_layout
from grpo_ao.recipes.grpo_chunk import Chunk
from grpo_ao.recipes.grpo_report import (
    judge_outage,
    sample_rows,
    step_metrics,
    step_totals,
    summed_judge_stats,
    write_summary,
)
from grpo_ao.recipes.grpo_tag import (
    anchor_prompts,
    answer_anchors,
    routed_advantages,
    tag_expectation_backward,
)
from grpo_ao.recipes.setup import (
    archive_previous_run,
    judge_cache_path,
    load_oracle,
    optimizer_and_scheduler,
    oracle_spec,
    progress_bar,
    run_sinks,
    seed_everything,
    start_run,
    task_sampler,
    trainable_parameters,
)
from grpo_ao.reward import judge_and_reward
from grpo_ao.rollout import (
    Rollouts,
    build_oracle_inputs,
    completion_logprobs,
    group_micro_batches,
    injected_logprobs,
)

REFERENCE_ADAPTER = "reference"


def chunk_seed(seed: int, step: int, chunk: int) -> int:
    """The sampling seed of rollout chunk `chunk` of optimizer step `step`: a chunk samples the same completions
    whichever process rolls it out and whatever ran before it (data-parallel ranks, resume, judge overlap)."""
    return (seed * 1_000_003 + step * 1_009 + chunk) % 2**63


def roll_out_chunk(cfg: RunConfig, model: Any, tokenizer: Any, engine: Any, tasks: list, seed: int) -> tuple:
    """Step 1a for one chunk: subject activations, G rollouts per task with the chunk's own seed, parse."""
    torch.manual_seed(seed)
    inputs = build_oracle_inputs(model, tokenizer, tasks, spec=oracle_spec(cfg))
    rollouts = engine.generate(inputs, cfg.sampling, seed=seed)  # the seed also reaches vLLM's sampler
    return inputs, rollouts, [parse_epistemic_status(text) for text in rollouts.texts]


def score_chunk(cfg: RunConfig, tokenizer: Any, index: int, tasks: list, inputs: Any, rollouts: Rollouts,
                parsed: list, judged: list, breakdowns: list) -> Chunk:
    """Step 1c for one chunk: rewards → group advantages (judge failures masked out), routed if configured."""
    g = cfg.sampling.num_generations
    valid = torch.tensor([bd.total is not None for bd in breakdowns])  # [N]
    rewards = torch.tensor([bd.total if bd.total is not None else float("nan") for bd in breakdowns])  # [N]
    advantages = group_advantages(rewards.view(-1, g), valid.view(-1, g), cfg.grpo.scale_rewards).view(-1)  # [N]
    token_advantages = tag_mask = None
    if cfg.grpo.advantage_routing != "sequence":
        tag_mask = tag_token_mask(tokenizer, rollouts.completion_ids, [bd.brier is not None for bd in breakdowns])
        token_advantages = routed_advantages(tokenizer, rollouts, breakdowns, rewards, valid, cfg.reward.lam,
                                             answer_credit=cfg.grpo.advantage_routing == "split",
                                             tag_credit=not cfg.grpo.tag_expectation, tag_mask=tag_mask)
    own = cfg.grpo.answer_anchor > 0 and cfg.grpo.answer_anchor_source is None  # else collect_chunks adds them
    anchors = answer_anchors(tokenizer, tasks, parsed, g) if own else None
    return Chunk(tasks, rollouts, inputs.layers, parsed, judged, breakdowns, advantages, valid, token_advantages,
                 tag_mask=tag_mask, anchors=anchors, index=index)


def collect_chunks(cfg: RunConfig, model: Any, tokenizer: Any, engine: Any, sampler: Any, judge: Any, step: int,
                   timers: dict, anchor_sampler: Any = None) -> list[Chunk]:
    """Step 1: grad_accum_steps chunks of B tasks: 1a roll out, 1b judge + reward (in a worker thread while the
    next chunk is rolled out, with grpo.overlap_judge), 1c advantages. Judge calls only do network or CPU-light
    work, so the rollouts and the scores are the same with and without the overlap.

    With `anchor_sampler` (grpo.answer_anchor_source) each chunk also gets B anchor prompts from it (`anchor_prompts`).
    Data parallel: every rank draws every chunk's tasks and keeps its own chunks k ≡ rank (mod N)."""
    g = cfg.sampling.num_generations
    rank, world = place().rank, place().world_size

    def judge_chunk(tasks: list, parsed: list) -> tuple[list, list]:  # 1b
        return judge_and_reward(judge, tasks, parsed, g, cfg.reward, cfg.judge.score_parse_failures)

    rolled, pending, anchored = [], [], []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="judge") as pool:
        for k in range(cfg.grpo.grad_accum_steps):
            t0 = time.perf_counter()
            tasks = sampler.next_batch(cfg.grpo.prompts_per_step)
            anchor_tasks = anchor_sampler.next_batch(cfg.grpo.prompts_per_step) if anchor_sampler else None
            if k % world != rank:
                continue  # another rank's chunk: drawn (the samplers stay in step) but not rolled out
            if anchor_tasks is not None:
                anchored.append(anchor_prompts(cfg, model, tokenizer, anchor_tasks))
            inputs, rollouts, parsed = roll_out_chunk(cfg, model, tokenizer, engine, tasks,
                                                      chunk_seed(cfg.seed, step, k))  # 1a
            t1 = time.perf_counter()
            timers["rollout"] += t1 - t0
            rolled.append((k, tasks, inputs, rollouts, parsed))
            if cfg.grpo.overlap_judge:
                pending.append(pool.submit(judge_chunk, tasks, parsed))
            else:
                pending.append(judge_chunk(tasks, parsed))
                timers["judge"] += time.perf_counter() - t1
        t0 = time.perf_counter()
        scores = [p.result() if isinstance(p, Future) else p for p in pending]
        timers["judge"] += time.perf_counter() - t0  # with the overlap: only the wait that was not hidden
    chunks = [score_chunk(cfg, tokenizer, *chunk, *score) for chunk, score in zip(rolled, scores, strict=True)]  # 1c
    for chunk, (rows, anchors) in zip(chunks, anchored):  # empty without anchor_sampler
        chunk.anchor_rows, chunk.anchors = rows, anchors
    return chunks


@contextlib.contextmanager
def reference_adapter(model: Any):
    """Compute with the frozen copy of the starting adapter; the trained adapter is restored after."""
    model.set_adapter(REFERENCE_ADAPTER)
    try:
        yield
    finally:
        model.set_adapter("default")


@contextlib.contextmanager
def train_without_dropout(model: Any):
    """Train mode (so gradient checkpointing stays active) with every dropout module off: the loss forward
    then computes the policy the rollouts were sampled from (eval mode), so the ratio is exactly 1 and the
    KL exactly 0 before the first update, also with LoRA dropout configured."""
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.eval()
    try:
        yield
    finally:
        model.eval()


def fixed_logprobs(cfg: RunConfig, model: Any, chunk: Chunk) -> torch.Tensor:
    """Logprobs without gradient, in eval mode, micro-batched (old policy or reference)."""
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for idx in micro_batches(chunk, cfg.grpo.micro_batch_size, valid_only=False):
            out.append(completion_logprobs(model, chunk.rollouts.select(idx), cfg.sampling.temperature,
                                           spec=oracle_spec(cfg), prefix_shared=cfg.grpo.prefix_shared_forward).cpu())
    model.train(was_training)
    return torch.cat(out)  # [N, T]


def nonzero_rows(chunk: Chunk) -> list[bool]:
    """Per row: some completion token has a non-zero advantage.  [N]"""
    adv = chunk.advantages.unsqueeze(1) if chunk.token_advantages is None else chunk.token_advantages  # [N, T] or [N, 1]
    return (adv != 0).any(dim=1).tolist()


def micro_batches(chunk: Chunk, size: int, valid_only: bool = True,
                  needs_forward: list[bool] | None = None) -> list[list[int]]:
    """The chunk's rows (the valid ones by default; only those with `needs_forward` when given) in micro-batches
    of at most `size`, each prompt's rows together (so the prefix-shared forward computes each prompt once per
    micro-batch)."""
    rows = [i for i in range(len(chunk.valid)) if (chunk.valid[i] or not valid_only)
            and (needs_forward is None or needs_forward[i])]
    return group_micro_batches(rows, chunk.rollouts.num_generations, size)


def update(cfg: RunConfig, model: Any, chunks: list[Chunk], num_rollouts: int, num_tokens: int,
           tag_ids: list[list[int]] | None = None, pad_id: int = 0) -> list:
    """Step 3 (one iteration's backward passes): loss over micro-batches, gradients accumulated; with
    `tag_ids` (grpo.tag_expectation) also the tag's closed-form term per chunk."""
    stats = []
    device = next(model.parameters()).device
    spec = oracle_spec(cfg)
    # with tag_expectation the sampled terms of scored rollouts are all 0 (tag and answer): without a KL term such a
    # row adds nothing to the loss or its gradient, so only the others (parse failures) run the training forward
    skip_zero = tag_ids is not None and cfg.grpo.beta == 0
    for chunk in chunks:
        for idx in micro_batches(chunk, cfg.grpo.micro_batch_size,
                                 needs_forward=nonzero_rows(chunk) if skip_zero else None):
            mb = chunk.rollouts.select(idx)
            t = torch.tensor(idx)
            # backward inside: a checkpointed block is recomputed with its injection hook
            with injected_logprobs(model, mb, cfg.sampling.temperature, spec=spec,
                                   prefix_shared=cfg.grpo.prefix_shared_forward) as logprobs:  # [n, T]
                loss, st = policy_loss(
                    logprobs,
                    None if chunk.old_logprobs is None else chunk.old_logprobs[t].to(device),
                    (chunk.advantages if chunk.token_advantages is None else chunk.token_advantages)[t].to(device),
                    mb.completion_mask.to(device),
                    epsilon=cfg.grpo.epsilon, epsilon_high=cfg.grpo.epsilon_high,
                    ref_logprobs=None if chunk.ref_logprobs is None else chunk.ref_logprobs[t].to(device),
                    beta=cfg.grpo.beta, loss_type=cfg.grpo.loss_type, max_new_tokens=cfg.sampling.max_new_tokens,
                    num_rollouts=num_rollouts, num_tokens=num_tokens,
                    sampling_logprobs=None if mb.sampling_logprobs is None else mb.sampling_logprobs.to(device),
                    tis_cap=cfg.grpo.tis_cap,
                    # the tag is expectation_backward's: a KL there would pull it back to the starting tags
                    kl_mask=None if tag_ids is None or chunk.tag_mask is None else ~chunk.tag_mask[t].to(device),
                )
                loss.backward()
            stats.append(st)
        if tag_ids is not None:
            tag_expectation_backward(cfg, model, chunk, tag_ids, pad_id, num_rollouts, num_tokens)
    return stats


def run(cfg: RunConfig, resume: bool = False) -> dict[str, Any]:
    """Train; return the run summary (also written to run_dir/summary.json)."""
    require_divisible(cfg.grpo.grad_accum_steps, "grpo.grad_accum_steps",
                      "each process rolls out grad_accum_steps / N chunks per step; use a multiple of N.")
    run_dir = start_run(cfg, "grpo")
    if not resume:
        archive_previous_run(run_dir)
    seed_everything(cfg.seed)
    check_start_layout(cfg, "grpo")  # the starting adapter is trained in the layout it was made for, or stop
    model, tokenizer = load_oracle(cfg, gradient_checkpointing=cfg.grpo.gradient_checkpointing,
                                   layout=written_layout(cfg, "grpo"))
    if cfg.grpo.beta > 0:  # frozen copy of the starting adapter for the KL term
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        with torch.random.fork_rng():  # the copy's random init must not shift the sampling RNG
            model.add_adapter(REFERENCE_ADAPTER, model.peft_config["default"])
        set_peft_model_state_dict(model, get_peft_model_state_dict(model, adapter_name="default"),
                                  adapter_name=REFERENCE_ADAPTER)
        model.set_adapter("default")
    sampler = task_sampler(cfg.data, tokenizer)
    anchor_sampler = task_sampler(anchor_data(cfg), tokenizer) if cfg.grpo.answer_anchor_source else None
    judge_cache = judge_cache_path(cfg)
    judge = build_judge(cfg.judge, cache_path=judge_cache)
    optimizer, scheduler = optimizer_and_scheduler(model, cfg.grpo.lr, cfg.grpo.weight_decay, cfg.grpo.warmup_steps,
                                                   cfg.grpo.lr_schedule, cfg.grpo.max_steps)
    start = 0
    if resume:
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise GrpoAoError(f"--resume: no complete checkpoint in {run_dir / 'checkpoints'}; start without --resume.")
        state = load_checkpoint(ckpt, model=model, optimizer=optimizer, scheduler=scheduler)
        sampler.load_state_dict(state["sampler"])
        if anchor_sampler is not None:
            if state.get("anchor_sampler") is None:
                raise GrpoAoError(f"--resume: {ckpt} was written without grpo.answer_anchor_source; resume with the "
                                  "config it was started with, or start a new run.")
            anchor_sampler.load_state_dict(state["anchor_sampler"])
        start = int(state["step"])
        print0(f"Resuming from {ckpt} (step {start}).")
    tag_ids = tag_candidate_ids(tokenizer) if cfg.grpo.tag_expectation else None
    sinks = run_sinks(cfg, run_dir)
    engine = start_engine(cfg, model, tokenizer, run_dir)
    bar = progress_bar(cfg.grpo.max_steps, "grpo", cfg.logging.progress, initial=start)
    outage = 0  # consecutive steps whose every judge call failed
    for step in range(start + 1, cfg.grpo.max_steps + 1):
        timers = {"rollout": 0.0, "judge": 0.0, "update": 0.0}
        judge_before = judge.stats.snapshot()
        chunks = collect_chunks(cfg, model, tokenizer, engine, sampler, judge, step, timers, anchor_sampler)  # 1.
        engine.sleep()
        t0 = time.perf_counter()
        for chunk in chunks:  # 2.
            if cfg.grpo.num_iterations > 1:
                chunk.old_logprobs = fixed_logprobs(cfg, model, chunk)
            if cfg.grpo.beta > 0:
                with reference_adapter(model):
                    chunk.ref_logprobs = fixed_logprobs(cfg, model, chunk)
        # normalisers count the rollouts that enter the loss: judge-masked ones are excluded, not diluting;
        # summed over ranks, so each rank's loss is its share of the one-process loss
        num_rollouts = max(1, global_sum(sum(int(c.valid.sum()) for c in chunks)))
        num_tokens = global_sum(int(sum(c.rollouts.completion_mask[c.valid].sum() for c in chunks)))
        loss_stats, grad_norm = [], 0.0
        with train_without_dropout(model):
            for _ in range(cfg.grpo.num_iterations):  # 3.
                optimizer.zero_grad(set_to_none=True)
                loss_stats = update(cfg, model, chunks, num_rollouts, num_tokens, tag_ids, tokenizer.pad_token_id)
                all_reduce_gradients(trainable_parameters(model))
                grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable_parameters(model), cfg.grpo.max_grad_norm))
                optimizer.step()
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        engine.wake_up()
        engine.after_step(model, tokenizer)
        timers["update"] = time.perf_counter() - t0
        records, loss_stats, judge_delta, timers = step_totals(chunks, loss_stats, judge.stats.delta(judge_before),
                                                               timers)
        metrics = step_metrics(records, loss_stats, grad_norm, lr, judge_delta, timers)  # 4.
        sinks.log(metrics, step)
        if cfg.logging.samples_every and step % cfg.logging.samples_every == 0:
            sinks.log_samples(sample_rows(records), step)
        if step % cfg.logging.checkpoint_every == 0 or step == cfg.grpo.max_steps:
            save_checkpoint(run_dir, step, model=model, optimizer=optimizer, scheduler=scheduler,
                            trainer_state={"step": step, "sampler": sampler.state_dict(),
                                           "anchor_sampler": anchor_sampler.state_dict() if anchor_sampler else None,
                                           "judge_cache": str(judge_cache)},
                            keep_last=cfg.logging.keep_last)
        bar.set_postfix(reward=f"{metrics[M.REWARD_MEAN]:.3f}", parse=f"{metrics[M.FORMAT_PARSE_RATE]:.2f}")
        bar.update(1)
        outage = judge_outage(records, outage, cfg.grpo.max_judge_outage_steps, step)
    bar.close()
    sinks.close()
    engine.close()
    final = latest_checkpoint(run_dir)
    adapter_dir = final / "adapter" if final else None  # pushed by the caller, after everything is written
    judge_total = summed_judge_stats(judge.stats)
    return gather_objects(write_summary(run_dir, cfg, adapter_dir, judge_total) if place().is_main else None)[0]


def start_engine(cfg: RunConfig, model: Any, tokenizer: Any, run_dir: Any) -> Any:
    """The configured rollout engine; a vLLM engine is parity-checked on rollout.parity_prompts tasks drawn from a
    sampler of its own (the training sampler's position is untouched)."""
    parity_inputs = None
    if cfg.rollout.engine != "hf" and cfg.rollout.parity_prompts:
        tasks = task_sampler(cfg.data, tokenizer).next_batch(cfg.rollout.parity_prompts)
        parity_inputs = build_oracle_inputs(model, tokenizer, tasks, spec=oracle_spec(cfg))
    return build_engine(cfg.rollout, model, tokenizer, spec=oracle_spec(cfg), dtype=cfg.model.dtype,
                        device=str(next(model.parameters()).device), seed=cfg.seed, work_dir=run_dir / "engine",
                        parity_inputs=parity_inputs)
