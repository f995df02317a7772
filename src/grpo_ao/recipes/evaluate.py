"""Calibration evaluation: `grpo-ao eval --config CONFIG [--adapter PATH ...]`.

  1. Fixed eval items: every (text, question) of the eval set in file order, with a layer percent
     and K drawn once from a seeded generator, so every adapter sees exactly the same prompts; beside
     them, each item's context labels (`context_labels`, the rows' optional `labels`).
  2. The controls' donors. Shuffled (`shuffled_donors`): item i is asked about item d(i)'s activations,
     d(i) from another example with a different reference answer. Counterfactual (`counterfactual_donors`):
     item i is asked about the context of item c(i), whose answer to i's OWN question differs from i's
     reference (known from the data or the labels), read at i's own layer and K; items without such a
     donor (no labels) are left out of it.
  3. Subject activations, extracted ONCE (base model, adapter off) and kept on CPU: the subject is
     the same for every adapter; the shuffled control reuses them, the counterfactual one adds one
     extraction of the (donor context, layer, K) triples not extracted yet.
  4. Per adapter, in the prompt layout it was trained in (`adapter_cfg`), three passes: the real answers (item i with its own activations), the shuffled control
     and the counterfactual control. Greedy by default; parse, judge, and grade against the reference with
     `grading.grade` (an answer that takes no position counts as not correct).
  5. `calibration.summarize` of each: parse rate, accuracy, Brier / ECE / MCE / AUROC (also within
     family) against correctness and against the judge's informativeness, ECE against `reward.target` —
     over parsed answers only.
  6. Write eval.json, eval.md (the tables), the records of the three passes (JSONL) and per adapter a
     reliability diagram and a confidence histogram (PNG).

Accuracy above the shuffled accuracy is what the oracle read from the activations rather than guessed
from the question; on balanced yes/no questions a guesser and a perfect reader both score ~0.5 shuffled,
so the counterfactual accuracy tells them apart (a reader -> 0, a guesser -> its prior). We deliberately
do not re-extract activations per adapter, use random vectors as a control (real activations of another
text keep their norm and statistics), or plot the controls.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grpo_ao import controls
from grpo_ao.calibration import summarize
from grpo_ao.config import RunConfig
from grpo_ao.data import Task, load_examples
from grpo_ao.errors import GrpoAoError
from grpo_ao.format import left_pad, parse_epistemic_status, render_oracle_prompt
from grpo_ao.grading import grade
from grpo_ao.judge import build_judge
from grpo_ao.models import BUILTIN_ADAPTER, load_model, resolve_adapter
from grpo_ao.plots import confidence_histogram, reliability_diagram
from grpo_ao.recipes.adapters import cfg_for_adapter
from grpo_ao.recipes.eval_report import delta, eval_markdown, markdown_table
from grpo_ao.recipes.setup import (
    judge_cache_path,
    oracle_spec,
    progress_bar,
    seed_everything,
    start_run,
    write_json,
)
from grpo_ao.reward import judge_and_reward
from grpo_ao.rollout import OracleInputs, generate_rollouts, subject_layers
from grpo_ao.steering import extract_in_batches, preprocess_vectors

NO_ADAPTER = "none"
"""Adapter spec for the bare base model (no LoRA at all)."""


def eval_items(cfg: RunConfig, tokenizer: Any) -> tuple[list[Task], list[dict[str, str]]]:
    """Step 1: the first `eval.num_examples` (text, question) pairs, layer % and K drawn once (seeded), and
    per item its context's labels ({family: value}, empty when the row has none)."""
    data = cfg.eval.data
    rng = np.random.Generator(np.random.PCG64(data.seed))
    tasks, labels = [], []
    for i, ex in enumerate(load_examples(data)):
        n_tokens = len(tokenizer(ex.context, add_special_tokens=False)["input_ids"])  # the context's own tokens
        for qa in ex.qas:
            if len(tasks) == cfg.eval.num_examples or n_tokens < data.min_positions:
                break
            layer_percent = int(data.layer_percents[int(rng.integers(len(data.layer_percents)))])
            k = int(rng.integers(data.min_positions, min(data.max_positions, n_tokens) + 1))
            tasks.append(Task(i, ex.context, qa.question, qa.reference, qa.family, layer_percent, k))
            labels.append(ex.label_map)
    if not tasks:
        raise GrpoAoError(f"eval.data.source={data.source!r} gave no usable eval item.")
    return tasks, labels


