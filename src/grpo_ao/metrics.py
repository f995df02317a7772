"""Metric names and metric sinks (JSONL, TensorBoard, Weights & Biases).

Every metric a recipe logs is a constant here, named `area/name`, and has one line in
docs/metrics.md (a test keeps the two in sync). Every backend sits behind `MetricSink`; a backend
that is off or unavailable is a no-op sink, so a training loop never contains `if wandb:`.
We do not make a sink failure stop training: an optional backend that cannot start or stops
working logs one warning and goes quiet, and the JSONL file is always written.
"""

from __future__ import annotations

import json
import logging
import math
import netrc
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from grpo_ao.run_info import redact_secrets

log = logging.getLogger(__name__)

# --- names ---------------------------------------------------------------------------------------
REWARD_MEAN = "reward/mean"
REWARD_STD = "reward/std"
REWARD_INFO = "reward/info"
REWARD_BRIER = "reward/brier"
REWARD_BONUS = "reward/bonus"
CALIB_CONFIDENCE_MEAN = "calib/confidence_mean"
CALIB_CONFIDENCE_HIST = "calib/confidence_hist"
"""Prefix of the histogram of X: `calib/confidence_hist_0` ... `calib/confidence_hist_10`."""
CONFIDENCE_LEVELS = tuple(range(11))
FORMAT_PARSE_RATE = "format/parse_rate"
JUDGE_CALLS = "judge/calls"
JUDGE_CACHE_HITS = "judge/cache_hits"
JUDGE_RETRIES = "judge/retries"
JUDGE_FAILURES = "judge/failures"
JUDGE_LATENCY_S = "judge/latency_s"
JUDGE_MASKED_FRAC = "judge/masked_frac"
JUDGE_PROMPT_TOKENS = "judge/prompt_tokens"
JUDGE_COMPLETION_TOKENS = "judge/completion_tokens"
JUDGE_COST_USD = "judge/cost_usd"
GROUP_ZERO_STD_FRAC = "group/zero_std_frac"
ADV_STD = "adv/std"
ROLLOUT_LEN_MEAN = "rollout/len_mean"
ROLLOUT_TRUNCATED_FRAC = "rollout/truncated_frac"
ROLLOUT_LOGPROB_MISMATCH = "rollout/logprob_mismatch"
LOSS_TOTAL = "loss/total"
LOSS_POLICY = "loss/policy"
LOSS_KL = "loss/kl"
LOSS_CLIP_FRAC = "loss/clip_frac"
LOSS_RATIO_MEAN = "loss/ratio_mean"
LOSS_TIS_WEIGHT_MEAN = "loss/tis_weight_mean"
OPTIM_GRAD_NORM = "optim/grad_norm"
OPTIM_LR = "optim/lr"
TIME_ROLLOUT_S = "time/rollout_s"
TIME_JUDGE_S = "time/judge_s"
TIME_UPDATE_S = "time/update_s"
TIME_STEP_S = "time/step_s"
PERF_TOKENS_PER_S = "perf/tokens_per_s"
PERF_PEAK_MEMORY_GB = "perf/peak_memory_gb"
SFT_LOSS = "sft/loss"
SFT_PARSE_RATE_BEFORE = "sft/parse_rate_before"
SFT_PARSE_RATE_AFTER = "sft/parse_rate_after"
AO_SFT_LOSS = "ao_sft/loss"
AO_SFT_HELDOUT_ACCURACY_BEFORE = "ao_sft/heldout_accuracy_before"
AO_SFT_HELDOUT_ACCURACY_AFTER = "ao_sft/heldout_accuracy_after"
AO_SFT_HELDOUT_SHUFFLED_ACCURACY_AFTER = "ao_sft/heldout_shuffled_accuracy_after"
AO_SFT_HELDOUT_COUNTERFACTUAL_ACCURACY_AFTER = "ao_sft/heldout_counterfactual_accuracy_after"
CURVE_FAMILIES = ("topic", "sentiment", "language", "tense", "number", "fact")
"""The built-in data's task families: the learning curve logs a metric per family for these (others are in
heldout_curve.jsonl and the plot only)."""
CURVE_CONTROLS = ("real", "counterfactual")
CURVE_KINDS = ("yes_no", "yes_no_balanced", "open")


def ao_curve_key(kind: str, control: str) -> str:
    """The learning-curve metric of yes/no or open items.  >>> ao_curve_key("yes_no", "real") -> 'ao_sft/curve_yes_no_real'"""
    assert kind in CURVE_KINDS and control in CURVE_CONTROLS, (kind, control)
    return f"ao_sft/curve_{kind}_{control}"


def ao_curve_family_key(family: str, control: str) -> str:
    """The learning-curve metric of one family.  >>> ao_curve_family_key("topic", "real") -> 'ao_sft_family/topic_real'"""
    assert family in CURVE_FAMILIES and control in CURVE_CONTROLS, (family, control)
    return f"ao_sft_family/{family}_{control}"


