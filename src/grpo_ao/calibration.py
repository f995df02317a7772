"""Calibration metrics of stated confidence, as pure numpy functions.

Confidence is the oracle's X in `[epistemic status: X]`, used as the probability c = X/10 in [0, 1].
Targets are either binary correctness (1/0, where a reference answer exists) or the judge's
informativeness in [0, 1]. Bins: `n_bins` equal-width bins over [0, 1] with edges e_i = i/n_bins;
bin i = [e_i, e_{i+1}) and the last bin is closed, [e_{n-1}, 1]. With 10 bins a confidence X/10 falls
in bin X for X = 0..9, and X = 10 shares bin 9 with X = 9.

What we deliberately do not do: parse failures never enter Brier/ECE/MCE/AUROC (they have no
confidence; the old prototype scored them as confidence -0.1) — they only lower `parse_rate`. Empty
inputs give None, never NaN. No temperature scaling or other recalibration happens here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

N_BINS = 10
"""Default number of equal-width confidence bins."""


def _arrays(conf: Sequence[float], targets: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(conf, dtype=np.float64).reshape(-1)  # [N]
    t = np.asarray(targets, dtype=np.float64).reshape(-1)  # [N]
    if c.shape != t.shape:
        raise ValueError(f"confidences and targets differ in length: {c.shape[0]} vs {t.shape[0]}")
    if c.size and (c.min() < 0.0 or c.max() > 1.0):
        raise ValueError("confidences must be probabilities in [0, 1] (X/10), got values outside")
    return c, t


def brier_score(conf: Sequence[float], targets: Sequence[float]) -> float | None:
    """Brier = (1/N) Σ_i (c_i − y_i)².  [N], [N] -> scalar; None when N = 0.

    >>> round(brier_score([0.8, 0.3], [1, 0]), 6)  # (0.2² + 0.3²) / 2
    0.065
    """
    c, t = _arrays(conf, targets)
    return float(np.mean((c - t) ** 2)) if c.size else None


@dataclass(frozen=True)
class ReliabilityBin:
    """One confidence bin [lower, upper) (the last is closed). Means are None when the bin is empty."""

    lower: float
    upper: float
    count: int
    mean_confidence: float | None
    mean_target: float | None


def bin_index(conf: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """i = min(floor(c · n_bins), n_bins − 1).  [N] -> [N] int.

    The 1e-9 guards float rounding so that X/10 · 10 lands in bin X and never in X − 1.
    """
    return np.minimum(np.floor(conf * n_bins + 1e-9).astype(np.int64), n_bins - 1)


def reliability_bins(
    conf: Sequence[float], targets: Sequence[float], n_bins: int = N_BINS
) -> list[ReliabilityBin]:
    """Per bin b: n_b = |b|, conf_b = mean_{i∈b} c_i, acc_b = mean_{i∈b} y_i.  [N], [N] -> n_bins bins."""
    c, t = _arrays(conf, targets)
    idx = bin_index(c, n_bins)  # [N]
    bins = []
    for b in range(n_bins):
        in_bin = idx == b  # [N]
        n = int(in_bin.sum())
        bins.append(ReliabilityBin(lower=b / n_bins, upper=(b + 1) / n_bins, count=n,
                                   mean_confidence=float(c[in_bin].mean()) if n else None,
                                   mean_target=float(t[in_bin].mean()) if n else None))
    return bins


def ece_from_bins(bins: Sequence[ReliabilityBin]) -> float | None:
    """ECE = Σ_b (n_b / N) · |acc_b − conf_b| over non-empty bins; None when N = 0."""
    total = sum(b.count for b in bins)
    if total == 0:
        return None
    return float(sum(b.count / total * abs(b.mean_target - b.mean_confidence) for b in bins if b.count))


def expected_calibration_error(
    conf: Sequence[float], targets: Sequence[float], n_bins: int = N_BINS
) -> float | None:
    """ECE = Σ_b (n_b / N) · |acc_b − conf_b|, equal-width bins (module docstring).  [N], [N] -> scalar.

    https://arxiv.org/abs/1706.04599 (Guo et al. 2017, eq. 3). None when N = 0.
    """
    return ece_from_bins(reliability_bins(conf, targets, n_bins))


def max_calibration_error(
    conf: Sequence[float], targets: Sequence[float], n_bins: int = N_BINS
) -> float | None:
    """MCE = max_b |acc_b − conf_b| over non-empty bins.  [N], [N] -> scalar; None when N = 0."""
    gaps = [abs(b.mean_target - b.mean_confidence) for b in reliability_bins(conf, targets, n_bins) if b.count]
    return float(max(gaps)) if gaps else None


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x, tied values sharing the mean of their ranks.  [N] -> [N]."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_x)) + 1]  # first index of each run of equal values
    ends = np.r_[starts[1:], x.size]
    ranks = np.empty(x.size, dtype=np.float64)
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + 1 + e) / 2  # mean of ranks s+1..e
    return ranks


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """AUROC = (R_pos − n_pos(n_pos + 1)/2) / (n_pos · n_neg), R_pos = sum of the positives' ranks among
    all scores (ties get their average rank, so a tie counts 1/2).  [N], [N] -> scalar.

    Equals P(score of a random positive > score of a random negative) + ½ P(tie) (Mann-Whitney U).
    None when either class is absent (undefined).
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)  # [N]
    y = np.asarray(labels, dtype=bool).reshape(-1)  # [N]
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.shape[0]} vs {y.shape[0]}")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    r_pos = _average_ranks(s)[y].sum()
    return float((r_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auroc_within_groups(scores: Sequence[float], labels: Sequence[bool],
                        groups: Sequence[Any]) -> tuple[float | None, int]:
    """AUROC_within = (1/|F|) Σ_{f∈F} AUROC(scores_f, labels_f), F = the groups with both classes.  [N], [N], [N]
    -> (scalar or None when F is empty, |F|).

    The global AUROC mixes two skills: ranking items of one task (knowing WHICH answer is right) and ranking
    tasks (knowing WHICH task it is good at). Confidence that only tracks the group — high on an easy family,
    low on a hard one — scores a high global AUROC but 0.5 here, since within a group all its scores tie.

    >>> auroc_within_groups([0.9, 0.9, 0.9, 0.2, 0.2, 0.2], [1, 1, 0, 1, 0, 0], "aaabbb")
    (0.5, 2)
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)  # [N]
    y = np.asarray(labels, dtype=bool).reshape(-1)  # [N]
    g = list(groups)
    if not s.shape == y.shape == (len(g),):
        raise ValueError(f"scores, labels and groups differ in length: {s.shape[0]}, {y.shape[0]}, {len(g)}")
    per_group = []
    for group in dict.fromkeys(g):
        mask = np.array([x == group for x in g], dtype=bool)  # [N]
        value = auroc(s[mask], y[mask])
        if value is not None:  # a group with one class only has no AUROC
            per_group.append(value)
    return (float(np.mean(per_group)) if per_group else None), len(per_group)


TARGET_KEYS = {"informativeness": "info", "correctness": "correct"}
"""`reward.target` -> the suffix of the summary keys against that target (`ece_info`, `ece_correct`)."""


@dataclass(frozen=True)
class EvalRecord:
    """One evaluated oracle answer."""

    parse_ok: bool
    """The answer had a valid `[epistemic status: X]` tag."""
    confidence: int | None
    """X in 0..10 as parsed (None on a parse failure); metrics use X/10."""
    informativeness: float | None
    """Judge score in [0, 1]; None when the judge failed or did not run."""
    correct: bool | None
    """Correctness against a reference answer; None when unknown."""
    family: str | None = None
    """Task family, for the per-family breakdown; None when unknown (left out of `per_family`)."""


def _record(r: EvalRecord | Mapping[str, Any]) -> EvalRecord:
    rec = r if isinstance(r, EvalRecord) else EvalRecord(**{k: r.get(k) for k in EvalRecord.__dataclass_fields__})
    if rec.parse_ok and (not isinstance(rec.confidence, (int, np.integer)) or not 0 <= rec.confidence <= 10):
        raise ValueError(f"a parsed record needs an integer confidence X in 0..10, got {rec.confidence!r}")
    return rec


def _mean(x: Sequence[float]) -> float | None:
    return float(np.mean(x)) if len(x) else None


def _target_metrics(conf: np.ndarray, targets: np.ndarray, name: str) -> dict[str, Any]:
    """Brier/ECE/MCE and reliability bins of `conf` [M] against `targets` [M], keys suffixed `_{name}`."""
    bins = reliability_bins(conf, targets)
    return {f"brier_{name}": brier_score(conf, targets), f"ece_{name}": ece_from_bins(bins),
            f"mce_{name}": max_calibration_error(conf, targets),
            f"reliability_{name}": [asdict(b) for b in bins]}


def _summary(recs: list[EvalRecord], target: str | None) -> dict[str, Any]:
    parsed = [r for r in recs if r.parse_ok]
    conf = np.array([r.confidence / 10 for r in parsed], dtype=np.float64)  # [P], c = X/10
    out: dict[str, Any] = {
        "n": len(recs), "n_parsed": len(parsed),
        "parse_rate": len(parsed) / len(recs) if recs else None,
        "mean_confidence": _mean(conf),
        "confidence_hist": np.bincount(np.array([r.confidence for r in parsed], dtype=np.int64),
                                       minlength=11).tolist(),
    }
    has_info = np.array([r.informativeness is not None for r in parsed], dtype=bool)  # [P]
    info = np.array([r.informativeness for r in parsed if r.informativeness is not None], dtype=np.float64)
    out["n_informativeness"] = int(info.size)
    out["mean_informativeness"] = _mean(info)
    out.update(_target_metrics(conf[has_info], info, "info"))
    has_ref = np.array([r.correct is not None for r in parsed], dtype=bool)  # [P]
    correct = np.array([bool(r.correct) for r in parsed if r.correct is not None], dtype=bool)  # [M]
    conf_ref = conf[has_ref]  # [M]
    out["n_correct_known"] = int(correct.size)
    graded = [bool(r.correct) for r in recs if r.correct is not None]  # parse failures included
    out["n_graded"] = len(graded)
    out["accuracy"] = _mean(np.array(graded, dtype=np.float64))
    out.update(_target_metrics(conf_ref, correct.astype(np.float64), "correct"))
    out["auroc_correct"] = auroc(conf_ref, correct)
    families = [r.family for r in parsed if r.correct is not None]  # [M], None is a family of its own
    out["auroc_correct_within_family"], out["n_families_auroc"] = auroc_within_groups(conf_ref, correct, families)
    out["mean_confidence_correct"] = _mean(conf_ref[correct])
    out["mean_confidence_incorrect"] = _mean(conf_ref[~correct])
    out["target"] = target
    out["ece_target"] = out[f"ece_{TARGET_KEYS[target]}"] if target is not None else None
    return out


def summarize(records: Sequence[EvalRecord | Mapping[str, Any]], target: str | None = None) -> dict[str, Any]:
    """All evaluation numbers of a list of answers, as a JSON-serialisable dict.

    `accuracy` = share of correct answers over ALL answers with a known `correct` (`n_graded` of them),
    parse failures included: what the oracle says is graded whether or not its tag parsed, so an oracle
    without the format (the bare model, the AO stage) still has an accuracy.
    Everything else is over PARSED answers only (parse failures count only in `parse_rate` = n_parsed / n):
    `mean_confidence` (of X/10), `confidence_hist` (11 counts, X = 0..10); against informativeness
    (answers with a judge score): `mean_informativeness`, `brier_info`, `ece_info`, `mce_info`,
    `reliability_info`; against correctness (parsed answers with a known `correct`): `brier_correct`, `ece_correct`, `mce_correct`, `reliability_correct`, `auroc_correct` (confidence
    separating correct from incorrect), `auroc_correct_within_family` (`auroc_within_groups` by task
    family: the mean per-family AUROC over the `n_families_auroc` families with both right and wrong parsed
    answers — whether it knows which ITEM it got right, not only which family it is good at),
    `mean_confidence_correct`, `mean_confidence_incorrect`; `ece_target`, the ECE against the reward's own
    `target` (`ece_info` for "informativeness", `ece_correct` for "correctness", None without a target); the
    counts `n`, `n_parsed`, `n_informativeness`, `n_correct_known` (parsed), `n_graded`; and `per_family` with the same keys
    per task family. A metric without data is None. Formulas: accuracy = (1/M) Σ y_i; Brier, ECE, MCE
    and AUROC as in `brier_score`, `expected_calibration_error`, `max_calibration_error`, `auroc`.

    Args:
        records: `EvalRecord`s or mappings with the same keys.
        target: the reward's target (`reward.target`: "informativeness" or "correctness"), named in the
            summary's `target` and picked for `ece_target`; None leaves `ece_target` None.
    """
    if target is not None and target not in TARGET_KEYS:
        raise ValueError(f"target must be one of {', '.join(TARGET_KEYS)} or None, got {target!r}")
    recs = [_record(r) for r in records]
    out = _summary(recs, target)
    families = sorted({r.family for r in recs if r.family is not None})
    out["per_family"] = {f: _summary([r for r in recs if r.family == f], target) for f in families}
    return out

