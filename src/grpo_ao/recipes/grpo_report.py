"""What a GRPO step reports: metrics, sample rows and the judge-outage check, computed from every rank's chunks
(`ChunkRecord`s, gathered), and the run summary. Part of the `grpo` recipe (`recipes/grpo.py`), split out so each
file reads in one sitting."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from grpo_ao import metrics as M
from grpo_ao.config import RunConfig
from grpo_ao.distributed import gather_objects, print0
from grpo_ao.errors import GrpoAoError
from grpo_ao.judge import JudgeStats
from grpo_ao.metrics import confidence_histogram, read_metrics
from grpo_ao.recipes.grpo_chunk import Chunk
from grpo_ao.recipes.setup import window_mean, write_json
from grpo_ao.reward import aggregate_breakdowns


@dataclass(frozen=True)
class ChunkRecord:
    """What the step's metrics, samples and judge-outage check read of one chunk: gathered from every rank,
    so it holds no activations or token ids."""

    index: int
    tasks: list
    layers: list[int]
    texts: list[str]
    parsed: list
    judged: list
    breakdowns: list
    advantages: torch.Tensor  # [N]
    valid: torch.Tensor  # [N] bool
    lengths: torch.Tensor  # [N]
    truncated: torch.Tensor  # [N] bool
    num_generations: int


def chunk_record(c: Chunk) -> ChunkRecord:
    r = c.rollouts
    return ChunkRecord(c.index, c.tasks, c.layers, r.texts, c.parsed, c.judged, c.breakdowns, c.advantages, c.valid,
                       r.lengths, r.truncated, r.num_generations)


def all_chunk_records(chunks: list[Chunk]) -> list[ChunkRecord]:
    """Every rank's chunks as records, in chunk order (as one process would hold them), on every rank."""
    return sorted((rec for part in gather_objects([chunk_record(c) for c in chunks]) for rec in part),
                  key=lambda rec: rec.index)


def step_metrics(chunks: list[ChunkRecord], loss_stats: list, grad_norm: float, lr: float, judge_delta: Any,
                 timers: dict) -> dict[str, float]:
    """Step 4: everything the step logs, by the names in `grpo_ao.metrics`, from every rank's chunk records,
    loss stats and judge counters (`step_totals`)."""
    bds = [bd for c in chunks for bd in c.breakdowns]
    lengths = torch.cat([c.lengths for c in chunks]).float()
    truncated = torch.cat([c.truncated for c in chunks]).float()
    valid_adv = torch.cat([c.advantages[c.valid] for c in chunks])
    g = chunks[0].num_generations
    groups = [[bd.total for bd in c.breakdowns[i:i + g] if bd.total is not None]
              for c in chunks for i in range(0, len(c.breakdowns), g)]
    zero_std = [len(set(grp)) <= 1 for grp in groups]
    out = {
        **aggregate_breakdowns(bds),
        **confidence_histogram([bd.confidence for bd in bds]),
        **judge_delta.as_metrics(),
        M.GROUP_ZERO_STD_FRAC: sum(zero_std) / len(zero_std),
        M.ADV_STD: valid_adv.std(unbiased=False).item() if len(valid_adv) else 0.0,
        M.ROLLOUT_LEN_MEAN: lengths.mean().item(),
        M.ROLLOUT_TRUNCATED_FRAC: truncated.mean().item(),
        M.OPTIM_GRAD_NORM: grad_norm,
        M.OPTIM_LR: lr,
        M.TIME_ROLLOUT_S: timers["rollout"], M.TIME_JUDGE_S: timers["judge"], M.TIME_UPDATE_S: timers["update"],
        M.TIME_STEP_S: sum(timers.values()),
        M.PERF_TOKENS_PER_S: lengths.sum().item() / max(sum(timers.values()), 1e-9),
    }
    if loss_stats:
        out[M.LOSS_TOTAL] = sum(s.loss for s in loss_stats)
        out[M.LOSS_POLICY] = sum(s.policy_loss for s in loss_stats)
        kls = [s.kl for s in loss_stats if s.kl is not None]
        out[M.LOSS_KL] = sum(kls) / len(kls) if kls else 0.0
        out[M.LOSS_CLIP_FRAC] = sum(s.clip_frac for s in loss_stats) / len(loss_stats)
        out[M.LOSS_RATIO_MEAN] = sum(s.ratio_mean for s in loss_stats) / len(loss_stats)
        out[M.LOSS_TIS_WEIGHT_MEAN] = sum(s.tis_weight_mean for s in loss_stats) / len(loss_stats)
        gaps = [s.logprob_mismatch for s in loss_stats if s.logprob_mismatch is not None]
        if gaps:
            out[M.ROLLOUT_LOGPROB_MISMATCH] = sum(gaps) / len(gaps)
    if torch.cuda.is_available():
        out[M.PERF_PEAK_MEMORY_GB] = torch.cuda.max_memory_allocated() / 2**30
    return out


