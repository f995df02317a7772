"""Do an adapter's answers depend on its stated confidence, or on its weights? (issue 15, item 6). A probe that
prints measured numbers, not a test.

For each yes/no eval item the adapter is scored with `[epistemic status: X] Yes` and `... No` for every X given; the
answer is the larger logprob. Printed per X: yes/no accuracy and the share of "Yes". Answers that stay put across X
but differ between two adapters moved with the weights (docs/RESULTS.md, session 12: a GRPO run's global Yes/No bias).
`--draw SOURCE N OUT` instead writes N tasks drawn as GRPO draws them from a data source (one question per row, the
context's labels kept) to OUT, for `grpo-ao eval ... eval.data.source=OUT` on GRPO's own prompt distribution.

    python scripts/forced_tag_probe.py --config smollm2 --adapter runs/smollm2/grpo/checkpoints/step-000012/adapter --tags 1,6,9
    python scripts/forced_tag_probe.py --config smollm2 --draw builtin 240 /tmp/train240.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("GRPO_AO_NO_PROGRESS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # answer_margin_probe's yes_no_logprobs


def draw_tasks(config: str, source: str, n: int, out: str) -> int:
    """Write `n` tasks of `source` drawn by `TaskSampler` with the config's data settings; returns the count."""
    from grpo_ao.config import load_config
    from grpo_ao.data import load_examples
    from grpo_ao.data.sampler import TaskSampler

    cfg = load_config(config, [f"data.source={source}"])
    examples = load_examples(cfg.data)
    tasks = TaskSampler(examples, cfg.data).next_batch(n)
    with open(out, "w", encoding="utf-8") as fh:
        for i, t in enumerate(tasks):
            fh.write(json.dumps({"id": f"draw-{i:05d}", "context": t.context,
                                 "labels": examples[t.example_index].label_map,
                                 "questions": [{"question": t.question, "answer": t.reference,
                                                "family": t.family}]}) + "\n")
    return len(tasks)


def forced_tag_answers(config: str, adapter: str, tags: list[int]) -> dict[int, tuple[float, float, int]]:
    """Per X: (yes/no accuracy, share of Yes, items) of the answers after a forced `[epistemic status: X] `."""
    from answer_margin_probe import yes_no_logprobs

    from grpo_ao.config import load_config
    from grpo_ao.recipes import evaluate
    from grpo_ao.recipes.setup import load_oracle, oracle_spec
    from grpo_ao.rollout import build_oracle_inputs

    cfg = load_config(config, [f"model.adapter={adapter}", "logging.progress=false"])
    model, tok = load_oracle(cfg)
    tasks, _ = evaluate.eval_items(cfg, tok)
    tasks = [t for t in tasks if (t.reference or "") in ("Yes", "No")]
    spec = oracle_spec(cfg, cfg.eval.data)
    out = {}
    for x in tags:
        right = says_yes = 0
        for start in range(0, len(tasks), cfg.eval.batch_size):
            chunk = tasks[start:start + cfg.eval.batch_size]
            inputs = build_oracle_inputs(model, tok, chunk, spec=spec)
            answer = yes_no_logprobs(model, tok, inputs, [x] * len(chunk), spec)  # [B, 2] log p(Yes), log p(No)
            for task, (yes, no) in zip(chunk, answer.tolist(), strict=True):
                said = "Yes" if yes > no else "No"
                says_yes += said == "Yes"
                right += said == task.reference
        out[x] = (right / len(tasks), says_yes / len(tasks), len(tasks))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="smollm2")
    p.add_argument("--adapter", help="the oracle adapter to probe")
    p.add_argument("--tags", default="1,6,9", help="the forced X values, comma-separated")
    p.add_argument("--draw", nargs=3, metavar=("SOURCE", "N", "OUT"), help="write N drawn tasks instead")
    args = p.parse_args(argv)
    if args.draw:
        source, n, out = args.draw
        print(f"wrote {draw_tasks(args.config, source, int(n), out)} tasks to {out}")
        return 0
    if not args.adapter:
        p.error("give --adapter (or --draw SOURCE N OUT)")
    for x, (acc, yes, n) in forced_tag_answers(args.config, args.adapter, [int(t) for t in args.tags.split(",")]).items():
        print(f"X={x}: yes/no accuracy {acc:.3f}, says Yes {yes:.3f} ({n} items)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
