"""AO pretraining: `grpo-ao ao-sft --config CONFIG`. Turns a base model into an activation oracle.

The Activation Oracles recipe (https://arxiv.org/abs/2512.15674) at small scale, for models without a
published oracle: a LoRA learns to answer questions about a text from the subject's activations alone.

  1. Split the examples of `data.source` by CONTEXT: `ao_sft.heldout_contexts` of them are held out and
     never trained on. Draw the items (seeded):
     - classification: a labelled question of an example (yes/no, about half negatives in the built-in
       data, or an open label question), target = the reference answer;
     - context prediction (self-supervised, any text): the activations at K positions ending at a random
       token e, target = the next (or previous) `ao_sft.context_prediction_tokens` tokens of the text.
     Each item gets a layer % from `data.layer_percents` and K from the config range.
  2. Subject activations (adapter off) for every item, extracted once and cached on disk.
  3. Held-out accuracy before training, with the real activations and with shuffled ones (each item gets
     the activations of a held-out item with a different reference: a fixed derangement).
  4. Teacher-forced cross-entropy on the answer tokens, base-oracle layout (no system prompt), injection
     at `oracle.injection_layer`, batched; checkpoints every `logging.checkpoint_every` steps (resumable).
  5. Held-out accuracy after training (real and shuffled); summary.json.

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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from grpo_ao import controls
from grpo_ao import metrics as M
from grpo_ao.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from grpo_ao.config import RunConfig
from grpo_ao.data import Example, load_examples, split_examples
from grpo_ao.distributed import gather_objects, main_first, place, print0, require_divisible, shard, unshard
from grpo_ao.errors import GrpoAoError
from grpo_ao.format import left_pad, render_oracle_prompt
from grpo_ao.grading import grade, is_yes_no_question
from grpo_ao.models import num_layers
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
from grpo_ao.rollout import (
    OracleInputs,
    Rollouts,
    SamplingConfig,
    generate_rollouts,
    subject_layers,
    teacher_forcing_rollouts,
)
from grpo_ao.steering import extract_in_batches, layer_for_percent

NEXT_QUESTION = "Can you predict the next {n} tokens that come after this?"
PREVIOUS_QUESTION = "Can you predict the {n} tokens that come before this?"
EXTRACT_BATCH = 32


@dataclass(frozen=True)
class AoItem:
    """One (activations → answer) training or held-out item."""

    text: str
    """What the subject reads; its LAST k tokens' activations are injected."""
    question: str
    target: str
    """The answer the oracle is taught (the reference, or the predicted tokens)."""
    reference: str | None
    """Reference for `grade` (classification items); None for context prediction."""
    family: str | None
    kind: str
    """yes_no | open | next | previous."""
    layer_percent: int
    k: int


def _labelled(ex: Example) -> list[Any]:
    return [qa for qa in ex.qas if qa.reference is not None]


def classification_item(ex: Example, rng: random.Random, cfg: RunConfig, n_tokens: int) -> AoItem | None:
    """A labelled question of `ex` with its reference as the target; None when `ex` has no labelled one."""
    qas = _labelled(ex)
    if not qas or n_tokens < cfg.data.min_positions:
        return None
    qa = rng.choice(qas)
    kind = "yes_no" if is_yes_no_question(qa.question, qa.reference) else "open"
    return AoItem(ex.context, qa.question, qa.reference, qa.reference, qa.family, kind,
                  rng.choice(cfg.data.layer_percents), rng.randint(cfg.data.min_positions,
                                                                   min(cfg.data.max_positions, n_tokens)))


def context_prediction_item(ex: Example, rng: random.Random, cfg: RunConfig, tokenizer: Any) -> AoItem | None:
    """Activations at K tokens ending at e → the next (or previous) n tokens of the text; None if too short."""
    ids = tokenizer(ex.context, add_special_tokens=False)["input_ids"]
    n = cfg.ao_sft.context_prediction_tokens
    k = rng.randint(cfg.data.min_positions, cfg.data.max_positions)
    direction = rng.choice(("next", "previous"))
    lo = k if direction == "next" else k + n
    hi = len(ids) - n if direction == "next" else len(ids)
    if hi < lo:
        return None
    end = rng.randint(lo, hi)
    prefix = tokenizer.decode(ids[:end])
    if tokenizer(prefix, add_special_tokens=False)["input_ids"] != ids[:end]:
        return None  # the prefix would tokenize differently on its own: the K positions would shift
    span = ids[end:end + n] if direction == "next" else ids[end - k - n:end - k]
    target = tokenizer.decode(span).strip()
    if not target:
        return None
    question = (NEXT_QUESTION if direction == "next" else PREVIOUS_QUESTION).format(n=n)
    return AoItem(prefix, question, target, None, None, direction, rng.choice(cfg.data.layer_percents), k)


