"""Calibration evaluation: `grpo-ao eval --config CONFIG [--adapter PATH ...]`.

  1. Fixed eval items: every (text, question) of the eval set in file order, with a layer percent
     and K drawn once from a seeded generator, so every adapter sees exactly the same prompts.
  2. Per adapter: answer with injection (greedy by default), parse, judge, and score correctness
     against the reference with lenient yes/no extraction.
  3. `calibration.summarize`: parse rate, accuracy, Brier / ECE / MCE / AUROC against correctness
     and against the judge's informativeness — over parsed answers only.
  4. Write eval.json (all numbers, per family), eval.md (the table), and per adapter a reliability
     diagram and a confidence histogram (PNG).
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from grpo_ao.calibration import summarize, yes_no_correct
from grpo_ao.config import RunConfig
from grpo_ao.data import Task, load_examples
from grpo_ao.errors import GrpoAoError
from grpo_ao.format import parse_epistemic_status
from grpo_ao.judge import JudgeItem, build_judge, score_sync
from grpo_ao.models import load_model
from grpo_ao.plots import confidence_histogram, reliability_diagram
from grpo_ao.recipes.setup import judge_cache_path, progress_bar, seed_everything, start_run, write_json
from grpo_ao.reward import group_rewards
from grpo_ao.rollout import answer_in_batches

TABLE_COLUMNS = [
    ("n", "n"), ("parse rate", "parse_rate"), ("accuracy", "accuracy"), ("mean info", "mean_informativeness"),
    ("mean conf", "mean_confidence"), ("Brier (correct)", "brier_correct"), ("ECE (correct)", "ece_correct"),
    ("MCE (correct)", "mce_correct"), ("AUROC", "auroc_correct"), ("conf if correct", "mean_confidence_correct"),
    ("conf if wrong", "mean_confidence_incorrect"), ("Brier (info)", "brier_info"), ("ECE (info)", "ece_info"),
    ("reward", "mean_reward"),
]


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


def answer_and_score(cfg: RunConfig, model: Any, tokenizer: Any, tasks: list[Task], judge: Any,
                     label: str) -> list[dict]:
    """Step 2: one record per task (parse, judge, correctness, reward)."""
    sampling = replace(cfg.sampling, num_generations=1, max_new_tokens=cfg.eval.max_new_tokens, greedy=cfg.eval.greedy)
    records = []
    bar = progress_bar(len(tasks), f"eval {label}", cfg.logging.progress)
    for chunk, _, rollouts in answer_in_batches(model, tokenizer, tasks, sampling, cfg.eval.batch_size,
                                                cfg.oracle.prompt_text, cfg.oracle.system_prompt_mode,
                                                cfg.eval.data.context_format, cfg.oracle.injection_layer,
                                                cfg.oracle.steering_coef):
        texts = rollouts.texts
        parsed = [parse_epistemic_status(t) for t in texts]
        judged = score_sync(judge, [JudgeItem(t.context, t.question, p.answer, t.reference)
                                    for t, p in zip(chunk, parsed)])
        for t, text, p, j in zip(chunk, texts, parsed, judged):
            reward = group_rewards([p.confidence], [j], cfg.reward)[0].total  # as in training (a group of 1)
            records.append({"family": t.family, "question": t.question, "reference": t.reference,
                            "layer_percent": t.layer_percent, "k": t.num_positions, "completion": text,
                            "parse_ok": p.ok, "confidence": p.confidence, "answer": p.answer,
                            "informativeness": j.informativeness,
                            "correct": yes_no_correct(p.answer, t.reference) if p.ok else None, "reward": reward})
        bar.update(len(chunk))
    bar.close()
    return records


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    return str(value) if isinstance(value, int) else f"{value:.3f}"


def markdown_table(results: dict[str, dict]) -> str:
    """The eval table, one row per adapter, formatted from the eval.json numbers (3 decimals)."""
    head = "| adapter | " + " | ".join(c for c, _ in TABLE_COLUMNS) + " |"
    rule = "|---" * (len(TABLE_COLUMNS) + 1) + "|"
    rows = [f"| {label} | " + " | ".join(_fmt(r["summary"].get(k)) for _, k in TABLE_COLUMNS) + " |"
            for label, r in results.items()]
    return "\n".join([head, rule, *rows])


def family_table(results: dict[str, dict]) -> str:
    cols = [("n", "n"), ("parse rate", "parse_rate"), ("accuracy", "accuracy"), ("ECE (correct)", "ece_correct"),
            ("AUROC", "auroc_correct")]
    lines = ["| adapter | family | " + " | ".join(c for c, _ in cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for label, r in results.items():
        for family, fs in sorted(r["summary"].get("per_family", {}).items()):
            lines.append(f"| {label} | {family} | " + " | ".join(_fmt(fs.get(k)) for _, k in cols) + " |")
    return "\n".join(lines)


def default_label(path: str) -> str:
    """`runs/x/grpo/checkpoints/step-000500/adapter` → `grpo-step-000500`; otherwise the directory name."""
    parts = Path(path).parts
    if len(parts) >= 4 and parts[-1] == "adapter" and parts[-3] == "checkpoints":
        return f"{parts[-4]}-{parts[-2]}"
    return Path(path).name


def parse_adapters(cfg: RunConfig, adapters: list[str] | None) -> list[tuple[str, str | None]]:
    """`label=path`, a path, or `base` (the config's starting adapter; None = the bare base model)."""
    out = []
    for spec in adapters or ["base"]:
        label, _, path = spec.partition("=") if "=" in spec else (None, "", spec)
        if path == "base":
            out.append((label or "base", cfg.model.adapter))
            continue
        if not Path(path).exists() and not re.fullmatch(r"\w[\w.-]*/[\w.-]+", path):
            raise GrpoAoError(f"--adapter {path!r}: no such directory. Give a LoRA adapter directory, a hub id "
                              "(org/name) or 'base'.")
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
    """The base model with `adapter` active (loaded once per label); None = no adapter at all."""
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


def run(cfg: RunConfig, adapters: list[str] | None = None) -> dict[str, Any]:
    """Evaluate each adapter on the same items; write eval.json, eval.md and PNGs to the run directory."""
    run_dir = start_run(cfg, "eval")
    seed_everything(cfg.seed)
    to_evaluate = parse_adapters(cfg, adapters)
    base, tokenizer = load_model(cfg.model)
    tasks = eval_tasks(cfg, tokenizer)  # 1.
    judge = build_judge(cfg.judge, cache_path=judge_cache_path(cfg))
    results: dict[str, dict] = {}
    state: dict[str, Any] = {}
    for label, adapter in to_evaluate:
        with oracle_with(base, state, label, adapter) as model:
            records = answer_and_score(cfg, model, tokenizer, tasks, judge, label)  # 2.
        summary = summarize(records)  # 3.
        rewards = [r["reward"] for r in records if r["reward"] is not None]
        summary["mean_reward"] = sum(rewards) / len(rewards) if rewards else None
        target = "correct" if summary.get("reliability_correct") and summary.get("n_correct_known") else "info"
        plots = {  # 4.
            "reliability": str(reliability_diagram(summary[f"reliability_{target}"],
                                                   f"{label}: reliability vs {'correctness' if target == 'correct' else 'judge informativeness'}",
                                                   run_dir / f"reliability_{label}.png")),
            "confidence_hist": str(confidence_histogram(summary["confidence_hist"], f"{label}: stated confidence X",
                                                        run_dir / f"confidence_{label}.png")),
        }
        (run_dir / f"eval_records_{label}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        results[label] = {"adapter": adapter, "summary": summary, "plots": plots}
    table = markdown_table(results)
    report = {"num_items": len(tasks), "eval_source": cfg.eval.data.source, "greedy": cfg.eval.greedy,
              "judge": cfg.judge.kind, "adapters": results}
    write_json(run_dir / "eval.json", report)
    (run_dir / "eval.md").write_text(f"# Calibration evaluation ({len(tasks)} items, judge {cfg.judge.kind})\n\n"
                                     f"conf = X/10; Brier/ECE/MCE/AUROC over parsed answers only; parse failures count only in the parse "
                                     f"rate.\n\n{table}\n\n## Per task family\n\n{family_table(results)}\n")
    print(table)
    print(f"Wrote {run_dir / 'eval.md'}, eval.json and {2 * len(results)} plots.")
    return report
