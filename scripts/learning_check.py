"""Learning benchmark (issue 8): does the pipeline turn a model into an oracle that reads activations and
knows when it is right? A benchmark that prints measured numbers, not a test.

    python scripts/learning_check.py --config smollm2            # the embedded demo (CPU, tens of minutes)
    python scripts/learning_check.py --config tiny --output-dir /tmp/lc grpo.max_steps=10

Stages, each from the previous one's adapter: start (the bare model) → AO: the config's starting adapter
(smollm2: the shipped `builtin:smollm2-ao`, made by scripts/make_smollm2_ao.py), or AO pretraining when
`model.adapter=null` → format SFT → GRPO with
`grpo.advantage_routing=sequence` and, from the same SFT adapter, GRPO with `split`. Then ONE `grpo-ao eval`
of all of them on the same held-out eval items (greedy, a single generation), each beside its
shuffled and counterfactual activation controls, with AUROC, within-family AUROC and ECE against the reward's
target. Prints the table and writes it, with the exact command, to docs/RESULTS.md
(`--results PATH`; `--no-write` to only print). Targets (issue 15) are printed next to the numbers;
missing one is reported, never hidden.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("GRPO_AO_NO_PROGRESS", "1")

COLUMNS = [("parse rate", "parse_rate"), ("accuracy", "accuracy"), ("shuffled acc.", "shuffled_accuracy"),
           ("counterf. acc.", "counterfactual_accuracy"), ("AUROC", "auroc_correct"),
           ("AUROC in family", "auroc_correct_within_family"), ("ECE (target)", "ece_target"),
           ("ECE (correct)", "ece_correct"), ("Brier (correct)", "brier_correct"), ("ECE (info)", "ece_info"),
           ("conf if right", "mean_confidence_correct"), ("conf if wrong", "mean_confidence_incorrect")]
TARGETS = {
    "ao": "yes/no accuracy ≥ 0.85 with counterfactual ≤ 0.25",
    "grpo": ("AUROC ≥ 0.80, within-family AUROC ≥ 0.65, ECE against the reward's target ≤ 0.06 (single greedy "
             "generation)"),
}


def _fmt(v: object) -> str:
    return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _stage(cfg, out: Path, name: str, adapter: str | None, *overrides: str):
    from grpo_ao.config import RunConfig, apply_override, from_dict, to_dict

    data = to_dict(cfg)
    data["model"]["adapter"] = adapter
    data["logging"]["output_dir"] = str(out / name)
    for o in overrides:
        apply_override(data, o)
    return from_dict(RunConfig, data)


def run_stages(cfg, out: Path) -> tuple[list[str], dict[str, float]]:
    """Train every stage; returns the `--adapter` specs for the eval and each stage's wall time (s)."""
    from grpo_ao.recipes import ao_sft, grpo, sft

    times: dict[str, float] = {}
    adapters = ["start=none"]
    adapter = cfg.model.adapter
    if adapter is not None:
        adapters.append(f"ao={adapter}")
    else:
        t = time.perf_counter()
        adapter = ao_sft.run(_stage(cfg, out, "ao_sft", None))["adapter"]
        times["ao"] = time.perf_counter() - t
        adapters.append(f"ao={adapter}")
    t = time.perf_counter()
    sft_adapter = sft.run(_stage(cfg, out, "sft", adapter))["adapter"]
    times["sft"] = time.perf_counter() - t
    adapters.append(f"sft={sft_adapter}")
    for routing in ("sequence", "split"):
        t = time.perf_counter()
        summary = grpo.run(_stage(cfg, out, f"grpo_{routing}", sft_adapter, f"grpo.advantage_routing={routing}"))
        times[f"grpo_{routing}"] = time.perf_counter() - t
        adapters.append(f"grpo_{routing}={summary['adapter']}")
    return adapters, times


def _yes_no_accuracy(path: Path) -> float | None:
    """Accuracy on the records with a Yes/No reference (parse failures graded too, as `accuracy`)."""
    records = [json.loads(x) for x in path.read_text().splitlines()]
    yn = [rec["correct"] for rec in records if rec.get("reference") in ("Yes", "No")]
    return sum(bool(c) for c in yn) / len(yn) if yn else None


def results_table(report: dict, eval_dir: Path, times: dict[str, float], eval_s: float) -> str:
    from grpo_ao.recipes.eval_report import result_row

    head = "| stage | " + " | ".join(c for c, _ in COLUMNS) + " | yes/no acc. | yes/no counterf. | train time (s) |"
    lines = [head, "|---" * (len(COLUMNS) + 4) + "|"]  # yes/no = accuracy on Yes/No-reference items
    for label, r in report["adapters"].items():
        s = result_row(r)
        yes_no = _yes_no_accuracy(eval_dir / r["records"])
        yes_no_cf = _yes_no_accuracy(eval_dir / r["controls"]["counterfactual"]["records"])
        lines.append(f"| {label} | " + " | ".join(_fmt(s.get(k)) for _, k in COLUMNS)
                     + f" | {_fmt(yes_no)} | {_fmt(yes_no_cf)} | "
                     f"{_fmt(round(times.get(label, 0.0))) if label in times else '–'} |")
    cf = next(iter(report["adapters"].values()))["controls"]["counterfactual"]
    lines.append(f"\ncounterfactual control on {cf['summary']['n']} of {report['num_items']} items "
                 f"({cf['n_without_donor']} without a known counterfactual donor); ECE (target) against "
                 f"reward.target={report['reward_target']}; eval of all stages (real + both controls): {eval_s:.0f} s")
    return "\n".join(lines)