def step_totals(chunks: list[Chunk], loss_stats: list, judge_delta: JudgeStats,
                timers: dict) -> tuple[list[ChunkRecord], list, JudgeStats, dict]:
    """Every rank's chunk records (in chunk order), loss stats and judge counters (summed), and the slowest
    rank's timers: what one process running all the chunks would have, on every rank."""
    records = all_chunk_records(chunks)
    stats = [s for part in gather_objects(loss_stats) for s in part]
    parts = gather_objects(timers)
    return records, stats, summed_judge_stats(judge_delta), {key: max(t[key] for t in parts) for key in timers}


def summed_judge_stats(stats: JudgeStats) -> JudgeStats:
    """Every rank's judge counters, added up (each rank judges its own chunks)."""
    parts = gather_objects(stats)
    return JudgeStats(**{f.name: sum(getattr(p, f.name) for p in parts) for f in dataclasses.fields(JudgeStats)
                         if f.name != "priced"}, priced=stats.priced)


def judge_outage(chunks: list[ChunkRecord], outage: int, limit: int, step: int) -> int:
    """Be loud about judge failures: warn when over half the judge calls failed, stop after `limit`
    consecutive steps in which all of them failed (the oracle would learn nothing, silently)."""
    judged = [j for c in chunks for j in c.judged if not j.skipped]  # parse failures are not sent
    failed = [j for j in judged if not j.ok]
    if len(failed) > len(judged) / 2:
        errors = sorted({j.error or "?" for j in failed})
        print0(f"grpo-ao: warning: step {step}: the judge failed for {len(failed) / len(judged):.0%} of rollouts; "
              f"parsed ones are masked (not scored). Errors: {'; '.join(errors[:3])}")
    outage = outage + 1 if judged and len(failed) == len(judged) else 0
    if limit and outage >= limit:
        raise GrpoAoError(f"The judge failed for every rollout in {outage} consecutive steps, so training would "
                          "learn nothing. Check the API key, base_url, model name and network (see the warnings "
                          "above), then continue with --resume from the latest checkpoint.")
    return outage


def sample_rows(chunks: list[ChunkRecord]) -> list[dict]:
    rows = []
    for c in chunks:
        g = c.num_generations
        for b, task in enumerate(c.tasks):
            group = range(b * g, (b + 1) * g)
            rows.append({
                "question": task.question, "reference": task.reference, "layer": c.layers[b],
                "layer_percent": task.layer_percent, "k": task.num_positions, "context": task.context,
                "completions": [{"text": c.texts[i], "confidence": c.parsed[i].confidence,
                                 "judge": c.judged[i].informativeness, "reward": c.breakdowns[i].total,
                                 "advantage": round(float(c.advantages[i]), 4)} for i in group],
            })
    return rows


def write_summary(run_dir: Path, cfg: RunConfig, adapter_dir, judge_stats: JudgeStats) -> dict[str, Any]:
    """run_dir/summary.json: reward over the first and last 20 % of steps, final adapter, judge totals."""
    records = read_metrics(run_dir, last_per_step=True)
    rewards = [r.get(M.REWARD_MEAN) for r in records]
    parse = [r.get(M.FORMAT_PARSE_RATE) for r in records]
    summary = {
        "steps": len(records),
        "reward_first_20pct": window_mean(rewards, 0.0, 0.2),
        "reward_last_20pct": window_mean(rewards, 0.8, 1.0),
        "parse_rate_first_20pct": window_mean(parse, 0.0, 0.2),
        "parse_rate_last_20pct": window_mean(parse, 0.8, 1.0),
        "adapter": str(adapter_dir) if adapter_dir else None,
        "judge": judge_stats.as_metrics(),
        "run_dir": str(run_dir),
    }
    write_json(run_dir / "summary.json", summary)
    return summary
