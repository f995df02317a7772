"""The counterfactual control: each item's donor context really answers the item's question differently."""

import json
from importlib import resources

import pytest

from grpo_ao.controls import answer_key, counterfactual_donors
from grpo_ao.data import DataConfig, load_examples
from grpo_ao.grading import is_yes_no_question


def _items(examples):
    rows = []
    for g, ex in enumerate(examples):
        for qa in ex.qas:
            rows.append((g, qa.question, qa.reference, qa.family, ex.label_map, (50, 1 + len(rows) % 3)))
    return rows


def _truth(labels: dict, question: str, reference: str, family: str, own: dict) -> str:
    """What a context with `labels` answers, from the labels alone (the test's own reading of the question)."""
    if not is_yes_no_question(question, reference):
        return answer_key(labels[family])
    asked = own[family] if answer_key(reference) == "yes" else None
    if asked is None:  # a "No" question: the label it asks about is named in it
        values = {"topic": ["travel", "programming", "weather", "cooking", "music", "medicine", "animals", "finance",
                            "sports", "space"], "sentiment": ["positive", "negative"], "fact": ["true", "false"],
                  "language": ["English", "French", "German", "Spanish"], "tense": ["past", "present", "future"],
                  "number": ["singular", "plural"]}[family]
        asked = next(v for v in values if v.lower() in question.lower())
    return "yes" if labels[family] == asked else "no"


def test_counterfactual_donor_answers_the_same_question_differently_on_the_builtin_eval_labels():
    examples = load_examples(DataConfig(source="builtin_eval"))
    rows = _items(examples)
    donors = counterfactual_donors(
        [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows],
        [r[4] for r in rows], [r[5] for r in rows], seed=0)
    assert len(rows) == 186 + sum(len(ex.qas) - 1 for ex in examples)
    found = 0
    for (g, q, ref, fam, labels, _), d in zip(rows, donors, strict=True):
        if d is None:
            continue
        found += 1
        donor_group, donor_labels = rows[d][0], rows[d][4]
        assert donor_group != g
        assert _truth(donor_labels, q, ref, fam, labels) != answer_key(ref), (q, ref, labels, donor_labels)
    assert found == len(rows)  # every built-in eval item has a counterfactual donor


def test_counterfactual_donors_prefer_the_same_layout_and_spread_contexts():
    groups = ["a", "b", "c", "d"]
    donors = counterfactual_donors(groups, ["Is it positive?"] * 4, ["Yes", "No", "Yes", "No"], ["sentiment"] * 4,
                                   [{"sentiment": s} for s in ("positive", "negative", "positive", "negative")],
                                   [1, 1, 2, 2], seed=3)
    # a's only same-layout item with the other answer is b, c's is d (and back)
    assert donors == [1, 0, 3, 2]


def test_counterfactual_open_question_takes_a_context_with_another_label():
    donors = counterfactual_donors([0, 1, 2], ["What is the topic?"] * 3, ["music", "music", "space"],
                                   ["topic"] * 3, [{"topic": "music"}, {"topic": "music"}, {"topic": "space"}],
                                   [0, 0, 0], seed=0)
    assert donors == [2, 2, 0]


def test_counterfactual_no_question_uses_the_label_of_contexts_that_answer_yes():
    # item 0: "about music?" No for a space text; its donor must be a music text (answer Yes),
    # inferred from item 1 (another music text asked the same question)
    donors = counterfactual_donors([0, 1, 2], ["Is it about music?", "Is it about music?", "Is it about space?"],
                                   ["No", "Yes", "Yes"], ["topic"] * 3,
                                   [{"topic": "space"}, {"topic": "music"}, {"topic": "space"}], [0, 0, 0], seed=0)
    assert donors[0] == 1
    assert donors[1] in (0, 2)  # a space text answers "about music?" No
    assert donors[2] == 1       # "about space?" Yes -> a text with another topic


def test_counterfactual_gives_none_without_labels_or_a_known_answer():
    donors = counterfactual_donors([0, 1], ["Is it about music?", "Is it about cats?"], ["No", "Yes"],
                                   [None, None], [None, None], [0, 0], seed=0)
    assert donors == [None, None]


@pytest.mark.parametrize("seed", [0, 1])
def test_counterfactual_donors_are_deterministic(seed):
    lines = resources.files("grpo_ao").joinpath("resources", "builtin_eval.jsonl").read_text().splitlines()
    rows = _items(load_examples(DataConfig(source="builtin_eval")))
    args = ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows],
            [r[4] for r in rows], [r[5] for r in rows])
    assert counterfactual_donors(*args, seed=seed) == counterfactual_donors(*args, seed=seed)
    assert len(lines) == 186 and json.loads(lines[0])["labels"]