def eval_tasks(cfg: RunConfig, tokenizer: Any) -> list[Task]:
    """Step 1's items alone (`eval_items` without the labels)."""
    return eval_items(cfg, tokenizer)[0]


def shuffled_donors(tasks: Sequence[Task], seed: int) -> list[int]:
    """Step 2: the control's donor d(i) per item (`controls.shuffled_donors`, the rule shared with ao-sft)."""
    return controls.shuffled_donors([t.example_index for t in tasks], [t.reference for t in tasks],
                                    [(t.layer_percent, t.num_positions) for t in tasks], seed)


def counterfactual_donors(tasks: Sequence[Task], labels: Sequence[dict[str, str]], seed: int) -> list[int | None]:
    """Step 2: the counterfactual donor c(i) per item (`controls.counterfactual_donors`, shared with ao-sft):
    an item whose context answers i's question differently; None where none is known."""
    return controls.counterfactual_donors([t.example_index for t in tasks], [t.question for t in tasks],
                                          [t.reference for t in tasks], [t.family for t in tasks], labels,
                                          [(t.layer_percent, t.num_positions) for t in tasks], seed)


def subject_activations(cfg: RunConfig, model: Any, tokenizer: Any, tasks: Sequence[Task],
                        layers: Sequence[int], cache: dict | None = None) -> list[torch.Tensor]:
    """Step 3: each item's subject activations [K_i, hidden] on CPU, one extraction per distinct
    (context, layer, K) not yet in `cache` (filled in place), `eval.batch_size` contexts per forward
    (adapter off, eval, no grad)."""
    cache = {} if cache is None else cache
    wanted = [(t.context, layer, t.num_positions) for t, layer in zip(tasks, layers, strict=True)]
    keys = [key for key in dict.fromkeys(wanted) if key not in cache]
    if keys:
        vectors = extract_in_batches(model, tokenizer, [c for c, _, _ in keys], [layer for _, layer, _ in keys],
                                     [k for _, _, k in keys], cfg.eval.data.context_format, cfg.eval.batch_size)
        cache.update(zip(keys, vectors, strict=True))
    return [cache[key] for key in wanted]


@dataclass(frozen=True)
class Shown:
    """What the oracle is shown in each slot: the layer (percent and index), K and the vectors [K, hidden]."""

    layer_percents: list[int]
    ks: list[int]
    layers: list[int]
    vectors: list[torch.Tensor]


def shown_of(tasks: Sequence[Task], layers: Sequence[int], vectors: Sequence[torch.Tensor]) -> Shown:
    """Slot j shows tasks[j]'s layer percent and K, subject layer layers[j] and vectors[j]."""
    return Shown([t.layer_percent for t in tasks], [t.num_positions for t in tasks], list(layers), list(vectors))


def preprocessed(asked: RunConfig, base: Any, tokenizer: Any, shown: Shown) -> Shown:
    """`shown` (raw subject vectors, extracted once for every adapter) with the vector preprocessing the adapter
    is asked with (`asked.oracle.vector_preprocessing`, from its layout file)."""
    vectors = preprocess_vectors(base, tokenizer, shown.vectors, shown.layers, asked.eval.data.context_format,
                                 asked.oracle.vector_preprocessing)
    return replace(shown, vectors=vectors)


def counterfactual_slots(cfg: RunConfig, model: Any, tokenizer: Any, tasks: Sequence[Task], layers: Sequence[int],
                         donors: Sequence[int | None], cache: dict) -> tuple[list[int], Shown]:
    """Step 3 for the counterfactual control: the items with a donor, and per one the donor's CONTEXT read at
    the item's own layer and K (K capped to the donor context's tokens where it is shorter), extracted in
    one batched pass over the (context, layer, K) triples not in `cache`."""
    items = [i for i, c in enumerate(donors) if c is not None]
    n_tokens = {ctx: len(tokenizer(ctx, add_special_tokens=False)["input_ids"])
                for ctx in {tasks[donors[i]].context for i in items}}
    reads = [replace(tasks[i], context=tasks[donors[i]].context,
                     num_positions=min(tasks[i].num_positions, n_tokens[tasks[donors[i]].context])) for i in items]
    read_layers = [layers[i] for i in items]
    return items, shown_of(reads, read_layers, subject_activations(cfg, model, tokenizer, reads, read_layers, cache))


