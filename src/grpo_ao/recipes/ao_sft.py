"""AO pretraining: `grpo-ao ao-sft --config CONFIG`. Turns a base model into an activation oracle.

The Activation Oracles recipe (https://arxiv.org/abs/2512.15674) at small scale, for models without a
published oracle: a LoRA learns to answer questions about a text from the subject's activations alone.

  1. Held-out contexts: every context of `ao_sft.heldout_source` when set (training contexts with the same
     text dropped), else `ao_sft.heldout_contexts` random contexts of `data.source`; never trained on.
     Training items (`grpo_ao.ao_tasks.draw_items`, seeded): balanced (or natural) yes/no questions, open
     label questions and self-supervised context prediction in the configured shares; held-out items: the
     labelled questions of the held-out contexts, each with its counterfactual item (`ao_tasks`).
  2. Subject activations (adapter off) for every item, extracted once and cached on disk.
  3. Held-out check before training (`grpo_ao.ao_heldout`): greedy answers graded by `grade`, with the real
     activations, the shuffled control and the counterfactual control; the cheap check (learning curve).
  4. Teacher-forced cross-entropy on the answer tokens, base-oracle layout (no system prompt), injection
     at `oracle.injection_layer`, batched; the cheap check every `ao_sft.eval_every` steps (metrics,
     heldout_curve.jsonl, ao_learning_curve.png, the progress bar); checkpoints every
     `logging.checkpoint_every` steps (resumable).
  5. The held-out check after training; heldout_answers.jsonl and summary.json.

Data parallel (`accelerate launch`, see `grpo_ao.distributed`): rank 0 extracts and caches the activations
and the others read the cache; each step's `ao_sft.batch_size` items are split across the ranks (global
token count as the loss normaliser); the held-out items are split and their answers gathered.

Correctness is `grading.grade`, the rule every stage uses. We deliberately do not show the oracle a system
prompt here: the format (`[epistemic status: X]`) is taught afterwards by format SFT, as for the published
oracles.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from grpo_ao import ao_heldout, ao_tasks, controls
from grpo_ao import metrics as M
from grpo_ao.ao_heldout import prompt_for
from grpo_ao.ao_tasks import AoItem, context_prediction_item  # noqa: F401  (the recipe's public names)
from grpo_ao.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from grpo_ao.config import RunConfig
from grpo_ao.data import Example, load_examples, split_examples
from grpo_ao.distributed import main_first, place, print0, require_divisible, shard
from grpo_ao.errors import GrpoAoError
from grpo_ao.recipes.adapters import written_layout
from grpo_ao.recipes.setup import (
    archive_previous_run,
    code_fingerprint,
    fingerprint,
    load_oracle,
    optimizer_and_scheduler,
    oracle_spec,
    progress_bar,
    run_sinks,
    seed_everything,
    start_run,
    teacher_forced_step,
    tokenizer_fingerprint,
    write_json,
)
from grpo_ao.rollout import Rollouts, subject_layers, teacher_forcing_rollouts
from grpo_ao.steering import extract_in_batches

EXTRACT_BATCH = 32
CONTROLS = ("real", "shuffled", "counterfactual")


def draw_items(cfg: RunConfig, examples: list[Example], tokenizer: Any, n: int, seed: int,
               context_prediction: bool) -> list[AoItem]:
    """Step 1: `n` training items in the shares of `cfg.ao_sft` (`ao_tasks.draw_items`)."""
    return ao_tasks.draw_items(examples, tokenizer, n, seed, data=cfg.data, ao=cfg.ao_sft,
                               context_prediction=context_prediction)


def split_contexts(cfg: RunConfig) -> tuple[list[Example], list[Example]]:
    """Step 1: (training, held-out) examples, disjoint by context text."""
    examples = load_examples(cfg.data)
    if cfg.ao_sft.heldout_source is not None:
        held = load_examples(replace(cfg.data, source=cfg.ao_sft.heldout_source, max_examples=None))
        texts = {ex.context for ex in held}
        train = [ex for ex in examples if ex.context not in texts]
    else:
        train, held = split_examples(examples, cfg.ao_sft.heldout_contexts, cfg.seed)
    if not train or not held:
        raise GrpoAoError(f"ao-sft's held-out split (ao_sft.heldout_source={cfg.ao_sft.heldout_source!r}, "
                          f"ao_sft.heldout_contexts={cfg.ao_sft.heldout_contexts}) leaves {len(train)} training and "
                          f"{len(held)} held-out contexts; both need at least one.")
    return train, held


def cache_key(cfg: RunConfig, kind: str, items: list[AoItem], tokenizer: Any) -> str:
    """The activations of `items` depend on the subject model, the items themselves (so the data's content, not
    only its path), how the tokenizer splits them and the extraction code: all of it is in the key."""
    return fingerprint(kind, cfg.model.source, cfg.model.seed, cfg.model.dtype, cfg.data.context_format,
                       cfg.oracle.vector_preprocessing, [asdict(it) for it in items], tokenizer_fingerprint(tokenizer),
                       code_fingerprint())


def with_activations(cfg: RunConfig, model: Any, tokenizer: Any, items: list[AoItem],
                     cache_dir: Path) -> list[torch.Tensor]:
    """Step 2: subject activations [K, hidden] per item (adapter off), cached as safetensors: the k tokens
    ending `offset` tokens before the end. One read per (text, layer), of its largest k + offset last tokens;
    each item's window is a slice of it (causal attention: a position never sees the tokens after it)."""
    path = cache_dir / "activations.safetensors"
    if path.exists():
        acts = load_file(str(path))
        return [acts[f"v{i}"] for i in range(len(items))]
    layers = subject_layers(model, items)
    width: dict[tuple[str, int], int] = {}
    for it, layer in zip(items, layers, strict=True):
        width[(it.text, layer)] = max(width.get((it.text, layer), 0), it.k + it.offset)
    reads = list(width)
    bar = progress_bar(len(reads), "ao-sft activations", cfg.logging.progress)
    read = dict(zip(reads, extract_in_batches(model, tokenizer, [t for t, _ in reads], [layer for _, layer in reads],
                                              [width[r] for r in reads], cfg.data.context_format, EXTRACT_BATCH,
                                              bar.update, cfg.oracle.vector_preprocessing), strict=True))
    vectors = []
    for it, layer in zip(items, layers, strict=True):
        v = read[(it.text, layer)]  # [width, hidden], ending at the text's last token
        end = v.shape[0] - it.offset
        vectors.append(v[end - it.k:end].float().clone())  # [k, hidden]
    bar.close()
    cache_dir.mkdir(parents=True, exist_ok=True)
    save_file({f"v{i}": v.contiguous() for i, v in enumerate(vectors)}, str(path) + ".tmp")
    (cache_dir / "items.jsonl").write_text("".join(json.dumps(asdict(it)) + "\n" for it in items))
    Path(str(path) + ".tmp").replace(path)
    return vectors


