"""GRPO size / reward sweep (issue 15, item 6): one format SFT, then one GRPO run per variant from that same SFT
adapter, then ONE `grpo-ao eval` of them all on the held-out eval items with both controls. A benchmark that
prints measured numbers, not a test.

    python scripts/grpo_sweep.py --config smollm2 --output-dir /tmp/sweep \\
        --variant "s60=grpo.max_steps=60,grpo.lr=1e-3" \\
        --variant "s60c=grpo.max_steps=60,grpo.lr=1e-3,reward.target=correctness"

A variant is `NAME=override,override,...` (config overrides of the GRPO stage only). Each variant is evaluated
with its own `reward.target` (ECE (target) is against that target; ECE (correct) is in the table for all).
`--sft-adapter PATH` reuses a format-SFT adapter instead of training one.
The table goes to stdout and to `OUTPUT_DIR/sweep.md`; nothing is written to docs/ (copy what you keep).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("GRPO_AO_NO_PROGRESS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from learning_check import _stage, results_table  # noqa: E402


def parse_variant(text: str) -> tuple[str, list[str]]:
    """`NAME=a.b=1,c.d=x` -> ("NAME", ["a.b=1", "c.d=x"]).

    >>> parse_variant("s60=grpo.max_steps=60,grpo.lr=1e-3")
    ('s60', ['grpo.max_steps=60', 'grpo.lr=1e-3'])
    """
    name, sep, rest = text.partition("=")
    if not sep or not name or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r}: use NAME=key=value,key=value (NAME a plain word)")
    if name == "sft":
        raise argparse.ArgumentTypeError(f"{text!r}: the name sft is the format-SFT row's; choose another")
    return name, [o for o in rest.split(",") if o]


def main(argv: list[str] | None = None) -> int:
    from grpo_ao.config import load_config
    from grpo_ao.recipes import evaluate, grpo, sft

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="key=value config overrides for every stage")
    p.add_argument("--config", default="smollm2")
    p.add_argument("--output-dir", default="runs/grpo_sweep")
    p.add_argument("--variant", action="append", default=[], type=parse_variant,
                   help="NAME=override,override (repeatable)")
    p.add_argument("--sft-adapter", default=None, help="reuse this format-SFT adapter instead of training one")
    args = p.parse_args(argv)
    variants = args.variant
    if not variants:
        p.error("give at least one --variant NAME=override,...")

    out = Path(args.output_dir)
    cfg = load_config(args.config, [*args.overrides, "logging.progress=false"])
    times: dict[str, float] = {}
    sft_adapter = args.sft_adapter
    if sft_adapter is None:
        t = time.perf_counter()
        sft_adapter = sft.run(_stage(cfg, out, "sft", cfg.model.adapter))["adapter"]
        times["sft"] = time.perf_counter() - t
    by_target: dict[str, list[str]] = {}
    for name, overrides in variants:
        t = time.perf_counter()
        stage = _stage(cfg, out, f"grpo_{name}", sft_adapter, *overrides)
        summary = grpo.run(stage)
        times[name] = time.perf_counter() - t
        print(f"{name}: {times[name]:.0f} s, adapter {summary['adapter']}", flush=True)
        by_target.setdefault(stage.reward.target, []).append(f"{name}={summary['adapter']}")
    text = [f"# GRPO sweep\n\nCommand: `python scripts/grpo_sweep.py {' '.join(argv or sys.argv[1:])}`\n"]
    for target, adapters in by_target.items():
        t = time.perf_counter()
        ecfg = _stage(cfg, out, f"eval_{target}", cfg.model.adapter, f"reward.target={target}")
        report = evaluate.run(ecfg, adapters=[f"sft={sft_adapter}", *adapters])
        text.append(f"## reward.target={target}\n\n" + results_table(report, out / f"eval_{target}", times,
                                                                       time.perf_counter() - t))
    body = "\n\n".join(text) + "\n"
    print("\n" + body)
    (out / "sweep.md").write_text(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