def draw_items(cfg: RunConfig, examples: list[Example], tokenizer: Any, n: int, seed: int,
               context_prediction: bool) -> list[AoItem]:
    """Step 1: `n` items, a share `ao_sft.context_prediction_frac` of them context prediction (seeded)."""
    rng = random.Random(seed)
    n_tokens = {ex.context: len(tokenizer(ex.context, add_special_tokens=False)["input_ids"]) for ex in examples}
    labelled = [ex for ex in examples if _labelled(ex)]
    if not labelled:
        raise GrpoAoError(f"ao-sft needs questions with reference answers; data.source={cfg.data.source!r} has none "
                          "(see docs/data.md: questions with an \"answer\").")
    n_ctx = round(n * cfg.ao_sft.context_prediction_frac) if context_prediction else 0
    items: list[AoItem] = []
    plans = ((n - n_ctx, labelled, lambda ex: classification_item(ex, rng, cfg, n_tokens[ex.context])),
             (n_ctx, examples, lambda ex: context_prediction_item(ex, rng, cfg, tokenizer)))
    for want, pool, make in plans:
        got = tries = 0
        while got < want:
            tries += 1
            if tries > 50 * want + 100:
                raise GrpoAoError(f"ao-sft could not draw {want} items from data.source={cfg.data.source!r}: its "
                                  "contexts are too short for data.min_positions / ao_sft.context_prediction_tokens.")
            item = make(rng.choice(pool))
            if item is not None:
                items.append(item)
                got += 1
    rng.shuffle(items)
    return items


def cache_key(cfg: RunConfig, kind: str, items: list[AoItem], tokenizer: Any) -> str:
    """The activations of `items` depend on the subject model, the items themselves (so the data's content, not
    only its path), how the tokenizer splits them and the extraction code: all of it is in the key."""
    return fingerprint(kind, cfg.model.source, cfg.model.seed, cfg.model.dtype, cfg.data.context_format,
                       [asdict(it) for it in items], tokenizer_fingerprint(tokenizer), code_fingerprint())


def with_activations(cfg: RunConfig, model: Any, tokenizer: Any, items: list[AoItem],
                     cache_dir: Path) -> list[torch.Tensor]:
    """Step 2: subject activations [K, hidden] per item (adapter off), cached as safetensors."""
    path = cache_dir / "activations.safetensors"
    if path.exists():
        acts = load_file(str(path))
        return [acts[f"v{i}"] for i in range(len(items))]
    layers = subject_layers(model, items)
    bar = progress_bar(len(items), "ao-sft activations", cfg.logging.progress)
    vectors = [v.float() for v in extract_in_batches(model, tokenizer, [it.text for it in items], layers,
                                                     [it.k for it in items], cfg.data.context_format,
                                                     EXTRACT_BATCH, bar.update)]
    bar.close()
    cache_dir.mkdir(parents=True, exist_ok=True)
    save_file({f"v{i}": v.contiguous() for i, v in enumerate(vectors)}, str(path) + ".tmp")
    (cache_dir / "items.jsonl").write_text("".join(json.dumps(asdict(it)) + "\n" for it in items))
    Path(str(path) + ".tmp").replace(path)
    return vectors


def prompt_for(tokenizer: Any, model: Any, item: AoItem, layer_percent: int | None = None, k: int | None = None):
    """The base-oracle prompt for `item`, optionally for another item's layer and K: rendered here (the
    activations are cached), in the layout of `oracle_spec(cfg).without_system_prompt()`, as generation uses."""
    layer = layer_for_percent(num_layers(model), item.layer_percent if layer_percent is None else layer_percent)
    return render_oracle_prompt(tokenizer, item.question, layer, item.k if k is None else k, None, mode="none")


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


