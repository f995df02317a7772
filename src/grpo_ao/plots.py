"""PNG plots of calibration: a reliability diagram and a histogram of stated confidence X.

Headless: figures are built with the object API on the Agg canvas (`FigureCanvasAgg`), so no display,
no pyplot global state and no change to the caller's matplotlib backend. We do not draw error bars
or confidence intervals; bin counts are printed above the bars instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from grpo_ao.calibration import ReliabilityBin, ece_from_bins

_DPI = 120


def _as_bin(b: ReliabilityBin | Mapping[str, Any]) -> ReliabilityBin:
    if isinstance(b, ReliabilityBin):
        return b
    return ReliabilityBin(**{k: b[k] for k in ReliabilityBin.__dataclass_fields__})


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(out, format="png", dpi=_DPI)
    return out


def reliability_diagram(bins: Sequence[ReliabilityBin | Mapping[str, Any]], title: str, path: str | Path) -> Path:
    """Bars of observed accuracy (mean target) per confidence bin against the diagonal, with bin counts.

    Args:
        bins: `calibration.reliability_bins(...)` or their dict form from `summarize` (equal width).
        title: first title line; the second line gives ECE and N.
        path: PNG file to write (parent folders are created).

    Returns:
        `path` as a `Path`.
    """
    rb = [_as_bin(b) for b in bins]
    n = sum(b.count for b in rb)
    ece = ece_from_bins(rb)
    fig = Figure(figsize=(6, 5.5))
    ax = fig.add_subplot()
    centers = [(b.lower + b.upper) / 2 for b in rb]
    width = [(b.upper - b.lower) * 0.9 for b in rb]
    heights = [b.mean_target if b.count else 0.0 for b in rb]
    ax.bar(centers, heights, width=width, color="tab:blue", edgecolor="black", alpha=0.8,
           label="observed accuracy per bin")
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    mean_conf = [(b.mean_confidence, b.mean_target) for b in rb if b.count]
    if mean_conf:
        ax.scatter(*zip(*mean_conf, strict=True), color="tab:red", zorder=3, s=18, label="mean confidence in bin")
    for x, h, b in zip(centers, heights, rb, strict=True):
        ax.annotate(f"n={b.count}", (x, h), xytext=(0, 3), textcoords="offset points", ha="center",
                    va="bottom", fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.1)
    ax.set_xticks([i / 10 for i in range(11)])
    ax.set_xlabel("confidence (X/10)")
    ax.set_ylabel("observed accuracy")
    ece_text = "n/a" if ece is None else f"{ece:.3f}"
    ax.set_title(f"{title}\nECE = {ece_text}  (N = {n})")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def confidence_histogram(hist_counts: Sequence[int], title: str, path: str | Path) -> Path:
    """Bar chart of how often each confidence X = 0..10 was stated.

    Args:
        hist_counts: 11 counts, index X (`summarize(...)["confidence_hist"]`).
        title: plot title.
        path: PNG file to write (parent folders are created).

    Returns:
        `path` as a `Path`.
    """
    if len(hist_counts) != 11:
        raise ValueError(f"hist_counts must have 11 entries (X = 0..10), got {len(hist_counts)}")
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    xs = list(range(11))
    ax.bar(xs, hist_counts, color="tab:green", edgecolor="black", label="answers with this X")
    for x, c in zip(xs, hist_counts, strict=True):
        ax.annotate(str(int(c)), (x, c), xytext=(0, 3), textcoords="offset points", ha="center", fontsize=8)
    ax.set_xticks(xs)
    ax.set_xlabel("stated confidence X (0-10)")
    ax.set_ylabel("number of answers")
    ax.set_ylim(0, max(max(hist_counts), 1) * 1.15)
    ax.set_title(f"{title}  (N = {int(sum(hist_counts))})")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def ao_learning_curve(points: Mapping[int, Mapping[str, Mapping[str, float]]], title: str, path: str | Path) -> Path:
    """AO pretraining's held-out curve: per group (yes/no, open, each family) accuracy against the step, real
    activations solid, the counterfactual control dashed in the same colour.

    Args:
        points: {step: `ao_heldout.curve_summary(rows of that step)`} = {step: {control: {group: accuracy}}}.
        title: plot title.
        path: PNG file to write (parent folders are created).
    """
    steps = sorted(points)
    groups = sorted({g for p in points.values() for part in p.values() for g in part})
    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    colors = [f"C{i % 10}" for i in range(len(groups))]
    for g, color in zip(groups, colors, strict=True):
        for control, style in (("real", "-"), ("counterfactual", "--")):
            xy = [(s, points[s][control][g]) for s in steps if g in points[s].get(control, {})]
            if xy:
                ax.plot(*zip(*xy, strict=True), style, color=color, marker="o", markersize=3,
                        label=f"{g.removeprefix('family:')} ({control})", linewidth=2 if ":" not in g else 1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("step")
    ax.set_ylabel("held-out accuracy (cheap check)")
    ax.set_title(f"{title}\nsolid: real activations, dashed: counterfactual control (a reader goes to 0)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
