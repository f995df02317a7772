"""Calibration evaluation: `grpo-ao eval --config CONFIG [--adapter PATH ...]`.

  1. Fixed eval items: every (text, question) of the eval set in file order, with a layer percent
     and K drawn once from a seeded generator, so every adapter sees exactly the same prompts.
  2. The shuffled control's donors (`shuffled_donors`): item i is also asked about item d(i)'s
     activations, d(i) from another example with a different reference answer.
  3. Subject activations, extracted ONCE (base model, adapter off) and kept on CPU: the subject is
     the same for every adapter, and the control reuses them.
  4. Per adapter, in the prompt layout it was trained in (`adapter_cfg`), twice: the real answers (item i
     with its own activations) and the control (item i with d(i)'s). Greedy by default; parse, judge, and
     grade against the reference with `grading.grade` (an answer that takes no position counts as not correct).
  5. `calibration.summarize` of each: parse rate, accuracy, Brier / ECE / MCE / AUROC against
     correctness and against the judge's informativeness — over parsed answers only.
  6. Write eval.json, eval.md (the tables), the records of both passes (JSONL) and per adapter a
     reliability diagram and a confidence histogram (PNG).

Accuracy above the shuffled accuracy is what the oracle read from the activations rather than guessed
from the question. We deliberately do not re-extract activations per adapter, use random vectors as the
control (real activations of another text keep their norm and statistics), or plot the control.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, replace
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
from grpo_ao.steering import extract_in_batches

TABLE_COLUMNS = [
    ("n", "n"), ("parse rate", "parse_rate"), ("accuracy", "accuracy"), ("shuffled acc", "shuffled_accuracy"),
    ("Δ acc", "accuracy_delta"), ("AUROC", "auroc_correct"), ("ECE (correct)", "ece_correct"),
    ("Brier (correct)", "brier_correct"), ("ECE (info)", "ece_info"), ("conf if right", "mean_confidence_correct"),
    ("conf if wrong", "mean_confidence_incorrect"),
]
"""The main table (the pipeline's final table); `shuffled_accuracy` and `accuracy_delta` come from the control."""
MORE_COLUMNS = [
    ("abstain rate", "abstain_rate"), ("mean info", "mean_informativeness"), ("mean conf", "mean_confidence"),
    ("MCE (correct)", "mce_correct"), ("Brier (info)", "brier_info"), ("reward", "mean_reward"),
]
FAMILY_COLUMNS = [("n", "n"), ("parse rate", "parse_rate"), ("accuracy", "accuracy"),
                  ("shuffled acc", "shuffled_accuracy"), ("Δ acc", "accuracy_delta"), ("ECE (correct)", "ece_correct"),
                  ("AUROC", "auroc_correct")]
NO_ADAPTER = "none"
"""Adapter spec for the bare base model (no LoRA at all)."""


def eval_tasks(cfg: RunConfig, tokenizer: Any) -> list[Task]:
    """Step 1: the first `eval.num_examples` (text, question) pairs, layer % and K drawn once (seeded)."""
    data = cfg.eval.data
    rng = np.random.Generator(np.random.PCG64(data.seed))
    tasks = []
    for i, ex in enumerate(load_examples(data)):
        n_tokens = len(tokenizer(ex.context, add_special_tokens=False)["input_ids"])  # the context's own tokens
        for qa in ex.qas:
            if len(tasks) == cfg.eval.num_examples or n_tokens < data.min_positions:
                break
            layer_percent = int(data.layer_percents[int(rng.integers(len(data.layer_percents)))])
            k = int(rng.integers(data.min_positions, min(data.max_positions, n_tokens) + 1))
            tasks.append(Task(i, ex.context, qa.question, qa.reference, qa.family, layer_percent, k))
    if not tasks:
        raise GrpoAoError(f"eval.data.source={data.source!r} gave no usable eval item.")
    return tasks


def shuffled_donors(tasks: Sequence[Task], seed: int) -> list[int]:
    """Step 2: the control's donor d(i) per item (`controls.shuffled_donors`, the rule shared with ao-sft)."""
    return controls.shuffled_donors([t.example_index for t in tasks], [t.reference for t in tasks],
                                    [(t.layer_percent, t.num_positions) for t in tasks], seed)


def subject_activations(cfg: RunConfig, model: Any, tokenizer: Any, tasks: Sequence[Task],
                        layers: Sequence[int]) -> list[torch.Tensor]:
    """Step 3: each item's subject activations [K_i, hidden] on CPU, one extraction per distinct
    (context, layer, K), `eval.batch_size` contexts per forward (adapter off, eval, no grad)."""
    keys = list(dict.fromkeys((t.context, layer, t.num_positions) for t, layer in zip(tasks, layers, strict=True)))
    vectors = extract_in_batches(model, tokenizer, [c for c, _, _ in keys], [layer for _, layer, _ in keys],
                                 [k for _, _, k in keys], cfg.eval.data.context_format, cfg.eval.batch_size)
    cache = dict(zip(keys, vectors, strict=True))
    return [cache[(t.context, layer, t.num_positions)] for t, layer in zip(tasks, layers, strict=True)]


def oracle_inputs(cfg: RunConfig, tokenizer: Any, tasks: Sequence[Task], layers: Sequence[int],
                  activations: Sequence[torch.Tensor], pairs: Sequence[tuple[int, int]]) -> OracleInputs:
    """Item i's question about donor d's activations, rendered for d's layer and K, per (i, d) pair.

    The real answers use d = i. Placeholders are found by token id (`render_oracle_prompt`).
    """
    spec = oracle_spec(cfg, cfg.eval.data)
    prompts = [render_oracle_prompt(tokenizer, tasks[i].question, layers[d], tasks[d].num_positions,
                                    spec.system_prompt, mode=spec.mode) for i, d in pairs]
    prompt_ids, prompt_mask, positions = left_pad(prompts, tokenizer.pad_token_id)
    return OracleInputs(prompt_ids, prompt_mask, positions, [activations[d] for _, d in pairs],
                        [layers[d] for _, d in pairs])


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


def answer_and_score(cfg: RunConfig, model: Any, tokenizer: Any, tasks: Sequence[Task], layers: Sequence[int],
                     activations: Sequence[torch.Tensor], donors: Sequence[int], judge: Any, desc: str) -> list[dict]:
    """Step 4: one record per item i answered with donor d = donors[i]'s activations (parse, judge, grade,
    reward); `layer_percent` and `k` are the ones the prompt showed (the donor's)."""
    sampling = replace(cfg.sampling, num_generations=1, max_new_tokens=cfg.eval.max_new_tokens, greedy=cfg.eval.greedy)
    records = []
    bar = progress_bar(len(tasks), f"eval {desc}", cfg.logging.progress)
    for start in range(0, len(tasks), cfg.eval.batch_size):
        pairs = [(i, donors[i]) for i in range(start, min(start + cfg.eval.batch_size, len(tasks)))]
        inputs = oracle_inputs(cfg, tokenizer, tasks, layers, activations, pairs)
        texts = generate_rollouts(model, tokenizer, inputs, sampling, spec=oracle_spec(cfg, cfg.eval.data)).texts
        parsed = [parse_epistemic_status(t) for t in texts]
        # as in training, each answer a group of one
        judged, rewards = judge_and_reward(judge, [tasks[i] for i, _ in pairs], parsed, 1, cfg.reward,
                                           cfg.judge.score_parse_failures)
        for (i, d), text, p, j, bd in zip(pairs, texts, parsed, judged, rewards, strict=True):
            t = tasks[i]
            reward = bd.total
            records.append({"item": i, "donor": d, "family": t.family, "question": t.question,
                            "reference": t.reference, "layer_percent": tasks[d].layer_percent,
                            "k": tasks[d].num_positions, "completion": text, "parse_ok": p.ok,
                            "confidence": p.confidence, "answer": p.answer, "informativeness": j.informativeness,
                            **grade_fields(t.question, t.reference, p.answer, p.ok), "reward": reward})
        bar.update(len(pairs))
    bar.close()
    return records


def summary_of(records: Sequence[dict]) -> dict[str, Any]:
    """Step 5: `calibration.summarize` plus `mean_reward` and `abstain_rate` (parsed answers with a
    reference that take no position, over parsed answers with a reference)."""
    summary = summarize(records)
    rewards = [r["reward"] for r in records if r["reward"] is not None]
    summary["mean_reward"] = sum(rewards) / len(rewards) if rewards else None
    graded = [r["abstained"] for r in records if r["parse_ok"] and r["reference"] is not None]
    summary["abstain_rate"] = sum(graded) / len(graded) if graded else None
    return summary


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def adapter_result(run_dir: Path, label: str, adapter: str | None, records: list[dict],
                   control: list[dict]) -> dict[str, Any]:
    """Steps 5–6 for one adapter: summaries, the records files and the two plots."""
    summary, shuffled = summary_of(records), summary_of(control)
    target = "correct" if summary.get("reliability_correct") and summary.get("n_correct_known") else "info"
    about = "correctness" if target == "correct" else "judge informativeness"
    plots = {"reliability": str(reliability_diagram(summary[f"reliability_{target}"],
                                                    f"{label}: reliability vs {about}",
                                                    run_dir / f"reliability_{label}.png")),
             "confidence_hist": str(confidence_histogram(summary["confidence_hist"], f"{label}: stated confidence X",
                                                         run_dir / f"confidence_{label}.png"))}
    files = {"records": f"eval_records_{label}.jsonl", "shuffled": f"eval_records_{label}_shuffled.jsonl"}
    for name, rows in (("records", records), ("shuffled", control)):
        (run_dir / files[name]).write_text("".join(json.dumps(r) + "\n" for r in rows))
    same = sum(r["layer_percent"] == records[r["item"]]["layer_percent"] and r["k"] == records[r["item"]]["k"]
               for r in control)
    return {"adapter": adapter, "summary": summary, "plots": plots, "records": files["records"],
            "controls": {"shuffled": {"summary": shuffled, "records": files["shuffled"],
                                      "accuracy_delta": _delta(summary["accuracy"], shuffled["accuracy"]),
                                      "same_prompt_fraction": same / len(control)}}}


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    return str(value) if isinstance(value, int) else f"{value:.3f}"


def _with_control(summary: dict, shuffled: dict) -> dict:
    return {**summary, "shuffled_accuracy": shuffled["accuracy"],
            "accuracy_delta": _delta(summary["accuracy"], shuffled["accuracy"])}


def _table(keys: Sequence[str], columns: Sequence[tuple[str, str]], rows: Sequence[tuple[list[str], dict]]) -> str:
    lines = ["| " + " | ".join([*keys, *(c for c, _ in columns)]) + " |", "|---" * (len(keys) + len(columns)) + "|"]
    return "\n".join(lines + ["| " + " | ".join([*names, *(_fmt(row.get(k)) for _, k in columns)]) + " |"
                              for names, row in rows])


def markdown_table(results: dict[str, dict], columns: Sequence[tuple[str, str]] = TABLE_COLUMNS) -> str:
    """One row per adapter, formatted from the eval.json numbers (3 decimals); Δ acc = accuracy − shuffled acc."""
    return _table(["adapter"], columns, [([label], _with_control(r["summary"], r["controls"]["shuffled"]["summary"]))
                                         for label, r in results.items()])


def family_table(results: dict[str, dict]) -> str:
    """Adapter × task family: accuracy, shuffled accuracy and their difference, calibration."""
    rows = []
    for label, r in results.items():
        control = r["controls"]["shuffled"]["summary"]["per_family"]
        rows += [([label, family], _with_control(fs, control.get(family, {"accuracy": None})))
                 for family, fs in sorted(r["summary"]["per_family"].items())]
    return _table(["adapter", "family"], FAMILY_COLUMNS, rows)


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
    """Evaluate each adapter and its shuffled control on the same items; write eval.json, eval.md,
    records and PNGs to the run directory."""
    run_dir = start_run(cfg, "eval")
    seed_everything(cfg.seed)
    to_evaluate = parse_adapters(cfg, adapters)
    base, tokenizer = load_model(cfg.model)
    tasks = eval_tasks(cfg, tokenizer)  # 1.
    donors = shuffled_donors(tasks, cfg.eval.data.seed)  # 2.
    layers = subject_layers(base, tasks)
    activations = subject_activations(cfg, base, tokenizer, tasks, layers)  # 3. before any adapter wraps `base`
    judge = build_judge(cfg.judge, cache_path=judge_cache_path(cfg))
    results: dict[str, dict] = {}
    state: dict[str, Any] = {}
    for label, adapter in to_evaluate:
        asked = adapter_cfg(cfg, label, adapter)
        with oracle_with(base, state, label, adapter) as model:  # 4.
            records = answer_and_score(asked, model, tokenizer, tasks, layers, activations, range(len(tasks)), judge,
                                       label)
            control = answer_and_score(asked, model, tokenizer, tasks, layers, activations, donors, judge,
                                       f"{label} shuffled")
        results[label] = adapter_result(run_dir, label, adapter, records, control)  # 5.–6.
        results[label]["layout"] = asdict(oracle_spec(asked, cfg.eval.data))
    table = markdown_table(results)
    report = {"num_items": len(tasks), "eval_source": cfg.eval.data.source, "greedy": cfg.eval.greedy,
              "judge": cfg.judge.kind, "adapters": results}
    write_json(run_dir / "eval.json", report)
    (run_dir / "eval.md").write_text(
        f"# Calibration evaluation ({len(tasks)} items, judge {cfg.judge.kind})\n\n"
        "conf = X/10; accuracy, Brier/ECE/MCE/AUROC over parsed answers only; parse failures count only in the "
        "parse rate. An answer that takes no position is not correct. shuffled acc: the same questions asked about "
        "another example's activations (a different reference answer; same layer and K where possible); "
        f"Δ acc = accuracy − shuffled acc, what was read from the activations.\n\n{table}\n\n"
        f"## More numbers\n\n{markdown_table(results, MORE_COLUMNS)}\n\n"
        f"## Per task family\n\n{family_table(results)}\n")
    print(table)
    print(f"Wrote {run_dir / 'eval.md'}, eval.json and {2 * len(results)} plots.")
    return report
