"""Is there item-level confidence to learn? (issue 15, item 6). A probe that prints measured numbers, not a test.

For each eval item the oracle answers greedily (its own tag and answer), then the same prompt is scored with its tag
followed by " Yes" and by " No": the margin |log p(Yes) − log p(No)| is how sure the oracle's own computation is.
Printed: accuracy, AUROC(margin, correct) overall and within family (`calibration.auroc_within_groups`), and what a
confidence that knew each family's accuracy exactly (fitted on these same items: an upper bound for a family-only
confidence) would score — AUROC and ECE. If the margin does not separate right from wrong inside a family, no stated
confidence the oracle computes before answering is likely to.

    python scripts/answer_margin_probe.py --config smollm2 --adapter runs/smollm2/sft/checkpoints/step-000016/adapter
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict

os.environ.setdefault("GRPO_AO_NO_PROGRESS", "1")


def family_accuracy_confidence(families: list[str], correct: list[bool]) -> list[float]:
    """Each item's confidence = its family's accuracy over these items, rounded to a tenth (an X/10).

    >>> family_accuracy_confidence(["a", "a", "b"], [True, False, True])
    [0.5, 0.5, 1.0]
    """
    per: dict[str, list[bool]] = defaultdict(list)
    for f, c in zip(families, correct, strict=True):
        per[f].append(c)
    return [round(sum(per[f]) / len(per[f]), 1) for f in families]


def yes_no_logprobs(model, tok, inputs, tags: list[int], spec):
    """log p(Yes) and log p(No) of each prompt of `inputs` after its tag: `[epistemic status: X] Yes` / `No`
    teacher-forced, the answer token's logprob.  -> [B, 2]"""
    import torch

    from grpo_ao.format import format_epistemic_status
    from grpo_ao.rollout import completion_logprobs, forced_completions

    comps = [tok(format_epistemic_status(x, a), add_special_tokens=False)["input_ids"]
             for x in tags for a in ("Yes", "No")]  # [2B] each prompt's tag, then each answer
    both = forced_completions(inputs, [n // 2 for n in range(len(comps))], comps, tok.pad_token_id, 2)  # [2B, T]
    mask = both.completion_mask
    with torch.no_grad():
        lp = completion_logprobs(model, both, 1.0, spec=spec)  # [2B, T]
    return lp[torch.arange(len(comps)), mask.sum(dim=1) - 1].view(-1, 2)  # [B, 2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.add_argument("--config", default="smollm2")
    p.add_argument("--adapter", required=True, help="the oracle adapter to probe (e.g. a format-SFT checkpoint)")
    args = p.parse_args(argv)

    from grpo_ao.calibration import auroc, auroc_within_groups, expected_calibration_error
    from grpo_ao.config import load_config
    from grpo_ao.format import parse_epistemic_status
    from grpo_ao.grading import grade
    from grpo_ao.recipes import evaluate
    from grpo_ao.recipes.setup import load_oracle, oracle_spec
    from grpo_ao.rollout import SamplingConfig, build_oracle_inputs, generate_rollouts

    cfg = load_config(args.config, [f"model.adapter={args.adapter}", "logging.progress=false", *args.overrides])
    model, tok = load_oracle(cfg)
    tasks, _ = evaluate.eval_items(cfg, tok)
    spec = oracle_spec(cfg, cfg.eval.data)
    greedy = SamplingConfig(num_generations=1, max_new_tokens=cfg.eval.max_new_tokens, greedy=True)
    families, correct, margins = [], [], []
    for start in range(0, len(tasks), cfg.eval.batch_size):
        chunk = tasks[start:start + cfg.eval.batch_size]
        inputs = build_oracle_inputs(model, tok, chunk, spec=spec)
        parsed = [parse_epistemic_status(t) for t in generate_rollouts(model, tok, inputs, greedy, spec=spec).texts]
        answer = yes_no_logprobs(model, tok, inputs, [q.confidence if q.ok else 5 for q in parsed], spec)  # [B, 2]
        for task, q, (yes, no) in zip(chunk, parsed, answer.tolist(), strict=True):
            families.append(task.family or "?")
            correct.append(grade(task.question, task.reference, q.answer if q.ok else "").correct is True)
            margins.append(abs(yes - no))
    within, n_families = auroc_within_groups(margins, correct, families)
    family_conf = family_accuracy_confidence(families, correct)
    print(f"items {len(correct)}, accuracy {sum(correct) / len(correct):.3f}")
    print(f"answer margin: AUROC {auroc(margins, correct):.3f}, within family {within:.3f} ({n_families} families)")
    for f in dict.fromkeys(families):
        idx = [i for i, g in enumerate(families) if g == f]
        a = auroc([margins[i] for i in idx], [correct[i] for i in idx])
        print(f"  {f}: n {len(idx)}, accuracy {sum(correct[i] for i in idx) / len(idx):.2f}, "
              f"AUROC {'–' if a is None else f'{a:.2f}'}")
    print(f"family-accuracy confidence (fitted on these items): AUROC {auroc(family_conf, correct):.3f}, "
          f"ECE {expected_calibration_error(family_conf, [float(c) for c in correct]):.3f}, within family 0.5")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
