"""Plots: both PNGs are written headless, are valid PNGs of a sane size, and handle empty data."""

from __future__ import annotations

import struct
import sys

import pytest

from grpo_ao.calibration import reliability_bins, summarize
from grpo_ao.plots import confidence_histogram, reliability_diagram

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the PNG signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def records():
    xs = [0, 2, 2, 5, 7, 7, 8, 9, 10, 10]
    correct = [False, False, True, True, True, False, True, True, True, True]
    return [{"parse_ok": True, "confidence": x, "informativeness": float(c), "correct": c, "family": "topic"}
            for x, c in zip(xs, correct, strict=True)]


def test_reliability_diagram_and_histogram_are_valid_pngs(tmp_path):
    s = summarize(records())
    paths = [
        reliability_diagram(s["reliability_correct"], "start adapter: correctness", tmp_path / "a" / "rel.png"),
        confidence_histogram(s["confidence_hist"], "start adapter: stated confidence", tmp_path / "hist.png"),
    ]
    assert paths == [tmp_path / "a" / "rel.png", tmp_path / "hist.png"]
    for path in paths:
        width, height = png_size(path)
        assert 400 <= width <= 2000 and 300 <= height <= 2000
        assert 5_000 < path.stat().st_size < 1_000_000


def test_reliability_diagram_accepts_bin_objects_and_empty_data(tmp_path):
    full = reliability_diagram(reliability_bins([0.1, 0.9], [0, 1]), "objects", tmp_path / "obj.png")
    empty = reliability_diagram(reliability_bins([], []), "no parsed answers", tmp_path / "empty.png")
    assert png_size(full) == png_size(empty)


def test_confidence_histogram_needs_eleven_counts(tmp_path):
    with pytest.raises(ValueError, match="11 entries"):
        confidence_histogram([1, 2, 3], "bad", tmp_path / "bad.png")
    assert png_size(confidence_histogram([0] * 11, "empty", tmp_path / "zero.png"))[0] > 0


def test_plotting_does_not_switch_the_pyplot_backend_or_leave_figures_open(tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    reliability_diagram(reliability_bins([0.5], [1]), "t", tmp_path / "r.png")
    assert matplotlib.get_backend() == backend
    if "matplotlib.pyplot" in sys.modules:  # object API only: nothing registered with pyplot
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []
