"""Do an adapter's answers depend on its stated confidence, or on its weights? (issue 15, item 6). A probe that
prints measured numbers, not a test.

For each yes/no eval item the adapter is scored with `[epistemic status: X] Yes` and `... No` for every X given; the
answer is the larger logprob. Printed per X: yes/no accuracy and the share of "Yes". Answers that stay put across X
but differ between two adapters moved with the weights (docs/RESULTS.md, session 12: a GRPO run's global Yes/No bias).
`--draw SOURCE N OUT` instead writes N tasks drawn as GRPO draws them from a data source (one question per row, the
context's labels kept) to OUT, for `grpo-ao eval ... eval.data.source=OUT` on GRPO's own prompt distribution.
`--tag-dist RECORDS` prints, from the adapter's tag distribution π(X | prompt) over the 11 values (teacher-forced, the
forward `grpo.tag_expectation` trains), per family the mean E_π[X] and the mode, and the AUROC (overall and within
family) of E_π[X] against the `correct` field of RECORDS (that adapter's eval_records_*.jsonl, same items): does the
distribution already rank families or items where the greedy tag (its mode) still ties?

    python scripts/forced_tag_probe.py --config smollm2 --adapter runs/smollm2/grpo/checkpoints/step-000012/adapter --tags 1,6,9
    python scripts/forced_tag_probe.py --config smollm2 --draw builtin 240 /tmp/train240.jsonl
    python scripts/forced_tag_probe.py --config smollm2 --adapter <adapter> --tag-dist <run>/eval_records_<label>.jsonl
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


def tag_distribution(config: str, adapter: str) -> list[list[float]]:
    """Per eval item, π(X | prompt) for X = 0..10 (softmax over the 11 whole tags' summed logprobs).  -> [n][11]"""
    import torch

    from grpo_ao.config import load_config
    from grpo_ao.format import tag_candidate_ids
    from grpo_ao.recipes import evaluate
    from grpo_ao.recipes.setup import load_oracle, oracle_spec
    from grpo_ao.rollout import build_oracle_inputs, completion_logprobs, forced_completions

    cfg = load_config(config, [f"model.adapter={adapter}", "logging.progress=false"])
    model, tok = load_oracle(cfg)
    tasks, _ = evaluate.eval_items(cfg, tok)
    spec = oracle_spec(cfg, cfg.eval.data)
    tag_ids = tag_candidate_ids(tok)
    out = []
    for start in range(0, len(tasks), cfg.eval.batch_size // 4):
        inputs = build_oracle_inputs(model, tok, tasks[start:start + cfg.eval.batch_size // 4], spec=spec)
        rows = [i for i in range(len(inputs.layers)) for _ in tag_ids]
        cands = forced_completions(inputs, rows, [tag_ids[n % len(tag_ids)] for n in range(len(rows))],
                                   tok.pad_token_id, len(tag_ids))  # [b·11, T]
        with torch.no_grad():
            lp = (completion_logprobs(model, cands, 1.0, spec=spec) * cands.completion_mask).sum(dim=1)  # [b·11]
        out += torch.softmax(lp.view(-1, len(tag_ids)), dim=1).tolist()
    return out


def report_tag_distribution(config: str, adapter: str, records: str) -> None:
    from collections import defaultdict

    from grpo_ao.calibration import auroc, auroc_within_groups

    rows = [json.loads(line) for line in open(records, encoding="utf-8")]
    dist = tag_distribution(config, adapter)
    if len(dist) != len(rows):
        raise SystemExit(f"{records} has {len(rows)} items, the eval {len(dist)}: give that adapter's eval records")
    mean = [sum(x * p for x, p in enumerate(pi)) for pi in dist]
    correct = [bool(r["correct"]) for r in rows]
    by_family = defaultdict(list)
    for r, m, pi, c in zip(rows, mean, dist, correct, strict=True):
        by_family[r["family"]].append((m, max(range(11), key=pi.__getitem__), c))
    for family, vals in sorted(by_family.items()):
        print(f"{family:10s} n={len(vals):3d} accuracy {sum(c for *_, c in vals) / len(vals):.2f}  "
              f"E[X] {sum(m for m, *_ in vals) / len(vals):.2f}  modes {sorted({x for _, x, _ in vals})}")
    within = auroc_within_groups(mean, correct, [r["family"] for r in rows])
    print(f"AUROC(E[X], correct) {auroc(mean, correct):.3f}, within family {within[0]:.3f} ({within[1]} families)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="smollm2")
    p.add_argument("--adapter", help="the oracle adapter to probe")
    p.add_argument("--tags", default="1,6,9", help="the forced X values, comma-separated")
    p.add_argument("--draw", nargs=3, metavar=("SOURCE", "N", "OUT"), help="write N drawn tasks instead")
    p.add_argument("--tag-dist", metavar="RECORDS", help="the tag distribution against these eval records instead")
    args = p.parse_args(argv)
    if args.draw:
        source, n, out = args.draw
        print(f"wrote {draw_tasks(args.config, source, int(n), out)} tasks to {out}")
        return 0
    if not args.adapter:
        p.error("give --adapter (or --draw SOURCE N OUT)")
    if args.tag_dist:
        report_tag_distribution(args.config, args.adapter, args.tag_dist)
        return 0
    for x, (acc, yes, n) in forced_tag_answers(args.config, args.adapter, [int(t) for t in args.tags.split(",")]).items():
        print(f"X={x}: yes/no accuracy {acc:.3f}, says Yes {yes:.3f} ({n} items)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
