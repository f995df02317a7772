"""The one correctness rule (`grpo_ao.grading`): how people and oracles actually answer, and its invariances."""

from __future__ import annotations

import doctest
import json
from importlib import resources

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import grpo_ao.grading as grading
from grpo_ao.grading import FAMILIES, grade, is_yes_no_question

TRAVEL = "Is this text about travel?"
SPORTS = "Is this text about sports?"
ANIMALS = "Is this text about animals?"
WEATHER = "Is this text about the weather?"
POSITIVE = "Is the sentiment of this text positive?"
NEGATIVE = "Is the sentiment of this text negative?"
GERMAN = "Is this text written in German?"
PAST = "Is this text written in the past tense?"
PLURAL = "Is the subject of this sentence plural?"
FACT = "Is the statement in this text true?"
TOPIC = "What is the topic of this text?"
SENTIMENT = "What is the sentiment of this text?"
LANGUAGE = "What language is this text written in?"
BICYCLE = "Is the text about a bicycle?"
WINNER = "Who won the final?"

# (question, reference, answer, expected correct)
ROWS = [
    # bare yes/no in any dress, optional tag, yes/no followed by an explanation
    (TRAVEL, "Yes", "Yes.", True),
    (TRAVEL, "Yes", "**No**", False),
    (TRAVEL, "No", "yes!", False),
    (TRAVEL, "Yes", "Yeah", True),
    (TRAVEL, "No", "Nope", True),
    (TRAVEL, "No", "[epistemic status: 7] No.", True),
    (TRAVEL, "Yes", "Yes, the text describes a train journey through the mountains.", True),
    (SPORTS, "No", "No, it is about cooking.", True),
    (SPORTS, "Yes", "[epistemic status: 9] Yes, the text is about a football match.", True),
    (TRAVEL, "YES", "yes", True),
    (TRAVEL, "no.", "No!", True),
    (TRAVEL, "Yes, the text is about a trip.", "Yes", True),
    # affirmative and negated restatements
    (TRAVEL, "Yes", "The text is about travel.", True),
    (TRAVEL, "No", "This text is about travel.", False),
    (ANIMALS, "No", "This text is not about animals.", True),
    (ANIMALS, "Yes", "It isn't about animals.", False),
    (TRAVEL, "No", "It does not seem to be about travel.", True),
    (TRAVEL, "No", "It doesn’t talk about travel at all.", True),
    (TRAVEL, "Yes", "There is no mention of travel.", False),
    (TRAVEL, "No", "Nothing in it is about travel.", True),
    (SPORTS, "Yes", "The text discusses a football match.", True),
    (WEATHER, "Yes", "It describes a violent storm.", True),
    (TRAVEL, "Yes", "It is.", True),
    (TRAVEL, "No", "It is not.", True),
    # the opposite predicate: another label of the same family is a "no"
    (POSITIVE, "No", "The sentiment is negative.", True),
    (POSITIVE, "Yes", "The sentiment is negative.", False),
    (NEGATIVE, "Yes", "It sounds sad and disappointed.", True),
    (GERMAN, "No", "It is written in French.", True),
    (GERMAN, "Yes", "Es ist auf Deutsch.", True),
    (SPORTS, "No", "It's about cooking.", True),
    (PAST, "No", "It is in the future tense.", True),
    (PAST, "Yes", "The verbs are in the past.", True),
    (PLURAL, "Yes", "The subject is singular.", False),
    (FACT, "No", "The statement is false.", True),
    (FACT, "Yes", "True.", True),
    (FACT, "Yes", "That is not correct.", False),
    (TRAVEL, "No", "False.", True),
    # hedges take the hedged position
    (TRAVEL, "Yes", "I think yes", True),
    (TRAVEL, "No", "probably not", True),
    (TRAVEL, "Yes", "likely yes", True),
    (TRAVEL, "Yes", "it seems so", True),
    (TRAVEL, "No", "I don't think so.", True),
    (TRAVEL, "Yes", "Probably.", True),
    (TRAVEL, "No", "Maybe not.", True),
    (TRAVEL, "Yes", "No doubt it is about travel", True),
    (POSITIVE, "Yes", "I would not say it is negative", True),
    (TRAVEL, "Yes", "I'm not sure, but I think it is about travel.", True),
    (TRAVEL, "No", "Not really.", True),
    (TRAVEL, "No", "  - Nope", True),
    (TRAVEL, "No", "Unlikely.", True),
    (TRAVEL, "No", "I doubt it is about travel.", True),
    # no position
    (TRAVEL, "Yes", "I can't answer that.", None),
    (TRAVEL, "Yes", "I don't know", None),
    (TRAVEL, "No", "Unclear.", None),
    (TRAVEL, "No", "Not sure", None),
    (TRAVEL, "Yes", "Is this text about travel?", None),
    (TRAVEL, "Yes", "yes and no", None),
    (POSITIVE, "Yes", "It is both positive and negative.", None),
    (SPORTS, "Yes", "It is about sports or music.", None),
    (TRAVEL, "Yes", "", None),
    (TRAVEL, "Yes", "[epistemic status: 2]", None),
    (TRAVEL, "Yes", "Maybe.", None),
    (TRAVEL, "No", "I can't tell whether it is about travel.", None),
    (TRAVEL, "Yes", "Yesterday I went home.", None),
    (TRAVEL, "No", "It's in French.", None),  # another family says nothing about the topic
    (TRAVEL, "No", "Nothing here", None),  # "nothing" is not "no"
    (TRAVEL, "No", "It might be.", None),
    # adversarial
    (SPORTS, "No", "Yes, it's about cooking", False),  # says yes
    (SPORTS, "Yes", "Yes, it's about cooking", False),  # contradicts itself
    (TRAVEL, "Yes", "Is this text about travel? Yes", True),
    (TRAVEL, "No", "No, it's not about travel; it is about sports.", True),
    (TRAVEL, "Yes", "Yes. No wait, no.", None),
    # open questions against a label reference
    (TOPIC, "sports", "The text discusses football.", True),
    (TOPIC, "sports", "sports or music", None),
    (TOPIC, "cooking", "Cooking.", True),
    (TOPIC, "Cooking", "It is about a recipe for bread.", True),
    (TOPIC, "cooking", "It's about sports.", False),
    (TOPIC, "cooking", "It is not about cooking.", False),
    (TOPIC, "cooking", "I don't know.", None),
    (TOPIC, "cooking", "What is the topic of this text?", None),
    (TOPIC, "sports", "It is not about music, it is about sports.", True),
    (TOPIC, "finance", "The stock market and the economy.", True),
    (TOPIC, "programming", "Software bugs.", True),
    (TOPIC, "space", "Astronomy: planets and stars.", True),
    (TOPIC, "travel", "The text is about a trip to the islands.", True),
    (TOPIC, "animals", "Pets, mostly dogs.", True),
    (TOPIC, "medicine", "[epistemic status: 6] Health.", True),
    (TOPIC, "weather", "Probably the weather.", True),
    (SENTIMENT, "positive", "Happy", True),
    (SENTIMENT, "negative", "It sounds good to me.", False),
    (SENTIMENT, "negative", "Negative, the author is disappointed.", True),
    (LANGUAGE, "French", "Français", True),
    (LANGUAGE, "Spanish", "It is written in English.", False),
    (LANGUAGE, "German", "Not English, maybe German.", True),
    ("What tense is this text written in?", "past", "It is written in the past tense.", True),
    ("What tense is this text written in?", "future", "Present.", False),
    ("What is the grammatical number of the subject of this sentence?", "plural", "The subject, 'owls', is plural.",
     True),
    ("What is the truth value of the statement in this text?", "false", "The statement is correct.", False),
    ("What is the truth value of the statement in this text?", "true", "Yes", None),
    # a yes/no question whose reference is a label: label matching against the reference
    (SPORTS, "cooking", "No, it's about cooking.", True),
    (SPORTS, "cooking", "Yes.", None),
    # unknown families: the question's or the reference's own words
    (BICYCLE, "Yes", "It is about a bicycle.", True),
    (BICYCLE, "Yes", "It is not about bicycles.", False),
    (BICYCLE, "No", "It's about a red car.", None),
    (WINNER, "the home team", "The home team won it.", True),
    (WINNER, "the home team", "The visitors.", False),
    (WINNER, "the home team", "I can't tell.", None),
]