def confidence_hist_key(level: int) -> str:
    """The histogram metric for confidence X = `level`.  >>> confidence_hist_key(7) -> 'calib/confidence_hist_7'"""
    assert level in CONFIDENCE_LEVELS, f"confidence level must be 0..10, got {level}"
    return f"{CALIB_CONFIDENCE_HIST}_{level}"


def confidence_histogram(confidences: Iterable[int | None]) -> dict[str, float]:
    """Fraction of parsed completions at each X in 0..10 (parse failures, None, are left out)."""
    parsed = [c for c in confidences if c is not None]
    return {confidence_hist_key(x): parsed.count(x) / max(len(parsed), 1) for x in CONFIDENCE_LEVELS}


GRPO_METRICS: tuple[str, ...] = (
    REWARD_MEAN, REWARD_STD, REWARD_INFO, REWARD_BRIER, REWARD_BONUS,
    CALIB_CONFIDENCE_MEAN, *(confidence_hist_key(x) for x in CONFIDENCE_LEVELS),
    FORMAT_PARSE_RATE,
    JUDGE_CALLS, JUDGE_CACHE_HITS, JUDGE_RETRIES, JUDGE_FAILURES, JUDGE_LATENCY_S, JUDGE_MASKED_FRAC,
    JUDGE_PROMPT_TOKENS, JUDGE_COMPLETION_TOKENS, JUDGE_COST_USD,
    GROUP_ZERO_STD_FRAC, ADV_STD, ROLLOUT_LEN_MEAN, ROLLOUT_TRUNCATED_FRAC, ROLLOUT_LOGPROB_MISMATCH,
    LOSS_TOTAL, LOSS_POLICY, LOSS_KL, LOSS_CLIP_FRAC, LOSS_RATIO_MEAN, LOSS_TIS_WEIGHT_MEAN, OPTIM_GRAD_NORM, OPTIM_LR,
    TIME_ROLLOUT_S, TIME_JUDGE_S, TIME_UPDATE_S, TIME_STEP_S, PERF_TOKENS_PER_S, PERF_PEAK_MEMORY_GB,
)  # fmt: skip
"""What `grpo-ao grpo` logs each step (peak memory only where CUDA is available: `CONDITIONAL_METRICS`)."""
SFT_METRICS: tuple[str, ...] = (SFT_LOSS, OPTIM_GRAD_NORM, OPTIM_LR, SFT_PARSE_RATE_BEFORE, SFT_PARSE_RATE_AFTER)
"""What `grpo-ao sft` logs: loss, gradient norm and lr per step, the held-out parse rates once at the end."""
AO_SFT_METRICS: tuple[str, ...] = (
    AO_SFT_LOSS, OPTIM_GRAD_NORM, OPTIM_LR,
    AO_SFT_HELDOUT_ACCURACY_BEFORE, AO_SFT_HELDOUT_ACCURACY_AFTER, AO_SFT_HELDOUT_SHUFFLED_ACCURACY_AFTER,
    AO_SFT_HELDOUT_COUNTERFACTUAL_ACCURACY_AFTER,
    *(ao_curve_key(k, c) for k in CURVE_KINDS for c in CURVE_CONTROLS),
    *(ao_curve_family_key(f, c) for f in CURVE_FAMILIES for c in CURVE_CONTROLS),
)  # fmt: skip
"""What `grpo-ao ao-sft` logs: loss, gradient norm and lr per step, held-out accuracies once at the end, the
learning curve (step 0, every `ao_sft.eval_every` steps, the last step; a family only where held out)."""
STAGE_METRICS: dict[str, tuple[str, ...]] = {"ao_sft": AO_SFT_METRICS, "sft": SFT_METRICS, "grpo": GRPO_METRICS,
                                             "eval": ()}
"""Metric names per stage. `grpo-ao eval` logs none: its numbers are in eval.json and eval.md."""
CONDITIONAL_METRICS: frozenset[str] = frozenset({PERF_PEAK_MEMORY_GB})
"""Names a stage logs only in some settings: peak accelerator memory only where CUDA is available."""
ALL_METRICS: tuple[str, ...] = tuple(dict.fromkeys((*GRPO_METRICS, *SFT_METRICS, *AO_SFT_METRICS)))
"""Every name, each once, in the order of the docs/metrics.md table."""


# --- sinks ---------------------------------------------------------------------------------------
@runtime_checkable
class MetricSink(Protocol):
    """Where per-step metrics and sample rows go."""

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def log_samples(self, rows: list[dict], step: int) -> None: ...

    def close(self) -> None: ...