BEGIN, END = "<!-- learning_check: begin (generated) -->", "<!-- learning_check: end -->"


def splice_results(old: str, block: str) -> str:
    """The results file with its generated block (between BEGIN and END) replaced by `block`; everything
    else, the hand-written design notes included, is kept byte for byte. A file without the markers gets the
    block in front, the first "# Learning benchmark" section up to the next "## " or "# " heading
    (the pre-marker layout) replaced."""
    fenced = f"{BEGIN}\n{block.rstrip()}\n{END}\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        return head + fenced + rest.split(END, 1)[1].removeprefix("\n")
    if old.startswith("# Learning benchmark"):
        lines = old.splitlines(keepends=True)
        cut = next((i for i, line in enumerate(lines[1:], 1) if line.startswith(("# ", "## "))), len(lines))
        old = "".join(lines[cut:])
    return fenced + ("\n" + old if old else "")


def main(argv: list[str] | None = None) -> int:
    from grpo_ao.config import load_config
    from grpo_ao.recipes import evaluate

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="key=value config overrides for every stage")
    p.add_argument("--config", default="smollm2")
    p.add_argument("--output-dir", default="runs/learning_check")
    p.add_argument("--results", default=str(Path(__file__).resolve().parents[1] / "docs" / "RESULTS.md"))
    p.add_argument("--no-write", action="store_true", help="print only; do not write the results file")
    args = p.parse_args(argv)

    out = Path(args.output_dir)
    cfg = load_config(args.config, [*args.overrides, "logging.progress=false"])
    t0 = time.perf_counter()
    adapters, times = run_stages(cfg, out)
    t1 = time.perf_counter()
    report = evaluate.run(_stage(cfg, out, "eval", cfg.model.adapter), adapters=adapters)
    eval_s = time.perf_counter() - t1
    table = results_table(report, out / "eval", times, eval_s)
    command = "python scripts/learning_check.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    shipped = ""
    if cfg.model.adapter and cfg.model.adapter.startswith("builtin:"):
        from grpo_ao.models import resolve_adapter

        rec = Path(resolve_adapter(cfg.model.adapter)) / "ao_sft_summary.json"
        if rec.exists():
            ao = json.loads(rec.read_text())
            shipped = (f"\n\nThe `ao` row is the shipped `{cfg.model.adapter}` (not retrained here). Its own AO "
                       f"pretraining record ({ao['steps']} steps, {ao['wall_time_s']:.0f} s, `{ao['command'].strip()}`): "
                       f"held-out accuracy {ao['before']['real']['accuracy']:.3f} → {ao['after']['real']['accuracy']:.3f}, "
                       f"shuffled {ao['after']['shuffled']['accuracy']:.3f}; yes/no "
                       f"{ao['after']['real']['accuracy_yes_no']:.3f} (shuffled "
                       f"{ao['after']['shuffled']['accuracy_yes_no']:.3f}) on {ao['heldout_items']} items of "
                       f"{ao['heldout_contexts']} held-out training contexts.")
    text = (f"# Learning benchmark\n\nCommand: `{command}` (config `{cfg.name}`, model `{cfg.model.source}`, "
            f"judge `{cfg.judge.kind}`)\n\nMeasured on {platform.machine()} CPU "
            f"({os.cpu_count()} cores), {time.strftime('%Y-%m-%d')}, total {time.perf_counter() - t0:.0f} s. "
            f"Eval: {report['num_items']} held-out items of `{cfg.eval.data.source}`, greedy, one generation; "
            "accuracy by `grpo_ao.grading.grade` (a non-answer counts as wrong); shuffled = the same questions "
            "asked about another item's activations; counterf. = the same questions asked about a context whose "
            "answer to that question differs, at the item's own layer and K (`grpo_ao.controls`: a reader scores "
            "~0 there, a guesser its prior); AUROC in family = the mean per-family AUROC (does it know which "
            "item it got right, not only which family it is good at); ECE/Brier/AUROC over parsed "
            "answers only.\n\n" + table + shipped + "\n\nTargets (issue 15): after AO pretraining, "
            f"{TARGETS['ao']}; after GRPO, {TARGETS['grpo']}.\n")
    print("\n" + text)
    if not args.no_write:
        path = Path(args.results)
        path.write_text(splice_results(path.read_text() if path.exists() else "", text))
        print(f"wrote the generated block of {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