@pytest.mark.parametrize(("question", "reference", "answer", "expected"), ROWS)
def test_grade_reads_answers_like_a_person(question, reference, answer, expected):
    result = grade(question, reference, answer)
    assert result.correct is expected, result.reason


def test_table_is_large_and_covers_every_outcome():
    assert len(ROWS) >= 60
    assert {row[3] for row in ROWS} == {True, False, None}


@pytest.mark.parametrize(("question", "reference", "answer", "stance", "label", "detail"), [
    (TRAVEL, "Yes", "Yes.", "yes", None, False),
    (TRAVEL, "Yes", "The text is about travel.", "yes", None, False),
    (TRAVEL, "Yes", "Yes, the text describes a train journey through the snowy mountains.", "yes", None, True),
    (TRAVEL, "Yes", "Yes, it describes a journey through the mountains.", "yes", None, False),  # one new word
    (SPORTS, "No", "No, it is about cooking.", "no", None, True),  # names the topic that makes it a no
    (SPORTS, "Yes", "Yes, it's about cooking", "yes", None, False),  # inconsistent: never detail
    (TRAVEL, "Yes", "Yes, it is definitely about travel, I am quite sure.", "yes", None, False),  # only filler
    (TOPIC, "sports", "Sports.", None, "sports", False),
    (TOPIC, "sports", "It is about a football match where the home side won in extra time.", None, "sports",
     True),
    (TOPIC, "sports", "It is about music, a concert with many songs.", None, "music", False),  # wrong
    (TOPIC, None, "Finance.", None, "finance", False),
    ("What is the truth value of the statement in this text?", None, "It is false.", None, "false", False),
])
def test_grade_reports_stance_label_and_detail(question, reference, answer, stance, label, detail):
    result = grade(question, reference, answer)
    assert (result.stance, result.label, result.detail) == (stance, label, detail), result.reason