def teacher_forcing_batch(tokenizer: Any, model: Any, items: list[AoItem], vectors: list[torch.Tensor],
                          max_tokens: int) -> Rollouts:
    """Prompt + target tokens (+ end-of-turn when the target fits in `max_tokens`), as a Rollouts batch."""
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    targets = []
    for it in items:
        ids = tokenizer(it.target, add_special_tokens=False)["input_ids"]
        targets.append(ids[:max_tokens] if len(ids) >= max_tokens else ids + [eot])
    return teacher_forcing_rollouts([prompt_for(tokenizer, model, it) for it in items], targets, vectors,
                                    [it.target for it in items], tokenizer.pad_token_id)


def heldout_check(cfg: RunConfig, model: Any, tokenizer: Any, held: dict[str, Any]) -> dict[str, Any]:
    """Steps 3 and 5: greedy answers, real / shuffled / counterfactual, each with its `accuracy_report`."""
    items, vectors = held["items"], held["vectors"]
    args = (oracle_spec(cfg).without_system_prompt(), cfg.ao_sft.max_answer_tokens, cfg.eval.batch_size)
    donors = held["shuffled"]
    cf = [i for i, c in enumerate(held["cf_items"]) if c is not None]
    answers = {"real": ao_heldout.greedy_answers(model, tokenizer, items, vectors, *args),
               "shuffled": ao_heldout.greedy_answers(model, tokenizer, items, [vectors[j] for j in donors], *args,
                                                     layouts=[items[j] for j in donors]),
               "counterfactual": [None] * len(items)}
    for i, a in zip(cf, ao_heldout.greedy_answers(model, tokenizer, [items[i] for i in cf],
                                                  [held["cf_vectors"][i] for i in cf], *args), strict=True):
        answers["counterfactual"][i] = a
    return {c: {**ao_heldout.accuracy_report(items, answers[c]), "answers": answers[c]} for c in CONTROLS}


