"""Format SFT: `grpo-ao sft --config CONFIG`. Teaches the `[epistemic status: X] Answer` format.

  1. Targets: for each task, read subject activations (adapter off), let the starting oracle answer
     with injection in its own layout (its grpo_ao_oracle.json; without one: *no* system prompt) — its
     natural answer —, optionally have the hosted judge model expand terse answers to open questions
     (`sft.expand_open_answers`), and store
     `[epistemic status: X] <answer>` with X uniform in 0..10 (seeded). Activations and targets are
     cached on disk (safetensors + JSONL), so training and re-runs never recompute them.
  2. Parse rate of greedy answers on held-out prompts (`sft.heldout_examples` contexts never used for
     training, one question each), before training.
  3. Teacher-forced cross-entropy on the assistant tokens only, with the system prompt in the layout
     GRPO uses and injection at the same layer, batched, for `sft.epochs` epochs; checkpoint per epoch.
  4. Parse rate on the held-out slice after training; summary.

Data parallel (`accelerate launch`, see `grpo_ao.distributed`): rank 0 makes the targets (step 1) and
the others read its cache; each step's batch of `sft.batch_size` rows is split across the ranks with
the global token count as the loss normaliser; the held-out prompts are split and counted together.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from grpo_ao import metrics as M
from grpo_ao.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from grpo_ao.config import RunConfig
from grpo_ao.data import Task, load_examples, split_examples
from grpo_ao.distributed import global_sum, main_first, place, print0, require_divisible, shard
from grpo_ao.format import format_epistemic_status, parse_epistemic_status, render_oracle_prompt
from grpo_ao.judge import Expansion, JudgeItem, build_expander, expand_terse_open_answers
from grpo_ao.recipes.adapters import SFT_MUST_MATCH, check_start_layout, natural_answer_spec, written_layout
from grpo_ao.recipes.setup import (
    adapter_fingerprint,
    archive_previous_run,
    code_fingerprint,
    fingerprint,
    judge_cache_path,
    load_oracle,
    optimizer_and_scheduler,
    oracle_spec,
    progress_bar,
    run_sinks,
    seed_everything,
    start_run,
    task_sampler,
    teacher_forced_step,
    tokenizer_fingerprint,
    write_json,
)
from grpo_ao.rollout import OracleSpec, Rollouts, SamplingConfig, answer_in_batches, teacher_forcing_rollouts

FALLBACK_ANSWER = "I can't answer this question given these activations."


def whole_sentences(text: str) -> str | None:
    """`text` up to its last sentence end (. ! ?), or None when it has none.

    >>> whole_sentences("It is about sports. The team won the")
    'It is about sports.'
    """
    match = re.match(r".*[.!?](?=\s|$)", text, flags=re.DOTALL)
    return match.group(0) if match else None


def cache_key(cfg: RunConfig, tasks: list[Task], tokenizer: Any, natural: OracleSpec) -> str:
    """Targets depend on the subject and starting oracle (the adapter's files, not only its path), the drawn tasks
    themselves (so the data's content), how the tokenizer splits them, the layout the natural answers are asked
    in (`natural`), the answer length, the tag draws (cfg.seed), the expansion settings and the code."""
    expansion = [cfg.sft.expand_max_words, cfg.judge.model] if cfg.sft.expand_open_answers else None
    return fingerprint("sft-targets", cfg.model.source, cfg.model.seed, cfg.model.dtype,
                       adapter_fingerprint(cfg.model.adapter), [asdict(t) for t in tasks], cfg.data.context_format,
                       tokenizer_fingerprint(tokenizer), asdict(natural), cfg.sft.answer_max_new_tokens, cfg.seed,
                       expansion, code_fingerprint())


def make_targets(cfg: RunConfig, model: Any, tokenizer: Any, tasks: list[Task], cache_dir: Path,
                 natural: OracleSpec | None = None) -> list[dict]:
    """Step 1: natural answers (asked in `natural`, default the base-oracle layout: no system prompt), optionally
    expanded, + random tags; cached as targets.jsonl + activations.safetensors. Each row keeps `natural_answer`
    and whether its target is `expanded`."""
    targets_path, acts_path = cache_dir / "targets.jsonl", cache_dir / "activations.safetensors"
    if targets_path.exists() and acts_path.exists():
        acts = load_file(str(acts_path))
        rows = [json.loads(line) for line in targets_path.read_text().splitlines()]
        for i, row in enumerate(rows):
            row["vector"] = acts[f"v{i}"]
        print0(f"SFT: reusing {len(rows)} cached targets from {cache_dir}")
        return rows
    expander = None
    if cfg.sft.expand_open_answers:  # before generation, so a missing API key fails fast
        expander = build_expander(cfg.judge, judge_cache_path(cfg))
    rng = random.Random(cfg.seed)
    statuses = [rng.randint(0, 10) for _ in tasks]
    rows: list[dict] = []
    sampling = SamplingConfig(num_generations=1, max_new_tokens=cfg.sft.answer_max_new_tokens, greedy=True)
    bar = progress_bar(len(tasks), "sft targets", cfg.logging.progress)
    natural = oracle_spec(cfg).without_system_prompt() if natural is None else natural
    for chunk, inputs, rollouts in answer_in_batches(model, tokenizer, tasks, sampling, cfg.eval.batch_size,
                                                     spec=natural):
        for task, layer, vector, text, cut in zip(chunk, inputs.layers, inputs.vectors, rollouts.texts,
                                                  rollouts.truncated.tolist()):
            parsed = parse_epistemic_status(text)  # an oracle that already tags its answers: keep one tag
            answer = " ".join((parsed.answer if parsed.ok else text).split()) or FALLBACK_ANSWER
            if cut and (whole := whole_sentences(answer)):  # cut mid-answer: keep the complete sentences
                answer, cut = whole, False
            rows.append({"context": task.context, "question": task.question, "reference": task.reference,
                         "layer": layer, "k": task.num_positions, "natural_answer": answer, "truncated": cut,
                         "vector": vector})
        bar.update(len(chunk))
    bar.close()
    expansions = [Expansion(r["natural_answer"], False) for r in rows]
    if expander is not None:
        items = [JudgeItem(r["context"], r["question"], r["natural_answer"], r["reference"]) for r in rows]
        expansions = expand_terse_open_answers(expander, items, cfg.sft.expand_max_words)
        done, failed = sum(e.expanded for e in expansions), sum(e.error is not None for e in expansions)
        print0(f"SFT: expanded {done} of {done + failed} terse answers to open questions" + (
            f"; {failed} failed and keep the natural answer (delete {cache_dir} to retry)" if failed else ""))
    for row, status, expansion in zip(rows, statuses, expansions, strict=True):
        row.update(target=format_epistemic_status(status, expansion.text), expanded=expansion.expanded,
                   truncated=row["truncated"] and not expansion.expanded)
    cache_dir.mkdir(parents=True, exist_ok=True)
    save_file({f"v{i}": r["vector"].cpu().contiguous() for i, r in enumerate(rows)}, str(acts_path) + ".tmp")
    targets_path.with_suffix(".tmp").write_text("".join(
        json.dumps({k: v for k, v in r.items() if k != "vector"}) + "\n" for r in rows))
    Path(str(acts_path) + ".tmp").replace(acts_path)
    targets_path.with_suffix(".tmp").replace(targets_path)
    return rows


def teacher_forcing_batch(cfg: RunConfig, tokenizer: Any, rows: list[dict]) -> Rollouts:
    """Prompt (GRPO's layout, with system prompt) + target tokens + end-of-turn, as a Rollouts batch.

    A natural answer cut at `sft.answer_max_new_tokens` is trimmed to its complete sentences (then it ends
    like any answer); one without a sentence end keeps `truncated` and gets no end-of-turn token: the
    oracle must not learn to stop mid-sentence.
    """
    spec = oracle_spec(cfg)
    prompts = [render_oracle_prompt(tokenizer, r["question"], r["layer"], r["k"], spec.system_prompt, mode=spec.mode)
               for r in rows]
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    targets = [tokenizer(r["target"], add_special_tokens=False)["input_ids"] + ([] if r.get("truncated") else [eot])
               for r in rows]
    return teacher_forcing_rollouts(prompts, targets, [r["vector"] for r in rows], [r["target"] for r in rows],
                                    tokenizer.pad_token_id)


def heldout_parse_rate(cfg: RunConfig, model: Any, tokenizer: Any, tasks: list[Task]) -> float:
    """Share of greedy answers (with the system prompt) that parse as `[epistemic status: X] ...`; each rank
    answers its share of `tasks`, the counts are summed."""
    sampling = SamplingConfig(num_generations=1, max_new_tokens=cfg.sft.answer_max_new_tokens + 12, greedy=True)
    ok = 0
    mine = shard(tasks, place().rank, place().world_size)
    for _, _, rollouts in answer_in_batches(model, tokenizer, mine, sampling, cfg.eval.batch_size,
                                            spec=oracle_spec(cfg)):
        ok += sum(parse_epistemic_status(t).ok for t in rollouts.texts)
    return global_sum(ok) / len(tasks)


def run(cfg: RunConfig, resume: bool = False) -> dict[str, Any]:
    """Generate targets, train, and report the held-out parse rate before and after."""
    require_divisible(cfg.sft.batch_size, "sft.batch_size", "use a multiple of the number of processes.")
    run_dir = start_run(cfg, "sft")
    if not resume:
        archive_previous_run(run_dir)
    seed_everything(cfg.seed)
    start = check_start_layout(cfg, "sft", SFT_MUST_MATCH)
    model, tokenizer = load_oracle(cfg, gradient_checkpointing=cfg.sft.gradient_checkpointing,
                                   layout=written_layout(cfg, "sft"))
    # held out by context, one task per held-out context: never a text that training sees
    train_ex, held_ex = split_examples(load_examples(cfg.data), cfg.sft.heldout_examples, cfg.seed)
    train_tasks = task_sampler(cfg.data, tokenizer, train_ex).next_batch(cfg.sft.num_examples)
    heldout = task_sampler(cfg.data, tokenizer, held_ex).next_batch(len(held_ex))
    with main_first():  # rank 0 writes the cache, the others read it
        natural = natural_answer_spec(cfg, start)
        rows = make_targets(cfg, model, tokenizer, train_tasks,
                            run_dir / "sft_cache" / cache_key(cfg, train_tasks, tokenizer, natural), natural)  # 1.
    steps_per_epoch = -(-len(rows) // cfg.sft.batch_size)
    total = steps_per_epoch * cfg.sft.epochs
    optimizer, scheduler = optimizer_and_scheduler(model, cfg.sft.lr, 0.0, cfg.sft.warmup_steps, "cosine", total)
    epoch0, before = 0, None
    ckpt = latest_checkpoint(run_dir) if resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, model=model, optimizer=optimizer, scheduler=scheduler)
        epoch0, before = int(state["epoch"]), state.get("parse_rate_before")
        print0(f"Resuming SFT from {ckpt} (epoch {epoch0}).")
    if before is None:
        before = heldout_parse_rate(cfg, model, tokenizer, heldout)  # 2.
    print0(f"SFT: held-out parse rate before training: {before:.1%}")
    sinks = run_sinks(cfg, run_dir)
    bar = progress_bar(total, "sft", cfg.logging.progress, initial=epoch0 * steps_per_epoch)
    spec = oracle_spec(cfg)
    order_rng = random.Random(cfg.seed)
    orders = [order_rng.sample(range(len(rows)), len(rows)) for _ in range(cfg.sft.epochs)]
    for epoch in range(epoch0, cfg.sft.epochs):  # 3.
        model.train()
        for s in range(steps_per_epoch):
            idx = orders[epoch][s * cfg.sft.batch_size:(s + 1) * cfg.sft.batch_size]
            idx = shard(idx, place().rank, place().world_size)  # this rank's share of the step's batch
            batch = teacher_forcing_batch(cfg, tokenizer, [rows[i] for i in idx]) if idx else None
            loss, grad_norm, lr = teacher_forced_step(model, batch, spec, optimizer, scheduler, cfg.sft.max_grad_norm)
            step = epoch * steps_per_epoch + s + 1
            sinks.log({M.SFT_LOSS: loss, M.OPTIM_GRAD_NORM: grad_norm, M.OPTIM_LR: lr}, step)
            bar.set_postfix(loss=f"{loss:.3f}")
            bar.update(1)
        model.eval()
        save_checkpoint(run_dir, (epoch + 1) * steps_per_epoch, model=model, optimizer=optimizer, scheduler=scheduler,
                        trainer_state={"epoch": epoch + 1, "parse_rate_before": before},
                        keep_last=cfg.logging.keep_last)
    bar.close()
    after = heldout_parse_rate(cfg, model, tokenizer, heldout)  # 4.
    print0(f"SFT: held-out parse rate {before:.1%} -> {after:.1%} ({len(heldout)} prompts)")
    sinks.log({M.SFT_PARSE_RATE_BEFORE: before, M.SFT_PARSE_RATE_AFTER: after}, total)
    sinks.close()
    final = latest_checkpoint(run_dir)
    summary = {"parse_rate_before": before, "parse_rate_after": after, "heldout": len(heldout),
               "targets": len(rows), "adapter": str(final / "adapter") if final else None, "run_dir": str(run_dir)}
    if place().is_main:
        write_json(run_dir / "summary.json", summary)
    return summary