def heldout_accuracy(cfg: RunConfig, model: Any, tokenizer: Any, items: list[AoItem], vectors: list[torch.Tensor],
                     donors: list[int] | None = None) -> dict[str, Any]:
    """Greedy answers graded by `grade`; with `donors`, item i reads item donors[i]'s activations (control).
    Each rank answers its share of the items; the answers are gathered in item order on every rank.

    Returns accuracy over all items and over yes/no items, and the answers."""
    sampling = SamplingConfig(num_generations=1, max_new_tokens=cfg.ao_sft.max_answer_tokens, greedy=True)
    spec = oracle_spec(cfg).without_system_prompt()  # base-oracle layout, as `prompt_for` renders
    mine = shard(range(len(items)), place().rank, place().world_size)
    answers: list[str] = []
    for s in range(0, len(mine), cfg.eval.batch_size):
        idx = mine[s:s + cfg.eval.batch_size]
        src = idx if donors is None else [donors[i] for i in idx]  # whose activations each row reads
        prompts = [prompt_for(tokenizer, model, items[i], items[j].layer_percent, items[j].k) for i, j in zip(idx, src)]
        prompt_ids, prompt_mask, positions = left_pad(prompts, tokenizer.pad_token_id)
        layers = subject_layers(model, [items[j] for j in src])
        inputs = OracleInputs(prompt_ids, prompt_mask, positions, [vectors[j] for j in src], layers)
        rollouts = generate_rollouts(model, tokenizer, inputs, sampling, spec=spec)
        answers += [t.strip() for t in rollouts.texts]
    answers = unshard(gather_objects(answers))
    correct = [grade(it.question, it.reference, a).correct is True for it, a in zip(items, answers, strict=True)]
    yes_no = [c for it, c in zip(items, correct) if it.kind == "yes_no"]
    return {"accuracy": sum(correct) / len(correct), "accuracy_yes_no": sum(yes_no) / len(yes_no) if yes_no else None,
            "n": len(items), "n_yes_no": len(yes_no), "answers": answers}


def evaluate_heldout(cfg: RunConfig, model: Any, tokenizer: Any, items: list[AoItem],
                     vectors: list[torch.Tensor]) -> dict[str, Any]:
    """Steps 3 and 5: real and shuffled held-out accuracy."""
    real = heldout_accuracy(cfg, model, tokenizer, items, vectors)
    shuffled = heldout_accuracy(cfg, model, tokenizer, items, vectors, controls.shuffled_donors([it.text for it in items], [it.reference for it in items],
                                                              [(it.layer_percent, it.k) for it in items], cfg.seed))
    return {"real": real, "shuffled": shuffled}


def _line(label: str, result: dict[str, Any]) -> str:
    real, shuffled = result["real"], result["shuffled"]
    yn = (f"; yes/no {real['accuracy_yes_no']:.3f} (shuffled {shuffled['accuracy_yes_no']:.3f})"
          if real["accuracy_yes_no"] is not None else "")
    return (f"AO held-out accuracy {label}: {real['accuracy']:.3f} (shuffled {shuffled['accuracy']:.3f}), "
            f"{real['n']} items{yn}")


def _public(result: dict[str, Any]) -> dict[str, Any]:
    return {kind: {k: v for k, v in r.items() if k != "answers"} for kind, r in result.items()}