def prepare_heldout(cfg: RunConfig, tokenizer: Any, held_ex: list[Example], all_ex: list[Example],
                    extract: Any) -> dict[str, Any]:
    """Steps 1-2 for the held-out side: items, their vectors, the shuffled donors, the counterfactual items
    (donor context at the item's own layer and K) and their vectors, the open questions' candidate answers.
    `extract(items, name)` -> their vectors (`with_activations` into a cache folder `name`)."""
    items = ao_tasks.heldout_items(held_ex, tokenizer, cfg.ao_sft.heldout_examples, cfg.seed + 1, data=cfg.data)
    cf_items = ao_tasks.counterfactual_items(items, tokenizer, cfg.seed)
    present = [c for c in cf_items if c is not None]
    vectors = extract(items, "heldout")
    got = iter(extract(present, "counterfactual") if present else [])
    shuffled = controls.shuffled_donors([it.text for it in items], [it.reference for it in items],
                                        [(it.layer_percent, it.k) for it in items], cfg.seed)
    return {"items": items, "vectors": vectors, "shuffled": shuffled, "cf_items": cf_items,
            "cf_vectors": [None if c is None else next(got) for c in cf_items],
            "candidates": ao_tasks.answer_candidates(all_ex)}


def curve_point(cfg: RunConfig, model: Any, tokenizer: Any, held: dict[str, Any], step: int) -> list[dict[str, Any]]:
    """The cheap check at `step` (`ao_heldout.score_candidates`): rows for real and counterfactual."""
    spec = oracle_spec(cfg).without_system_prompt()
    rows = []
    for control, items, vectors in (("real", held["items"], held["vectors"]),
                                    ("counterfactual", held["cf_items"], held["cf_vectors"])):
        idx = [i for i, it in enumerate(items) if it is not None]
        scored = ao_heldout.score_candidates(model, tokenizer, [items[i] for i in idx], [vectors[i] for i in idx],
                                             held["candidates"], spec, cfg.eval.batch_size)
        scores: list[dict[str, float] | None] = [None] * len(items)
        for i, sc in zip(idx, scored, strict=True):
            scores[i] = sc
        rows += ao_heldout.curve_rows(step, control, items, scores)
    return rows


def curve_metrics(summary: dict[str, dict[str, float]]) -> dict[str, float]:
    """The metrics of one curve point (`ao_heldout.curve_summary`): yes/no and open, real and counterfactual,
    and per family for the families `metrics.CURVE_FAMILIES` names."""
    out = {}
    for control in ("real", "counterfactual"):
        part = summary.get(control, {})
        for kind in M.CURVE_KINDS:
            if kind in part:
                out[M.ao_curve_key(kind, control)] = part[kind]
        for fam in M.CURVE_FAMILIES:
            if f"family:{fam}" in part:
                out[M.ao_curve_family_key(fam, control)] = part[f"family:{fam}"]
    return out


def _postfix(summary: dict[str, dict[str, float]]) -> str:
    real, cf = summary.get("real", {}), summary.get("counterfactual", {})
    short = {"yes_no": "yn", "yes_no_balanced": "yn-bal", "open": "op"}
    return " ".join(f"{short[k]} {real[k]:.2f}/{cf.get(k, float('nan')):.2f}" for k in short if k in real)


def _line(label: str, result: dict[str, Any]) -> str:
    parts = []
    for c in CONTROLS:
        r = result[c]
        yn = "" if r["accuracy_yes_no"] is None else f", yes/no {r['accuracy_yes_no']:.3f}"
        acc = "n/a" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        parts.append(f"{c} {acc}{yn} ({r['n']} items)")
    families = ", ".join(f"{f} {v:.2f}/{result['counterfactual']['per_family'].get(f, float('nan')):.2f}"
                         for f, v in result["real"]["per_family"].items())
    return f"AO held-out accuracy {label}: " + "; ".join(parts) + f"\n  per family (real/counterfactual): {families}"


