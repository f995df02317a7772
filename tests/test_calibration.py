"""Calibration metrics against hand-computed values (atol=1e-6)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from grpo_ao.calibration import (
    EvalRecord,
    auroc,
    auroc_within_groups,
    bin_index,
    brier_score,
    expected_calibration_error,
    max_calibration_error,
    reliability_bins,
    summarize,
)

ATOL = 1e-6

# Shared example. conf = X/10, y = correctness.
CONF = [0.0, 0.2, 0.2, 0.7, 0.9, 1.0]
Y = [0, 1, 0, 1, 1, 0]


def test_brier_score_hand_computed():
    # (0-0)² + (.2-1)² + (.2-0)² + (.7-1)² + (.9-1)² + (1-0)² = 0 + .64 + .04 + .09 + .01 + 1 = 1.78; / 6
    assert brier_score(CONF, Y) == pytest.approx(1.78 / 6, abs=ATOL)


def test_reliability_bins_hand_computed_with_empty_bins():
    bins = reliability_bins(CONF, Y, n_bins=10)
    assert len(bins) == 10
    assert [b.count for b in bins] == [1, 0, 2, 0, 0, 0, 0, 1, 0, 2]  # 0.9 and 1.0 share the last bin
    assert [b.lower for b in bins] == pytest.approx([i / 10 for i in range(10)], abs=ATOL)
    assert [b.upper for b in bins] == pytest.approx([i / 10 for i in range(1, 11)], abs=ATOL)
    b2, b9 = bins[2], bins[9]
    assert (b2.mean_confidence, b2.mean_target) == pytest.approx((0.2, 0.5), abs=ATOL)
    assert (b9.mean_confidence, b9.mean_target) == pytest.approx((0.95, 0.5), abs=ATOL)
    assert all(b.mean_confidence is None and b.mean_target is None for b in bins if b.count == 0)


def test_ece_and_mce_hand_computed():
    # non-empty bins (n, conf, acc, gap):
    #   b0 (1, 0, 0, 0), b2 (2, .2, .5, .3), b7 (1, .7, 1, .3), b9 (2, .95, .5, .45)
    # ECE = (1·0 + 2·.3 + 1·.3 + 2·.45) / 6 = 1.8 / 6 = 0.3;  MCE = .45
    assert expected_calibration_error(CONF, Y) == pytest.approx(0.3, abs=ATOL)
    assert max_calibration_error(CONF, Y) == pytest.approx(0.45, abs=ATOL)


def test_every_stated_confidence_lands_in_its_own_bin():
    # X/10 -> bin X for X = 0..9; X = 10 is in the closed last bin 9
    assert bin_index(np.array([x / 10 for x in range(11)])).tolist() == list(range(10)) + [9]
    assert bin_index(np.array([0.15, 0.999, 0.0999])).tolist() == [1, 9, 0]


def test_auroc_hand_computed_with_a_tie():
    # positives .2, .7, .9; negatives 0, .2, 1.0. Pairs won: .2 -> 1 + ½ (tie) + 0; .7 -> 2; .9 -> 2.
    # 5.5 / 9. Via ranks: 0->1, .2,.2 -> 2.5, .7->4, .9->5, 1->6; R_pos = 11.5; (11.5 - 3·4/2) / 9 = 5.5/9.
    assert auroc(CONF, [bool(y) for y in Y]) == pytest.approx(5.5 / 9, abs=ATOL)


@pytest.mark.parametrize("scores, labels, expected", [
    ([0.1, 0.9], [False, True], 1.0),
    ([0.9, 0.1], [False, True], 0.0),
    ([0.5, 0.5, 0.5], [True, False, True], 0.5),
    ([0.3, 0.8], [True, True], None),  # one class: undefined
    ([], [], None),
])
def test_auroc_edge_cases(scores, labels, expected):
    got = auroc(scores, labels)
    assert got is None if expected is None else got == pytest.approx(expected, abs=ATOL)


def test_all_correct():
    # conf .8, .8, 1.0 all correct: Brier (.04 + .04 + 0) / 3; bins b8 (2, gap .2), b9 (1, gap 0): ECE .4/3, MCE .2
    conf, y = [0.8, 0.8, 1.0], [1, 1, 1]
    assert brier_score(conf, y) == pytest.approx(0.08 / 3, abs=ATOL)
    assert expected_calibration_error(conf, y) == pytest.approx(0.4 / 3, abs=ATOL)
    assert max_calibration_error(conf, y) == pytest.approx(0.2, abs=ATOL)
    assert auroc(conf, [True] * 3) is None


def test_all_wrong():
    # conf .3, 0 all wrong: Brier (.09 + 0) / 2 = .045; bins b3 gap .3, b0 gap 0: ECE .15, MCE .3
    conf, y = [0.3, 0.0], [0, 0]
    assert brier_score(conf, y) == pytest.approx(0.045, abs=ATOL)
    assert expected_calibration_error(conf, y) == pytest.approx(0.15, abs=ATOL)
    assert max_calibration_error(conf, y) == pytest.approx(0.3, abs=ATOL)


def test_single_example():
    # conf .6 correct: Brier .4² = .16; one bin, gap .4
    assert brier_score([0.6], [1]) == pytest.approx(0.16, abs=ATOL)
    assert expected_calibration_error([0.6], [1]) == pytest.approx(0.4, abs=ATOL)
    assert max_calibration_error([0.6], [1]) == pytest.approx(0.4, abs=ATOL)


def test_continuous_informativeness_targets():
    # conf .5, 1.0 vs info .25, .75: Brier (.0625 + .0625) / 2; bins b5 gap .25, b9 gap .25: ECE .25
    assert brier_score([0.5, 1.0], [0.25, 0.75]) == pytest.approx(0.0625, abs=ATOL)
    assert expected_calibration_error([0.5, 1.0], [0.25, 0.75]) == pytest.approx(0.25, abs=ATOL)


def test_empty_inputs_give_none():
    assert brier_score([], []) is None
    assert expected_calibration_error([], []) is None
    assert max_calibration_error([], []) is None
    assert [b.count for b in reliability_bins([], [])] == [0] * 10


def test_confidence_outside_unit_interval_is_rejected():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        brier_score([7], [1])  # X instead of X/10
    with pytest.raises(ValueError, match="differ in length"):
        brier_score([0.1, 0.2], [1])


def rec(parse_ok, x, info, correct, family):
    return EvalRecord(parse_ok=parse_ok, confidence=x, informativeness=info, correct=correct, family=family)


RECORDS = [
    rec(True, 9, 1.0, True, "topic"),
    rec(True, 2, 0.0, False, "topic"),
    rec(True, 6, 0.5, None, "sentiment"),  # no reference: only in the informativeness metrics
    rec(False, None, 0.0, False, "sentiment"),  # parse failure: in parse_rate and accuracy only
    rec(True, 8, None, False, "sentiment"),  # judge failure: only in the correctness metrics
]


def test_summarize_hand_computed():
    s = summarize(RECORDS)
    assert (s["n"], s["n_parsed"], s["n_informativeness"], s["n_correct_known"]) == (5, 4, 3, 3)
    assert s["parse_rate"] == pytest.approx(0.8, abs=ATOL)
    assert s["mean_confidence"] == pytest.approx((0.9 + 0.2 + 0.6 + 0.8) / 4, abs=ATOL)
    assert s["confidence_hist"] == [0, 0, 1, 0, 0, 0, 1, 0, 1, 1, 0]
    # vs informativeness: conf .9, .2, .6 / info 1, 0, .5. Brier (.01 + .04 + .01) / 3 = .02;
    # gaps .1 (b9), .2 (b2), .1 (b6): ECE .4/3, MCE .2
    assert s["mean_informativeness"] == pytest.approx(0.5, abs=ATOL)
    assert s["brier_info"] == pytest.approx(0.02, abs=ATOL)
    assert s["ece_info"] == pytest.approx(0.4 / 3, abs=ATOL)
    assert s["mce_info"] == pytest.approx(0.2, abs=ATOL)
    # accuracy over every graded answer, the parse failure included: 1 correct of 4
    assert s["n_graded"] == 4 and s["accuracy"] == pytest.approx(1 / 4, abs=ATOL)
    # vs correctness (parsed only): conf .9, .2, .8 / y 1, 0, 0. Brier (.01 + .04 + .64) / 3 = .23;
    # gaps .1 (b9), .2 (b2), .8 (b8): ECE 1.1/3, MCE .8; AUROC: .9 beats .2 and .8 -> 1
    assert s["brier_correct"] == pytest.approx(0.23, abs=ATOL)
    assert s["ece_correct"] == pytest.approx(1.1 / 3, abs=ATOL)
    assert s["mce_correct"] == pytest.approx(0.8, abs=ATOL)
    assert s["auroc_correct"] == pytest.approx(1.0, abs=ATOL)
    assert s["mean_confidence_correct"] == pytest.approx(0.9, abs=ATOL)
    assert s["mean_confidence_incorrect"] == pytest.approx(0.5, abs=ATOL)
    assert [b["count"] for b in s["reliability_correct"]] == [0, 0, 1, 0, 0, 0, 0, 0, 1, 1]


def test_summarize_per_family_hand_computed():
    fam = summarize(RECORDS)["per_family"]
    assert sorted(fam) == ["sentiment", "topic"]
    # topic: X 9 (correct), X 2 (wrong): accuracy .5, Brier (.01 + .04) / 2 = .025, AUROC 1
    assert fam["topic"]["accuracy"] == pytest.approx(0.5, abs=ATOL)
    assert fam["topic"]["brier_correct"] == pytest.approx(0.025, abs=ATOL)
    assert fam["topic"]["auroc_correct"] == pytest.approx(1.0, abs=ATOL)
    # sentiment: 3 records, 2 parsed; the only known correctness is X 8 wrong: accuracy 0, Brier .64
    assert fam["sentiment"]["parse_rate"] == pytest.approx(2 / 3, abs=ATOL)
    assert fam["sentiment"]["accuracy"] == pytest.approx(0.0, abs=ATOL)
    assert fam["sentiment"]["brier_correct"] == pytest.approx(0.64, abs=ATOL)
    assert fam["sentiment"]["auroc_correct"] is None
    assert fam["sentiment"]["mean_confidence_correct"] is None


def test_parse_failures_never_enter_the_calibration_metrics():
    junk = [rec(False, -1, 0.0, False, "topic"), {"parse_ok": False, "confidence": None, "informativeness": 1.0,
                                                 "correct": True, "family": "topic"}]
    base, with_junk = summarize(RECORDS), summarize(RECORDS + junk)
    assert with_junk["n"] == base["n"] + 2
    assert with_junk["parse_rate"] == pytest.approx(4 / 7, abs=ATOL)
    # accuracy grades what was said, format aside: one more wrong and one more right answer
    assert with_junk["n_graded"] == base["n_graded"] + 2
    assert with_junk["accuracy"] == pytest.approx((1 + 1) / (4 + 2), abs=ATOL)
    for key in base:
        if key not in ("n", "parse_rate", "per_family", "n_graded", "accuracy"):
            assert with_junk[key] == base[key], key


def test_summarize_empty_and_all_unparsed_give_none_not_nan():
    for records in ([], [rec(False, None, None, None, "fact")] * 3):
        s = summarize(records)
        json.dumps(s, allow_nan=False)  # no NaN anywhere
        for key in ("mean_confidence", "accuracy", "brier_correct", "ece_correct", "mce_correct", "auroc_correct",
                    "brier_info", "ece_info", "mce_info", "mean_informativeness"):
            assert s[key] is None, key
        assert s["confidence_hist"] == [0] * 11
    assert summarize([])["parse_rate"] is None
    assert summarize([rec(False, None, None, None, "fact")])["parse_rate"] == 0.0


def test_summarize_single_example_and_mappings():
    s = summarize([{"parse_ok": True, "confidence": 10, "informativeness": 1.0, "correct": True, "family": None}])
    assert (s["brier_correct"], s["ece_correct"], s["brier_info"]) == (0.0, 0.0, 0.0)
    assert s["per_family"] == {}
    assert s["confidence_hist"][10] == 1
    assert not any(isinstance(v, float) and math.isnan(v) for v in s.values())


def test_summarize_rejects_a_parsed_record_without_integer_x():
    with pytest.raises(ValueError, match="0..10"):
        summarize([rec(True, 0.7, 1.0, True, None)])
    with pytest.raises(ValueError, match="0..10"):
        summarize([rec(True, 11, 1.0, True, None)])


def test_within_family_auroc_is_chance_when_confidence_only_tracks_the_family():
    # "easy" says X 9 on every item (3 right, 1 wrong), "hard" X 2 on every item (1 right, 3 wrong).
    records = ([rec(True, 9, 1.0, c, "easy") for c in (True, True, True, False)]
               + [rec(True, 2, 0.0, c, "hard") for c in (True, False, False, False)])
    s = summarize(records)
    # global: positives .9 .9 .9 .2, negatives .9 .2 .2 .2. Pairs (16): a .9 positive beats the 3 .2
    # negatives and ties the .9 one (3 x 3.5); the .2 positive ties 3 negatives and loses 1 (1.5): 12/16
    assert s["auroc_correct"] == pytest.approx(12 / 16, abs=ATOL)
    # within a family every confidence ties: AUROC 1/2 in each, mean 1/2, over 2 families
    assert s["auroc_correct_within_family"] == pytest.approx(0.5, abs=ATOL)
    assert s["n_families_auroc"] == 2
    assert s["per_family"]["easy"]["auroc_correct_within_family"] == pytest.approx(0.5, abs=ATOL)


def test_within_family_auroc_hand_computed_and_one_class_families_left_out():
    records = [rec(True, 9, 1.0, True, "a"), rec(True, 3, 0.0, False, "a"),  # a: AUROC 1
               rec(True, 4, 1.0, True, "b"), rec(True, 6, 0.0, False, "b"), rec(True, 4, 0.0, False, "b"),
               rec(True, 8, 1.0, True, "c"),  # c: all right, no AUROC
               rec(False, None, None, False, "c")]  # a parse failure never enters it
    s = summarize(records)
    # b: the positive .4 vs negatives .6 (loses) and .4 (ties): (0 + 1/2) / 2 = 1/4. Mean over a, b: 5/8
    assert s["auroc_correct_within_family"] == pytest.approx((1 + 0.25) / 2, abs=ATOL)
    assert s["n_families_auroc"] == 2
    assert auroc_within_groups([0.9, 0.3, 0.4, 0.6, 0.4, 0.8], [1, 0, 1, 0, 0, 1], "aabbbc") == (0.625, 2)
    assert auroc_within_groups([0.5], [True], ["a"]) == (None, 0)
    with pytest.raises(ValueError, match="differ in length"):
        auroc_within_groups([0.5, 0.6], [True, False], ["a"])


def test_ece_target_is_the_ece_against_the_rewards_own_target():
    by_info, by_correct, none = (summarize(RECORDS, t) for t in ("informativeness", "correctness", None))
    assert by_info["ece_target"] == pytest.approx(0.4 / 3, abs=ATOL) and by_info["target"] == "informativeness"
    assert by_correct["ece_target"] == pytest.approx(1.1 / 3, abs=ATOL) and by_correct["target"] == "correctness"
    assert by_correct["per_family"]["topic"]["ece_target"] == by_correct["per_family"]["topic"]["ece_correct"]
    assert none["ece_target"] is None
    with pytest.raises(ValueError, match="target must be one of"):
        summarize(RECORDS, "accuracy")