def oracle_inputs(cfg: RunConfig, tokenizer: Any, tasks: Sequence[Task], shown: Shown,
                  pairs: Sequence[tuple[int, int, int]]) -> OracleInputs:
    """Item i's question about slot s's vectors, rendered for s's layer and K, per (i, s, donor) triple.

    The real answers use s = i. Placeholders are found by token id (`render_oracle_prompt`).
    """
    spec = oracle_spec(cfg, cfg.eval.data)
    prompts = [render_oracle_prompt(tokenizer, tasks[i].question, shown.layers[s], shown.ks[s],
                                    spec.system_prompt, mode=spec.mode) for i, s, _ in pairs]
    prompt_ids, prompt_mask, positions = left_pad(prompts, tokenizer.pad_token_id)
    return OracleInputs(prompt_ids, prompt_mask, positions, [shown.vectors[s] for _, s, _ in pairs],
                        [shown.layers[s] for _, s, _ in pairs])


def grade_fields(question: str, reference: str | None, answer: str, parse_ok: bool) -> dict[str, Any]:
    """The record's grading: `correct` (with a reference: the grade is True, so a non-answer is not
    correct; without one: None), the raw verdict `graded` (True/False/None), `abstained` (with a reference:
    the answer takes no position; without one: None) and the grader's `grade_reason`. A parse failure is
    graded on its whole text (an oracle without the format still answers); calibration ignores it.
    """
    g = grade(question, reference, answer)
    known = reference is not None
    return {"correct": g.correct is True if known else None, "graded": g.correct,
            "abstained": g.correct is None if known else None, "grade_reason": g.reason}


def answer_and_score(cfg: RunConfig, model: Any, tokenizer: Any, tasks: Sequence[Task], shown: Shown,
                     triples: Sequence[tuple[int, int, int]], judge: Any, desc: str) -> list[dict]:
    """Step 4: one record per (item i, slot s, donor d): i's question answered with slot s's vectors (parse,
    judge against i's own context and reference, grade, reward); `layer_percent` and `k` are the ones the
    prompt showed (slot s's), `donor` the item whose context gave the vectors."""
    sampling = replace(cfg.sampling, num_generations=1, max_new_tokens=cfg.eval.max_new_tokens, greedy=cfg.eval.greedy)
    records = []
    bar = progress_bar(len(triples), f"eval {desc}", cfg.logging.progress)
    for start in range(0, len(triples), cfg.eval.batch_size):
        pairs = triples[start:start + cfg.eval.batch_size]
        inputs = oracle_inputs(cfg, tokenizer, tasks, shown, pairs)
        texts = generate_rollouts(model, tokenizer, inputs, sampling, spec=oracle_spec(cfg, cfg.eval.data)).texts
        parsed = [parse_epistemic_status(t) for t in texts]
        # as in training, each answer a group of one
        judged, rewards = judge_and_reward(judge, [tasks[i] for i, _, _ in pairs], parsed, 1, cfg.reward,
                                           cfg.judge.score_parse_failures)
        for (i, s, d), text, p, j, bd in zip(pairs, texts, parsed, judged, rewards, strict=True):
            t = tasks[i]
            reward = bd.total
            records.append({"item": i, "donor": d, "family": t.family, "question": t.question,
                            "reference": t.reference, "layer_percent": shown.layer_percents[s],
                            "k": shown.ks[s], "completion": text, "parse_ok": p.ok,
                            "confidence": p.confidence, "answer": p.answer, "informativeness": j.informativeness,
                            **grade_fields(t.question, t.reference, p.answer, p.ok), "reward": reward})
        bar.update(len(pairs))
    bar.close()
    return records


def summary_of(records: Sequence[dict], target: str | None) -> dict[str, Any]:
    """Step 5: `calibration.summarize` (ECE against `target`, the reward's) plus `mean_reward` and
    `abstain_rate` (parsed answers with a reference that take no position, over parsed answers with a reference)."""
    summary = summarize(records, target)
    rewards = [r["reward"] for r in records if r["reward"] is not None]
    summary["mean_reward"] = sum(rewards) / len(rewards) if rewards else None
    graded = [r["abstained"] for r in records if r["parse_ok"] and r["reference"] is not None]
    summary["abstain_rate"] = sum(graded) / len(graded) if graded else None
    return summary