def _public(result: dict[str, Any]) -> dict[str, Any]:
    return {kind: {k: v for k, v in r.items() if k != "answers"} for kind, r in result.items()}


def _write_curve(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """heldout_curve.jsonl (every scored row) and ao_learning_curve.png (rank 0)."""
    if not place().is_main:
        return
    from grpo_ao.plots import ao_learning_curve

    (run_dir / "heldout_curve.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    steps = sorted({r["step"] for r in rows})
    points = {s: ao_heldout.curve_summary([r for r in rows if r["step"] == s]) for s in steps}
    ao_learning_curve(points, "AO pretraining: held-out, real vs counterfactual", run_dir / "ao_learning_curve.png")


def train_steps(cfg: RunConfig, model: Any, tokenizer: Any, items: list[AoItem], vectors: list[torch.Tensor],
                optimizer: Any, scheduler: Any, *, start: int, total: int, run_dir: Path, sinks: Any,
                on_curve: Any, trainer_state: dict[str, Any]) -> None:
    """Step 4: steps start+1..total over `items` (epochs in seeded orders); `on_curve(step)` -> the cheap
    check's summary every `ao_sft.eval_every` steps; checkpoints every `logging.checkpoint_every` steps."""
    steps_per_epoch = -(-len(items) // cfg.ao_sft.batch_size)
    order_rng = random.Random(cfg.seed)
    unit = ao_tasks.pair_unit(cfg.ao_sft)
    orders = [ao_tasks.block_order(order_rng, len(items), unit) for _ in range(-(-total // steps_per_epoch))]
    bar = progress_bar(total, "ao-sft", cfg.logging.progress, initial=start)
    spec = oracle_spec(cfg).without_system_prompt()
    curve = ""
    model.train()
    for step in range(start + 1, total + 1):
        epoch, s = divmod(step - 1, steps_per_epoch)
        idx = orders[epoch][s * cfg.ao_sft.batch_size:(s + 1) * cfg.ao_sft.batch_size]
        idx = shard(idx, place().rank, place().world_size)  # this rank's share of the step's batch
        batch = teacher_forcing_batch(tokenizer, model, [items[i] for i in idx], [vectors[i] for i in idx],
                                      cfg.ao_sft.max_answer_tokens) if idx else None
        loss, grad_norm, lr = teacher_forced_step(model, batch, spec, optimizer, scheduler, cfg.ao_sft.max_grad_norm)
        logged = {M.AO_SFT_LOSS: loss, M.OPTIM_GRAD_NORM: grad_norm, M.OPTIM_LR: lr}
        if cfg.ao_sft.eval_every and step % cfg.ao_sft.eval_every == 0 and step != total:
            summary = on_curve(step)
            logged.update(curve_metrics(summary))
            curve = _postfix(summary)
            model.train()
        sinks.log(logged, step)
        bar.set_postfix_str(f"loss {loss:.3f}" + (f" | real/cf {curve}" if curve else ""))
        bar.update(1)
        if step % cfg.logging.checkpoint_every == 0 or step == total:
            save_checkpoint(run_dir, step, model=model, optimizer=optimizer, scheduler=scheduler,
                            trainer_state={**trainer_state, "step": step}, keep_last=cfg.logging.keep_last)
    bar.close()
    model.eval()


def run(cfg: RunConfig, resume: bool = False) -> dict[str, Any]:
    """Draw items, cache activations, train, and report held-out accuracy (real and both controls) before → after."""
    t0 = time.perf_counter()
    require_divisible(cfg.ao_sft.batch_size, "ao_sft.batch_size", "use a multiple of the number of processes.")
    run_dir = start_run(cfg, "ao_sft")
    if not resume:
        archive_previous_run(run_dir)
    seed_everything(cfg.seed)
    model, tokenizer = load_oracle(cfg, fresh=True, gradient_checkpointing=cfg.ao_sft.gradient_checkpointing,
                                   layout=written_layout(cfg, "ao_sft", oracle_spec(cfg).without_system_prompt()))
    train_ex, held_ex = split_contexts(cfg)  # 1.
    items = draw_items(cfg, train_ex, tokenizer, cfg.ao_sft.num_examples, cfg.seed, context_prediction=True)
    with main_first():  # rank 0 writes the caches, the others read them
        vectors = with_activations(cfg, model, tokenizer, items,
                                   run_dir / "ao_cache" / cache_key(cfg, "train", items, tokenizer))  # 2.
        held = prepare_heldout(cfg, tokenizer, held_ex, train_ex + held_ex, lambda its, name: with_activations(
            cfg, model, tokenizer, its, run_dir / "ao_cache" / cache_key(cfg, name, its, tokenizer)))
    steps_per_epoch = -(-len(items) // cfg.ao_sft.batch_size)
    total = steps_per_epoch * cfg.ao_sft.epochs
    optimizer, scheduler = optimizer_and_scheduler(model, cfg.ao_sft.lr, 0.0, cfg.ao_sft.warmup_for(total),
                                                   cfg.ao_sft.lr_schedule, total)
    start, before = 0, None
    ckpt = latest_checkpoint(run_dir) if resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, model=model, optimizer=optimizer, scheduler=scheduler)
        start, before = int(state["step"]), state.get("before")
        print0(f"Resuming AO pretraining from {ckpt} (step {start}).")
    curve_file = run_dir / "heldout_curve.jsonl"
    rows = [r for r in map(json.loads, curve_file.read_text().splitlines()) if r["step"] <= start] \
        if resume and curve_file.exists() else []
    sinks = run_sinks(cfg, run_dir)

    def on_curve(step: int) -> dict[str, dict[str, float]]:
        rows.extend(point := curve_point(cfg, model, tokenizer, held, step))
        _write_curve(run_dir, rows)
        return ao_heldout.curve_summary(point)

    if before is None:
        before = _public(heldout_check(cfg, model, tokenizer, held))  # 3.
        sinks.log(curve_metrics(on_curve(0)), 0)
    print0(_line("before", before))
    train_steps(cfg, model, tokenizer, items, vectors, optimizer, scheduler, start=start, total=total,  # 4.
                run_dir=run_dir, sinks=sinks, on_curve=on_curve, trainer_state={"before": before})
    after = heldout_check(cfg, model, tokenizer, held)  # 5.
    print0(_line("after", after))
    sinks.log({**curve_metrics(on_curve(total)), M.AO_SFT_HELDOUT_ACCURACY_BEFORE: before["real"]["accuracy"],
               M.AO_SFT_HELDOUT_ACCURACY_AFTER: after["real"]["accuracy"],
               M.AO_SFT_HELDOUT_SHUFFLED_ACCURACY_AFTER: after["shuffled"]["accuracy"],
               M.AO_SFT_HELDOUT_COUNTERFACTUAL_ACCURACY_AFTER: after["counterfactual"]["accuracy"]}, total)
    sinks.close()
    if place().is_main:
        (run_dir / "heldout_answers.jsonl").write_text("".join(
            json.dumps({**asdict(it), **{f"answer_{c}" if c != "real" else "answer": after[c]["answers"][i]
                                         for c in CONTROLS},
                        "counterfactual_text": None if cf is None else cf.text}) + "\n"
            for i, (it, cf) in enumerate(zip(held["items"], held["cf_items"], strict=True))))
    final = latest_checkpoint(run_dir)
    summary = {"before": before, "after": _public(after), "train_items": len(items),
               "heldout_items": len(held["items"]), "train_contexts": len(train_ex), "heldout_contexts": len(held_ex),
               "heldout_source": cfg.ao_sft.heldout_source, "steps": total,
               "kinds": {k: sum(it.kind == k for it in items) for k in ao_tasks.KINDS},
               "adapter": str(final / "adapter") if final else None, "run_dir": str(run_dir),
               "wall_time_s": round(time.perf_counter() - t0, 1)}
    if place().is_main:
        write_json(run_dir / "summary.json", summary)
    return summary
