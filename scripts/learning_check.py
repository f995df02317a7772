"""Learning check (issue 4, "Done when"): format SFT, then Dr. GRPO on the tiny config; does the mean
reward over the last 20 % of GRPO steps beat the first 20 %? A benchmark-style figure, not a test.

    python scripts/learning_check.py                          # tiny.yaml as shipped
    python scripts/learning_check.py grpo.lr=1e-3 grpo.max_steps=40 --output-dir /tmp/lc

`key=value` overrides apply to both stages (as in `grpo-ao run`). The SFT stage caches its targets in
its run directory, so re-running with the same --output-dir and SFT settings only retrains.
Prints the per-step reward and parse rate, the two window means from the GRPO summary.json, and the
wall time of each stage; exits 1 when the reward did not go up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("GRPO_AO_NO_PROGRESS", "1")


def main(argv: list[str] | None = None) -> int:
    from grpo_ao import metrics as M
    from grpo_ao.config import load_config
    from grpo_ao.metrics import read_metrics
    from grpo_ao.recipes import grpo, sft
    from grpo_ao.recipes.setup import window_mean

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="key=value config overrides for both stages")
    p.add_argument("--config", default="tiny")
    p.add_argument("--output-dir", default="runs/learning_check")
    p.add_argument("--skip-sft", metavar="ADAPTER", help="start GRPO from this adapter instead of running SFT")
    args = p.parse_args(argv)

    out = Path(args.output_dir)
    cfg = load_config(args.config, [*args.overrides, "logging.progress=false"])
    t0 = time.perf_counter()
    if args.skip_sft:
        adapter, sft_summary = args.skip_sft, None
    else:
        sft_summary = sft.run(replace(cfg, logging=replace(cfg.logging, output_dir=str(out / "sft"))))
        adapter = sft_summary["adapter"]
    t1 = time.perf_counter()
    grpo_dir = out / "grpo"
    if (grpo_dir / "metrics.jsonl").exists():  # a fresh curve, not one appended to an earlier run's
        (grpo_dir / "metrics.jsonl").unlink()
    gcfg = replace(cfg, model=replace(cfg.model, adapter=adapter),
                   logging=replace(cfg.logging, output_dir=str(grpo_dir), checkpoint_every=10**9))
    grpo.run(gcfg)
    t2 = time.perf_counter()

    summary = json.loads((grpo_dir / "summary.json").read_text())
    records = read_metrics(grpo_dir, last_per_step=True)
    print("\nstep  reward  parse  conf  zero-std groups")
    for r in records:
        reward = r.get(M.REWARD_MEAN)
        conf = r.get(M.CALIB_CONFIDENCE_MEAN)
        print(f"{r['step']:4d}  {'-' if reward is None else f'{reward:+.3f}':>6}  "
              f"{r[M.FORMAT_PARSE_RATE]:.2f}  {'  -' if conf is None else f'{conf:4.1f}'}  "
              f"{r[M.GROUP_ZERO_STD_FRAC]:.2f}")
    first, last = summary["reward_first_20pct"], summary["reward_last_20pct"]
    if sft_summary:
        print(f"\nSFT: held-out parse rate {sft_summary['parse_rate_before']:.2f} -> "
              f"{sft_summary['parse_rate_after']:.2f} ({t1 - t0:.0f} s)")
    print(f"GRPO: {summary['steps']} steps ({t2 - t1:.0f} s)")
    for label, key in (("parse rate", M.FORMAT_PARSE_RATE), ("judge informativeness", M.REWARD_INFO),
                       ("confidence mean", M.CALIB_CONFIDENCE_MEAN)):
        values = [r.get(key) for r in records]
        head, tail = window_mean(values, 0.0, 0.2), window_mean(values, 0.8, 1.0)
        print(f"  {label}: first 20% {_fmt(head)}, last 20% {_fmt(tail)}")
    went_up = first is not None and last is not None and last > first
    change = _fmt(last - first) if first is not None and last is not None else "-"
    print(f"GRPO mean reward: first 20% of steps {_fmt(first)}, last 20% {_fmt(last)}, change {change}")
    print("learning check:", "PASS (reward went up)" if went_up else "FAIL (reward did not go up)")
    return 0 if went_up else 1


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:+.4f}"


if __name__ == "__main__":
    sys.exit(main())