def run(cfg: RunConfig, resume: bool = False) -> dict[str, Any]:
    """Draw items, cache activations, train, and report held-out accuracy (real and shuffled) before → after."""
    t0 = time.perf_counter()
    require_divisible(cfg.ao_sft.batch_size, "ao_sft.batch_size", "use a multiple of the number of processes.")
    run_dir = start_run(cfg, "ao_sft")
    if not resume:
        archive_previous_run(run_dir)
    seed_everything(cfg.seed)
    model, tokenizer = load_oracle(cfg, fresh=True, gradient_checkpointing=cfg.ao_sft.gradient_checkpointing,
                                   layout=written_layout(cfg, "ao_sft", oracle_spec(cfg).without_system_prompt()))
    train_ex, held_ex = split_examples(load_examples(cfg.data), cfg.ao_sft.heldout_contexts, cfg.seed)  # 1.
    if not train_ex or not held_ex:
        raise GrpoAoError(f"ao_sft.heldout_contexts={cfg.ao_sft.heldout_contexts} leaves {len(train_ex)} training and "
                          f"{len(held_ex)} held-out contexts; both need at least one.")
    items = draw_items(cfg, train_ex, tokenizer, cfg.ao_sft.num_examples, cfg.seed, context_prediction=True)
    held = draw_items(cfg, held_ex, tokenizer, cfg.ao_sft.heldout_examples, cfg.seed + 1, context_prediction=False)
    with main_first():  # rank 0 writes the caches, the others read them
        vectors = with_activations(cfg, model, tokenizer, items,
                                   run_dir / "ao_cache" / cache_key(cfg, "train", items, tokenizer))  # 2.
        held_vectors = with_activations(cfg, model, tokenizer, held,
                                        run_dir / "ao_cache" / cache_key(cfg, "heldout", held, tokenizer))
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
    if before is None:
        before = _public(evaluate_heldout(cfg, model, tokenizer, held, held_vectors))  # 3.
    print0(_line("before", before))
    sinks = run_sinks(cfg, run_dir)
    order_rng = random.Random(cfg.seed)
    orders = [order_rng.sample(range(len(items)), len(items)) for _ in range(cfg.ao_sft.epochs)]
    bar = progress_bar(total, "ao-sft", cfg.logging.progress, initial=start)
    spec = oracle_spec(cfg).without_system_prompt()
    model.train()
    for step in range(start + 1, total + 1):  # 4.
        epoch, s = divmod(step - 1, steps_per_epoch)
        idx = orders[epoch][s * cfg.ao_sft.batch_size:(s + 1) * cfg.ao_sft.batch_size]
        idx = shard(idx, place().rank, place().world_size)  # this rank's share of the step's batch
        batch = teacher_forcing_batch(tokenizer, model, [items[i] for i in idx], [vectors[i] for i in idx],
                                      cfg.ao_sft.max_answer_tokens) if idx else None
        loss, grad_norm, lr = teacher_forced_step(model, batch, spec, optimizer, scheduler, cfg.ao_sft.max_grad_norm)
        sinks.log({M.AO_SFT_LOSS: loss, M.OPTIM_GRAD_NORM: grad_norm, M.OPTIM_LR: lr}, step)
        bar.set_postfix(loss=f"{loss:.3f}")
        bar.update(1)
        if step % cfg.logging.checkpoint_every == 0 or step == total:
            save_checkpoint(run_dir, step, model=model, optimizer=optimizer, scheduler=scheduler,
                            trainer_state={"step": step, "before": before}, keep_last=cfg.logging.keep_last)
    bar.close()
    model.eval()
    after = evaluate_heldout(cfg, model, tokenizer, held, held_vectors)  # 5.
    print0(_line("after", after))
    sinks.log({M.AO_SFT_HELDOUT_ACCURACY_BEFORE: before["real"]["accuracy"],
               M.AO_SFT_HELDOUT_ACCURACY_AFTER: after["real"]["accuracy"],
               M.AO_SFT_HELDOUT_SHUFFLED_ACCURACY_AFTER: after["shuffled"]["accuracy"]}, total)
    sinks.close()
    if place().is_main:
        (run_dir / "heldout_answers.jsonl").write_text("".join(
            json.dumps({**asdict(it), "answer": a, "answer_shuffled": b}) + "\n"
            for it, a, b in zip(held, after["real"]["answers"], after["shuffled"]["answers"], strict=True)))
    final = latest_checkpoint(run_dir)
    summary = {"before": before, "after": _public(after), "train_items": len(items), "heldout_items": len(held),
               "train_contexts": len(train_ex), "heldout_contexts": len(held_ex), "steps": total,
               "adapter": str(final / "adapter") if final else None, "run_dir": str(run_dir),
               "wall_time_s": round(time.perf_counter() - t0, 1)}
    if place().is_main:
        write_json(run_dir / "summary.json", summary)
    return summary
