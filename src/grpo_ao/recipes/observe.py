"""Roll out without training, for a look: `grpo-ao observe --config CONFIG --num-examples N --num-generations G`.

  1. Draw N tasks from the training data (same sampler and seed as GRPO).
  2. Sample G completions per task exactly as a GRPO rollout does (injection, eval mode), in the layout the
     adapter's grpo_ao_oracle.json records (`oracle.layout_from_adapter`).
  3. Parse; judge (parsed answers only, unless judge.score_parse_failures) and reward, unless --no-judge.
     Every mix of parse failure and judge failure is reported, never a crash.
  4. Print a report per example and overall: parse rate, reward and confidence ranges, histogram of X.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

from grpo_ao.config import RunConfig
from grpo_ao.errors import GrpoAoError
from grpo_ao.format import parse_epistemic_status
from grpo_ao.judge import JudgeResult, build_judge
from grpo_ao.recipes.adapters import cfg_for_adapter
from grpo_ao.recipes.setup import judge_cache_path, load_oracle, oracle_spec, seed_everything, task_sampler
from grpo_ao.reward import RewardBreakdown, judge_and_reward
from grpo_ao.rollout import build_oracle_inputs, generate_rollouts


def _range(values: list[float]) -> str:
    return f"{min(values):.3f} … {max(values):.3f} (mean {sum(values) / len(values):.3f})" if values else "–"


def histogram_lines(confidences: list[int]) -> list[str]:
    """Text histogram of X = 0..10."""
    counts = Counter(confidences)
    top = max(counts.values(), default=1)
    return [f"  X={x:>2} {'█' * round(30 * counts[x] / top):<30} {counts[x]}" for x in range(11)]


def judge_text(judged: JudgeResult | None, breakdown: RewardBreakdown | None) -> str:
    """The judge and reward part of one rollout's report line, for every mix of parse and judge outcome
    ("" without a judge). A judge failure on a parsed answer masks it; on a parse failure the fixed penalty holds.

    >>> judge_text(JudgeResult(error="timeout"), RewardBreakdown(None, None, None, 0.0, -0.5, False, False))
    ' judge=FAILED (timeout) reward=-0.500'
    """
    if judged is None or breakdown is None:
        return ""
    if judged.informativeness is not None:
        score = f"judge={judged.informativeness:.2f}"
    elif judged.skipped:
        score = "judge=not asked"  # a parse failure: its reward is the fixed penalty whatever the judge says
    else:
        score = f"judge=FAILED ({judged.error or 'no score'})"
    reward = "masked" if breakdown.total is None else f"{breakdown.total:+.3f}"
    return f" {score} reward={reward}"


def run(cfg: RunConfig, num_examples: int = 4, num_generations: int = 4, adapter: str | None = None,
        use_judge: bool = True) -> dict[str, Any]:
    if num_examples < 1 or num_generations < 1:
        raise GrpoAoError(f"--num-examples ({num_examples}) and --num-generations ({num_generations}) must be >= 1.")
    seed_everything(cfg.seed)
    cfg = cfg_for_adapter(cfg, adapter or cfg.model.adapter)  # asked the way it was trained (grpo_ao_oracle.json)
    model, tokenizer = load_oracle(cfg, adapter=adapter, trainable=False)
    tasks = task_sampler(cfg.data, tokenizer).next_batch(num_examples)  # 1.
    sampling = replace(cfg.sampling, num_generations=num_generations)
    spec = oracle_spec(cfg)
    inputs = build_oracle_inputs(model, tokenizer, tasks, spec=spec)
    rollouts = generate_rollouts(model, tokenizer, inputs, sampling, spec=spec)  # 2.
    parsed = [parse_epistemic_status(t) for t in rollouts.texts]  # 3.
    g = num_generations
    judged: list[JudgeResult | None] = [None] * len(parsed)
    breakdowns: list[RewardBreakdown | None] = [None] * len(parsed)
    if use_judge:
        cache = judge_cache_path(cfg)
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        judge = build_judge(cfg.judge, cache_path=cache)
        judged, breakdowns = judge_and_reward(judge, tasks, parsed, g, cfg.reward, cfg.judge.score_parse_failures)
    for b, task in enumerate(tasks):  # 4.
        print(f"\n=== example {b + 1}/{len(tasks)} · layer {inputs.layers[b]} ({task.layer_percent}%) · K={task.num_positions}")
        print(f"context : {task.context}")
        print(f"question: {task.question}" + (f"   [reference: {task.reference}]" if task.reference else ""))
        for i in range(b * g, (b + 1) * g):
            p = parsed[i]
            conf = f"X={p.confidence:>2}" if p.ok else "PARSE FAIL"
            trunc = " [truncated]" if rollouts.truncated[i] else ""
            print(f"  [{conf}]{judge_text(judged[i], breakdowns[i])}{trunc} {rollouts.texts[i].strip()!r}")
    confidences = [p.confidence for p in parsed if p.ok]
    rewards = [bd.total for bd in breakdowns if bd is not None and bd.total is not None]
    failed = sum(j is not None and not j.ok and not j.skipped for j in judged)
    parse_rate = len(confidences) / len(parsed)
    print(f"\n=== overall: {len(tasks)} examples × {g} generations")
    print(f"parse rate : {parse_rate:.1%}")
    print(f"reward     : {_range(rewards)}" if use_judge else "reward     : (no judge)")
    if failed:
        print(f"judge      : failed for {failed} of {len(judged)} answers (parsed ones masked, not scored)")
    print(f"confidence : {_range([float(c) for c in confidences])}")
    print("histogram of X:")
    print("\n".join(histogram_lines(confidences)))
    return {"parse_rate": parse_rate, "rewards": rewards, "confidences": confidences, "texts": rollouts.texts,
            "judge_failures": failed}
