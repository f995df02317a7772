"""Reproduce the shipped SmolLM2 activation oracle, `builtin:smollm2-ao` (src/grpo_ao/resources/adapters/).

    python scripts/make_smollm2_ao.py                 # ~40 min on a 2-core CPU
    python scripts/make_smollm2_ao.py --check         # train into runs/, compare, do not overwrite

  1. `grpo-ao ao-sft --config smollm2 model.adapter=null`: AO pretraining of the bare SmolLM2-135M-Instruct
     on the built-in data, settings in the config's `ao_sft` section (its held-out set, learning curve and
     summary in the run directory).
  2. The built-in eval check: the trained adapter answers every labelled question of `builtin_eval` (the set
     `grpo-ao run`'s eval uses; held-out contexts, base-oracle layout, greedy, graded by `grade`), with the
     real activations, the shuffled and the counterfactual control, per family; beside each family its
     linear-probe ceiling (scripts/ao_design.py's `probe`: the same subject vectors, train -> eval contexts).
  3. Copies the final adapter, the run's summary + the check (`ao_sft_summary.json`), the check's answers
     (`heldout.jsonl`) and the learning curve (`ao_learning_curve.png`) into the package.

`grpo-ao run` starts from that adapter because training it takes longer than the demo's 15-minute budget on
a CPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "src" / "grpo_ao" / "resources" / "adapters" / "smollm2-ao"


def eval_check(config: str, adapter: str, out: Path, overrides: list[str]) -> tuple[dict, list[dict]]:
    """Step 2: real / shuffled / counterfactual on builtin_eval, per family, with the probe ceilings."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from ao_design import SliceCache, probe

    from grpo_ao.config import load_config
    from grpo_ao.data import load_examples
    from grpo_ao.recipes import ao_sft
    from grpo_ao.recipes.setup import load_oracle

    cfg = load_config(config, ["model.adapter=null", "logging.progress=false", *overrides])
    cfg = replace(cfg, ao_sft=replace(cfg.ao_sft, heldout_examples=100000))
    model, tokenizer = load_oracle(cfg, adapter=adapter, trainable=False)
    held_ex = load_examples(replace(cfg.data, source="builtin_eval"))
    train_ex = [ex for ex in load_examples(cfg.data) if ex.context not in {h.context for h in held_ex}]
    held = ao_sft.prepare_heldout(cfg, tokenizer, held_ex, train_ex + held_ex, lambda its, name: ao_sft.with_activations(
        cfg, model, tokenizer, its, out / "eval_cache" / name))
    result = ao_sft.heldout_check(cfg, model, tokenizer, held)
    cache = SliceCache(model, tokenizer, cfg.data.context_format, out / "eval_cache" / "probe.safetensors")
    probe_train = train_ex[::max(1, len(train_ex) // 1500)]  # ~1500 training contexts: a ceiling, not a race
    probes = {f"layer_{p}": probe(cache, probe_train, held_ex, p) for p in cfg.data.layer_percents}
    record = [{**asdict(it), **{f"answer_{c}": result[c]["answers"][i] for c in ao_sft.CONTROLS},
               "counterfactual_text": None if cf is None else cf.text}
              for i, (it, cf) in enumerate(zip(held["items"], held["cf_items"], strict=True))]
    check = {"source": "builtin_eval", **{c: {k: v for k, v in result[c].items() if k != "answers"}
                                          for c in ao_sft.CONTROLS}, "probe": probes}
    return check, record


def print_check(check: dict) -> None:
    print(f"built-in eval ({check['real']['n']} items): yes/no real {check['real']['accuracy_yes_no']:.3f}, shuffled "
          f"{check['shuffled']['accuracy_yes_no']:.3f}, counterfactual {check['counterfactual']['accuracy_yes_no']:.3f}")
    print("| family | real | shuffled | counterfactual | " + " | ".join(f"probe {k}" for k in check["probe"]) + " |")
    for fam, acc in check["real"]["per_family"].items():
        probes = " | ".join(f"{p.get(fam, float('nan')):.2f}" for p in check["probe"].values())
        print(f"| {fam} | {acc:.3f} | {check['shuffled']['per_family'].get(fam, float('nan')):.3f} | "
              f"{check['counterfactual']['per_family'].get(fam, float('nan')):.3f} | {probes} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", default=str(ROOT / "runs" / "smollm2-ao"))
    p.add_argument("--config", default="smollm2", help="the config whose ao_sft section is used (default smollm2)")
    p.add_argument("--check", action="store_true", help="train and print, but do not overwrite the shipped adapter")
    p.add_argument("--skip-training", action="store_true", help="reuse the run in --output-dir (steps 2-3 only)")
    p.add_argument("overrides", nargs="*", help="extra key=value overrides (changes what is reproduced)")
    args = p.parse_args(argv)
    out = Path(args.output_dir)
    command = [sys.executable, "-m", "grpo_ao.cli", "ao-sft", "--config", args.config, "--output-dir", str(out),
               "model.adapter=null", *args.overrides]
    if not args.skip_training:
        print("$", " ".join(command[1:]))
        subprocess.run(command, check=True, cwd=ROOT)  # 1.
    summary = json.loads((out / "summary.json").read_text())
    print(json.dumps({k: summary[k] for k in ("after", "steps", "wall_time_s")}, indent=2))
    check, record = eval_check(args.config, summary["adapter"], out, args.overrides)  # 2.
    print_check(check)
    if args.check:
        return 0
    TARGET.mkdir(parents=True, exist_ok=True)  # 3.
    for name in ("adapter_model.safetensors", "grpo_ao_oracle.json"):  # the weights and the layout they read
        shutil.copy2(Path(summary["adapter"]) / name, TARGET / name)
    config = json.loads((Path(summary["adapter"]) / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "smollm2"  # grpo-ao's embedded SmolLM2-135M-Instruct, not a local path
    (TARGET / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    summary = {k: v for k, v in summary.items() if k not in ("adapter", "run_dir")}  # machine-specific paths
    summary["command"] = "python scripts/make_smollm2_ao.py " + " ".join(args.overrides)
    summary["builtin_eval"] = check
    (TARGET / "ao_sft_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (TARGET / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in record))
    if (out / "ao_learning_curve.png").exists():
        shutil.copy2(out / "ao_learning_curve.png", TARGET / "ao_learning_curve.png")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