class NullSink:
    """Accepts everything and does nothing: a backend that is off."""

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def log_samples(self, rows: list[dict], step: int) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """run_dir/metrics.jsonl (one `{"step", "time", name: value...}` line per `log`) and
    run_dir/samples.jsonl (one `{"step", ...row}` line per sample). Appends, so a resumed run
    continues the same files; flushed after every write. NaN/inf values are written as null."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._metrics = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")
        self._samples = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        values = {k: v if isinstance(v, int | float) else float(v) for k, v in metrics.items()}
        self._metrics.write(json.dumps(_finite({"step": step, "time": time.time(), **values})) + "\n")
        self._metrics.flush()

    def log_samples(self, rows: list[dict], step: int) -> None:
        if self._samples is None:
            self._samples = open(self.run_dir / "samples.jsonl", "a", encoding="utf-8")
        for row in rows:
            self._samples.write(json.dumps(_finite({"step": step, **row}), default=_jsonable) + "\n")
        self._samples.flush()

    def close(self) -> None:
        self._metrics.close()
        if self._samples is not None:
            self._samples.close()


class TensorBoardSink:
    """Scalars and sample text to run_dir/tensorboard; a no-op (one warning) without `tensorboard`."""

    def __init__(self, run_dir: Path):
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("TensorBoard is not installed (pip install tensorboard); logging without it.")
            return
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for name, value in metrics.items():
                self.writer.add_scalar(name, float(value), step)

    def log_samples(self, rows: list[dict], step: int) -> None:
        if self.writer is not None and rows:
            text = "\n\n".join(f"    {json.dumps(r, default=_jsonable, indent=2)}" for r in rows)
            self.writer.add_text("samples", text, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class WandbSink:
    """Weights & Biases run; a no-op with one clear warning when wandb or a login is missing.

    A login is `WANDB_API_KEY`, a `wandb login` entry in ~/.netrc, or WANDB_MODE=offline/disabled.
    """

    def __init__(self, project: str, run_name: str | None, config: dict):
        self.run = None
        try:
            import wandb
        except ImportError:
            log.warning("wandb is not installed (pip install 'grpo-ao[wandb]'); continuing without W&B.")
            return
        if not _wandb_logged_in():
            log.warning("WANDB_API_KEY is not set and `wandb login` was never run; continuing without W&B.")
            return
        try:
            self.run = wandb.init(project=project, name=run_name, config=redact_secrets(config))
        except Exception as e:
            log.warning("wandb.init failed (%s); continuing without W&B.", e)
        self._wandb = wandb

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._call(lambda: self.run.log(dict(metrics), step=step))

    def log_samples(self, rows: list[dict], step: int) -> None:
        if rows:
            columns = sorted({k for r in rows for k in r})
            data = [[_cell(r.get(c)) for c in columns] for r in rows]
            self._call(
                lambda: self.run.log({"samples": self._wandb.Table(columns=columns, data=data)}, step=step)
            )

    def close(self) -> None:
        self._call(lambda: self.run.finish())

    def _call(self, fn) -> None:
        if self.run is None:
            return
        try:
            fn()
        except Exception as e:  # a flaky network must not end a training run
            log.warning("W&B logging failed (%s); continuing without W&B.", e)
            self.run = None


class MultiSink:
    """Forwards every call to each of `sinks`, in order."""

    def __init__(self, sinks: Iterable[MetricSink]):
        self.sinks = list(sinks)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for sink in self.sinks:
            sink.log(metrics, step)

    def log_samples(self, rows: list[dict], step: int) -> None:
        for sink in self.sinks:
            sink.log_samples(rows, step)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def build_sinks(
    run_dir: Path, tensorboard: bool, wandb_project: str | None, run_name: str | None, config_dict: dict
) -> MultiSink:
    """JSONL always; TensorBoard when `tensorboard`; W&B when `wandb_project` is given.

    `config_dict` goes to W&B with secrets redacted. A backend that cannot start stays in the
    list as a no-op after its warning.
    """
    sinks: list[MetricSink] = [JsonlSink(run_dir)]
    if tensorboard:
        sinks.append(TensorBoardSink(run_dir))
    if wandb_project:
        sinks.append(WandbSink(wandb_project, run_name, config_dict))
    return MultiSink(sinks)


def read_metrics(run_dir: Path, *, last_per_step: bool = False) -> list[dict]:
    """The records of run_dir/metrics.jsonl, in file order.

    With `last_per_step`, a step logged twice (a resumed run repeats the steps after its
    checkpoint) keeps only its last record, and the result is sorted by step.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if last_per_step:
        records = sorted({r["step"]: r for r in records}.values(), key=lambda r: r["step"])
    return records


def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
        return True
    try:
        auth = netrc.netrc(os.environ.get("NETRC") or None)
    except (OSError, netrc.NetrcParseError):
        return False
    return auth.authenticators("api.wandb.ai") is not None


def _cell(value: Any) -> Any:
    """A W&B table cell: scalars as they are, anything else (lists, dicts) as JSON text."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return json.dumps(_finite(value), default=_jsonable)


def _finite(value: Any) -> Any:
    """A copy with NaN/inf floats replaced by None, so every line is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    """Fallback for `json.dumps`: tensors/arrays to lists or numbers, paths and others to str."""
    if hasattr(value, "tolist"):
        return _finite(value.tolist())
    return str(value)