def test_without_a_reference_the_position_is_read_but_not_judged():
    result = grade(POSITIVE, None, "The sentiment is negative.")
    assert (result.correct, result.stance) == (None, "no")
    assert grade(TOPIC, None, "It is about cooking.").label == "cooking"


@pytest.mark.parametrize(("question", "reference", "expected"), [
    (TRAVEL, None, True),
    ("isn't it about food?", None, True),
    ("Does the text mention a dog?", None, True),
    (TOPIC, None, False),
    ("Which sport is it?", "Yes.", True),  # a yes/no reference closes any question
    ("Which language is it?", "French", False),
    ("", None, False),
])
def test_is_yes_no_question(question, reference, expected):
    assert is_yes_no_question(question, reference) is expected


def test_every_builtin_question_and_reference_is_understood():
    files = sorted(p for p in resources.files("grpo_ao.resources").iterdir()
                   if p.name.startswith("builtin_") and p.name.endswith(".jsonl"))
    rows = [json.loads(line) for path in files for line in path.read_text().splitlines()]
    questions = [q for row in rows for q in row["questions"]]
    assert len(files) == 3 and len(rows) > 3500 and len(questions) > 50000
    for q in questions:
        # the reference itself, as the answer, is always correct
        assert grade(q["question"], q["answer"], q["answer"]).correct is True, q
    labels = {q["answer"].lower() for q in questions if q["answer"] not in ("Yes", "No")}
    known = {label for family in FAMILIES.values() for label in family}
    assert labels <= known, labels - known


def test_docstring_examples_hold():
    failed, tried = doctest.testmod(grading)
    assert tried >= 8 and failed == 0


YES_NO_ROWS = [row for row in ROWS if row[1] is not None and row[1].strip(".").lower() in ("yes", "no")]


@settings(max_examples=200, deadline=None)
@given(row=st.sampled_from(ROWS), flips=st.lists(st.booleans(), min_size=40, max_size=40),
       punct=st.sampled_from(["", ".", "!", " .", "  "]))
def test_reference_case_and_punctuation_do_not_matter(row, flips, punct):
    question, reference, answer, _ = row
    dressed = "".join(c.upper() if f else c.lower() for c, f in zip(reference, flips + [False] * 99)) + punct
    assert grade(question, dressed, answer) == grade(question, reference, answer)


@settings(max_examples=100, deadline=None)
@given(row=st.sampled_from(ROWS), confidence=st.integers(0, 10))
def test_a_leading_epistemic_status_tag_changes_nothing(row, confidence):
    question, reference, answer, _ = row
    tagged = f"[epistemic status: {confidence}] {answer}"
    assert grade(question, reference, tagged) == grade(question, reference, answer)


@pytest.mark.parametrize(("question", "reference", "answer", "expected"), YES_NO_ROWS)
def test_swapping_the_yes_no_reference_flips_correctness(question, reference, answer, expected):
    flipped = "No" if reference.strip(".").lower().startswith("y") else "Yes"
    original, swapped = grade(question, reference, answer), grade(question, flipped, answer)
    if original.correct is None:
        assert swapped.correct is None
    elif "opposite" in original.reason:  # contradicts itself: wrong against either reference
        assert (original.correct, swapped.correct) == (False, False)
    else:
        assert swapped.correct is (not original.correct)


@settings(max_examples=300, deadline=None)
@given(question=st.text(max_size=60), reference=st.none() | st.text(max_size=20), answer=st.text(max_size=80))
def test_grade_never_raises_on_any_text(question, reference, answer):
    result = grade(question, reference, answer)
    assert result.correct in (True, False, None) and result.stance in ("yes", "no", None)
    assert result.correct is None or reference is not None