def _write_records(path: Path, rows: Sequence[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path.name


def adapter_result(run_dir: Path, label: str, adapter: str | None, records: list[dict], control: list[dict],
                   counterfactual: list[dict], target: str | None) -> dict[str, Any]:
    """Steps 5–6 for one adapter: summaries, the records files and the two plots. `counterfactual` holds
    only the items with a counterfactual donor; `n_without_donor` counts the others."""
    summary, shuffled, cf = (summary_of(rows, target) for rows in (records, control, counterfactual))
    about = "correct" if summary.get("reliability_correct") and summary.get("n_correct_known") else "info"
    title = f"{label}: reliability vs {'correctness' if about == 'correct' else 'judge informativeness'}"
    plots = {"reliability": str(reliability_diagram(summary[f"reliability_{about}"], title,
                                                    run_dir / f"reliability_{label}.png")),
             "confidence_hist": str(confidence_histogram(summary["confidence_hist"], f"{label}: stated confidence X",
                                                         run_dir / f"confidence_{label}.png"))}
    files = {name: _write_records(run_dir / f"eval_records_{label}{suffix}.jsonl", rows) for name, suffix, rows in
             (("records", "", records), ("shuffled", "_shuffled", control),
              ("counterfactual", "_counterfactual", counterfactual))}
    same = sum(r["layer_percent"] == records[r["item"]]["layer_percent"] and r["k"] == records[r["item"]]["k"]
               for r in control)
    return {"adapter": adapter, "summary": summary, "plots": plots, "records": files["records"],
            "controls": {"shuffled": {"summary": shuffled, "records": files["shuffled"],
                                      "accuracy_delta": delta(summary["accuracy"], shuffled["accuracy"]),
                                      "same_prompt_fraction": same / len(control)},
                         "counterfactual": {"summary": cf, "records": files["counterfactual"],
                                            "accuracy_delta": delta(summary["accuracy"], cf["accuracy"]),
                                            "n_without_donor": len(records) - len(counterfactual),
                                            "k_capped": sum(r["k"] != records[r["item"]]["k"]
                                                            for r in counterfactual)}}}


def default_label(path: str) -> str:
    """`runs/x/grpo/checkpoints/step-000500/adapter` → `grpo-step-000500`; otherwise the directory name."""
    parts = Path(path).parts
    if len(parts) >= 4 and parts[-1] == "adapter" and parts[-3] == "checkpoints":
        return f"{parts[-4]}-{parts[-2]}"
    return Path(path).name


def parse_adapters(cfg: RunConfig, adapters: list[str] | None) -> list[tuple[str, str | None]]:
    """`label=path`, a path, `base` (the config's starting adapter, None when it has none) or `none`
    (the bare base model, no adapter: None)."""
    out = []
    for spec in adapters or ["base"]:
        label, _, path = spec.partition("=") if "=" in spec else (None, "", spec)
        if path in ("base", NO_ADAPTER):
            out.append((label or path, resolve_adapter(cfg.model.adapter) if path == "base" else None))
            continue
        if path.startswith(BUILTIN_ADAPTER):
            out.append((label or path[len(BUILTIN_ADAPTER):], resolve_adapter(path)))
            continue
        if not Path(path).exists() and not re.fullmatch(r"\w[\w.-]*/[\w.-]+", path):
            raise GrpoAoError(f"--adapter {path!r}: no such directory. Give a LoRA adapter directory, a hub id "
                              f"(org/name), 'base' (the config's adapter) or '{NO_ADAPTER}' (the bare base model).")
        out.append((label or default_label(path), path))
    labels = [label for label, _ in out]
    duplicates = sorted({x for x in labels if labels.count(x) > 1})
    if duplicates:
        raise GrpoAoError(f"--adapter: the label(s) {duplicates} name more than one adapter; name each one, "
                          "e.g. --adapter sft=PATH --adapter grpo=PATH.")
    bad = [x for x in labels if not re.fullmatch(r"[\w.-]+", x)]
    if bad:
        raise GrpoAoError(f"--adapter: labels {bad} must be letters, digits, '.', '_' or '-' (they name files).")
    return out


@contextlib.contextmanager
def oracle_with(base: Any, state: dict, label: str, adapter: str | None):
    """The base model with `adapter` active (loaded once per label); None = no adapter at all (every
    loaded adapter disabled: `PeftModel.from_pretrained` wraps `base` in place, so `base` alone is not bare)."""
    from peft import PeftModel

    if adapter is None:
        peft_model = state.get("peft")
        with peft_model.disable_adapter() if peft_model is not None else contextlib.nullcontext():
            yield peft_model if peft_model is not None else base
        return
    try:
        if state.get("peft") is None:
            state["peft"] = PeftModel.from_pretrained(base, adapter, adapter_name=label)
        elif label not in state["peft"].peft_config:
            state["peft"].load_adapter(adapter, adapter_name=label)
    except (OSError, ValueError) as e:
        raise GrpoAoError(f"Could not load the adapter {adapter!r} for {label!r}: {e}") from e
    state["peft"].set_adapter(label)
    state["peft"].eval()
    yield state["peft"]


def adapter_cfg(cfg: RunConfig, label: str, adapter: str | None) -> RunConfig:
    """The config `adapter` is asked with: its own prompt layout when its grpo_ao_oracle.json records one (an AO
    adapter trained without a system prompt is asked without one), else `cfg` (`recipes.adapters.cfg_for_adapter`,
    `oracle.layout_from_adapter`). The bare model (None) gets the config's layout."""
    return cfg_for_adapter(cfg, adapter, cfg.eval.data, label) if adapter is not None else cfg


def run(cfg: RunConfig, adapters: list[str] | None = None) -> dict[str, Any]:
    """Evaluate each adapter and its two controls on the same items; write eval.json, eval.md,
    records and PNGs to the run directory."""
    run_dir = start_run(cfg, "eval")
    seed_everything(cfg.seed)
    to_evaluate = parse_adapters(cfg, adapters)
    base, tokenizer = load_model(cfg.model)
    tasks, labels = eval_items(cfg, tokenizer)  # 1.
    donors = shuffled_donors(tasks, cfg.eval.data.seed)  # 2.
    cf_donors = counterfactual_donors(tasks, labels, cfg.eval.data.seed)
    layers = subject_layers(base, tasks)
    cache: dict = {}  # 3. before any adapter wraps `base`
    real = shown_of(tasks, layers, subject_activations(cfg, base, tokenizer, tasks, layers, cache))
    cf_items, cf_shown = counterfactual_slots(cfg, base, tokenizer, tasks, layers, cf_donors, cache)
    passes = {"real": [(i, i, i) for i in range(len(tasks))], "shuffled": [(i, d, d) for i, d in enumerate(donors)],
              "counterfactual": [(i, m, cf_donors[i]) for m, i in enumerate(cf_items)]}
    judge = build_judge(cfg.judge, cache_path=judge_cache_path(cfg))
    results: dict[str, dict] = {}
    state: dict[str, Any] = {}
    for label, adapter in to_evaluate:
        asked = adapter_cfg(cfg, label, adapter)
        shown, shown_cf = (preprocessed(asked, base, tokenizer, s) for s in (real, cf_shown))  # as it was trained
        with oracle_with(base, state, label, adapter) as model:  # 4.
            records = answer_and_score(asked, model, tokenizer, tasks, shown, passes["real"], judge, label)
            control = answer_and_score(asked, model, tokenizer, tasks, shown, passes["shuffled"], judge,
                                       f"{label} shuffled")
            cf = answer_and_score(asked, model, tokenizer, tasks, shown_cf, passes["counterfactual"], judge,
                                  f"{label} counterfactual")
        for r in cf:
            r["donor_context"] = tasks[r["donor"]].context
        results[label] = adapter_result(run_dir, label, adapter, records, control, cf, cfg.reward.target)  # 5.–6.
        results[label]["layout"] = asdict(oracle_spec(asked, cfg.eval.data))
    report = {"num_items": len(tasks), "eval_source": cfg.eval.data.source, "greedy": cfg.eval.greedy,
              "judge": cfg.judge.kind, "reward_target": cfg.reward.target, "adapters": results}
    write_json(run_dir / "eval.json", report)
    (run_dir / "eval.md").write_text(eval_markdown(report))
    print(markdown_table(results))
    print(f"Wrote {run_dir / 'eval.md'}, eval.json and {2 * len(results)} plots.")
    return report
