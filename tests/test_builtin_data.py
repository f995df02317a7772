"""The shipped data sets: builtin (train), builtin_heldout and builtin_eval, and the script that writes them."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from grpo_ao.data import DataConfig, builtin_path, load_examples
from grpo_ao.grading import grade, is_yes_no_question
from script_module import load_script

ROOT = Path(__file__).resolve().parents[1]
MATERIAL = ROOT / "src" / "grpo_ao" / "resources" / "builtin_data"
EVAL_SHA256 = "4cffc4708c7bd1552cb601b152b29cda5c231c0f69e0c526e2e10d19dd291e99"
YES_NO = {"Yes", "No"}
FAMILIES = json.loads((MATERIAL / "questions.json").read_text(encoding="utf-8"))["families"]
VALUES = {name: family["values"] for name, family in FAMILIES.items()}


def rows(source: str) -> list[dict]:
    return [json.loads(line) for line in builtin_path(source).read_text(encoding="utf-8").splitlines()]


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def phrasings(split: str) -> dict[str, tuple[set[str], set[str]]]:
    """family -> (yes/no questions, open questions) of one phrasing split, every label value rendered."""
    out = {}
    for name, family in FAMILIES.items():
        yes_no = {p["text"].format(label=p.get("labels", {}).get(v) or family["label_phrases"].get(v, v))
                  for p in family["yes_no"] if p["split"] == split for v in family["values"]}
        out[name] = (yes_no, {p["text"] for p in family["open"] if p["split"] == split})
    return out


SEEN, UNSEEN = phrasings("seen"), phrasings("unseen")
TRAIN, HELDOUT, EVAL = rows("builtin"), rows("builtin_heldout"), rows("builtin_eval")


def test_builtin_eval_is_byte_identical_to_the_reviewed_set():
    assert hashlib.sha256(builtin_path("builtin_eval").read_bytes()).hexdigest() == EVAL_SHA256
    assert len(EVAL) == 186


def test_builtin_train_has_enough_distinct_contexts_balanced_per_label():
    contexts = [r["context"] for r in TRAIN]
    assert len(contexts) == len(set(contexts)) == 3456
    counts = Counter((f, v) for r in TRAIN for f, v in r["labels"].items())
    for family, values in VALUES.items():
        per_value = [counts[(family, v)] for v in values]
        assert min(per_value) >= 200 and max(per_value) <= 1.15 * min(per_value), (family, per_value)
    assert set(counts) == {(f, v) for f, vs in VALUES.items() for v in vs}
    words = sorted(len(c.split()) for c in contexts)
    assert words[0] >= 6 and 10 <= words[len(words) // 2] <= 40 and words[-1] <= 40
    assert all(1 <= len(sentences(c)) <= 2 for c in contexts)


def test_builtin_heldout_covers_every_label_value():
    contexts = [r["context"] for r in HELDOUT]
    assert len(contexts) == len(set(contexts)) == 381
    counts = Counter((f, v) for r in HELDOUT for f, v in r["labels"].items())
    assert min(counts[(f, v)] for f, vs in VALUES.items() for v in vs) >= 15


def expected_questions(labels: dict[str, str]) -> Counter:
    """(family, answer) -> count when each labelled family is asked every value once plus its open question."""
    out = Counter()
    for family, truth in labels.items():
        out[(family, "Yes")] += 1
        out[(family, "No")] += len(VALUES[family]) - 1
        out[(family, truth)] += 1
    return out


def check_expanded(row: dict, questions: list[dict], split: str) -> None:
    """Every value of every labelled family asked once as yes/no (Yes iff it is the label), one open question
    answered by the label, all in `split` phrasings."""
    table = SEEN if split == "seen" else UNSEEN
    assert Counter((q["family"], q["answer"]) for q in questions) == expected_questions(row["labels"]), row["id"]
    for q in questions:
        yes_no, opened = table[q["family"]]
        truth = row["labels"][q["family"]]
        if q["answer"] in YES_NO:
            assert q["question"] in yes_no, q
        else:
            assert q["question"] in opened and q["answer"] == truth, q
    for family in row["labels"]:  # the yes/no questions name each value once, "Yes" for the label
        asked = [q for q in questions if q["family"] == family and q["answer"] in YES_NO]
        assert len({q["question"] for q in asked}) == len(VALUES[family]), row["id"]


def test_every_training_row_asks_each_label_of_its_families_once_in_seen_phrasings():
    for row in TRAIN:
        assert all("phrasing" not in q for q in row["questions"])
        check_expanded(row, row["questions"], "seen")
    assert sum(len(r["questions"]) for r in TRAIN) == 48128


def test_every_heldout_row_asks_each_label_in_a_seen_and_in_an_unseen_phrasing():
    for row in HELDOUT:
        by_phrasing = Counter(q["phrasing"] for q in row["questions"])
        assert by_phrasing["seen"] == by_phrasing["unseen"] == len(row["questions"]) // 2
        for split in ("seen", "unseen"):
            check_expanded(row, [q for q in row["questions"] if q["phrasing"] == split], split)


def test_seen_and_unseen_phrasings_are_disjoint_and_the_eval_wording_is_seen():
    for family in FAMILIES:
        assert not (SEEN[family][0] | SEEN[family][1]) & (UNSEEN[family][0] | UNSEEN[family][1]), family
    eval_questions = {(q["family"], q["question"]) for r in EVAL for q in r["questions"]}
    assert len(eval_questions) == 22  # 10 topics + 2 sentiments + 4 languages + 3 tenses + 2 numbers + 1 fact
    assert all(question in SEEN[family][0] for family, question in eval_questions)


def test_grading_reads_every_phrasing_yes_no_or_open_as_intended():
    checked = 0
    for table in (SEEN, UNSEEN):
        for family, (yes_no, opened) in table.items():
            for q in yes_no:
                assert is_yes_no_question(q, None), q
                for ref, wrong in (("Yes", "No"), ("No", "Yes")):
                    assert grade(q, ref, ref).correct is True and grade(q, ref, wrong).correct is False, q
                checked += 1
            for q in opened:
                assert not is_yes_no_question(q, VALUES[family][0]), q
                for value in VALUES[family]:
                    other = next(v for v in VALUES[family] if v != value)
                    assert grade(q, value, value).correct is True and grade(q, value, other).correct is False, q
                checked += 1
    assert checked == sum(len(vs) * 6 + 5 for vs in VALUES.values())  # 6 yes/no phrasings x values + 5 open


def test_heldout_eval_and_training_share_no_sentence():
    train = {s for r in TRAIN for s in sentences(r["context"])}
    heldout = {s for r in HELDOUT for s in sentences(r["context"])}
    evals = {s for r in EVAL for s in sentences(r["context"])}
    assert (len(train), len(heldout), len(evals)) == (4976, 545, 186)
    assert not train & heldout
    assert not train & evals and not heldout & evals


def test_no_builtin_context_is_a_near_copy_of_an_eval_text():
    # Jaccard overlap of lower-cased word sets; "Rome is the capital of Italy." vs the eval's "Paris is the
    # capital of France." scores 4/8 = 0.5 (a template copy), so every pair must stay below 0.5.
    def words(text):
        return set(re.findall(r"[a-z]+", text.lower()))

    evals = [words(r["context"]) for r in EVAL]
    contexts = [words(r["context"]) for r in TRAIN + HELDOUT]
    assert len(contexts) * len(evals) == (3456 + 381) * 186
    assert max(len(c & e) / len(c | e) for c in contexts for e in evals) < 0.5


def material() -> tuple[dict[str, set], set[str], dict[str, set], set[str]]:
    """Subject forms -> {(topic, number)}, modifiers, predicate forms -> {(sentiment, tense, number)}, languages:
    read from the language files independently of the script (None: a scene's topic and sentiment)."""
    subjects, modifiers, predicates, languages = {}, set(), {}, set()
    for path in sorted(MATERIAL.glob("??.json")):
        lang = json.loads(path.read_text(encoding="utf-8"))
        languages.add(lang["language"])
        modifiers |= {m for ms in lang["modifiers"].values() for m in ms}
        for topic, entries in lang["subjects"].items():
            for entry in entries:
                for number, form in zip(("singular", "plural"), entry.split("|"), strict=True):
                    subjects.setdefault(form[:1].upper() + form[1:], set()).add((topic, number))
        scenes = lang["scenes"]  # people doing everyday things: no topic, no sentiment
        for entry in scenes["subjects"]:
            for number, form in zip(("singular", "plural"), entry.split("|"), strict=True):
                subjects.setdefault(form[:1].upper() + form[1:], set()).add((None, number))
        for sentiment, entries in [*lang["predicates"].items(), (None, scenes["predicates"])]:
            for entry in entries:
                forms = entry.split("|")
                assert len(forms) == 6, entry
                for i, form in enumerate(forms):
                    tense, number = ("past", "present", "future")[i // 2], ("singular", "plural")[i % 2]
                    predicates.setdefault(form, set()).add((sentiment, tense, number))
    return subjects, modifiers, predicates, languages


SUBJECTS, MODIFIERS, PREDICATES, LANGUAGES = material()


def readings(sentence: str) -> list[dict[str, str]]:
    """Every way to read `sentence` as subject [modifier] predicate "." with agreeing numbers."""
    out = []
    body = sentence.removesuffix(".")
    for pred, pred_readings in PREDICATES.items():
        if not body.endswith(" " + pred):
            continue
        head = body[:-len(pred) - 1]
        for subj, subj_readings in SUBJECTS.items():
            if head == subj or (head.startswith(subj + " ") and head[len(subj) + 1:] in MODIFIERS):
                out += [{"topic": topic, "sentiment": sentiment, "tense": tense, "number": number}
                        for topic, number in subj_readings for sentiment, tense, n in pred_readings if n == number]
    return out


def test_every_claimed_label_is_true_of_its_text():
    facts = json.loads((MATERIAL / "facts.json").read_text(encoding="utf-8"))["relations"]
    true_facts = {r["template"].format(s=s, o=o).lower() for r in facts for s, o in r["items"]}
    checked = Counter()
    for row in TRAIN + HELDOUT:
        labels = row["labels"]
        if "fact" in labels:  # one English statement, true exactly when it is a table's own (subject, object)
            assert labels.keys() == {"fact"} and len(sentences(row["context"])) == 1
            assert (row["context"].lower() in true_facts) == (labels["fact"] == "true"), row
            checked["fact"] += 1
            continue
        parsed = [readings(s) for s in sentences(row["context"])]
        assert all(parsed), row
        for family, value in labels.items():
            if family == "language":
                assert value in LANGUAGES
            else:  # every reading of every sentence agrees ("other" subjects, neutral predicates: no label)
                assert all(r[family] == value for rs in parsed for r in rs), (row, parsed)
            checked[family] += 1
        assert "number" not in labels or len(parsed) == 1
    assert set(checked) == set(VALUES) and min(checked.values()) > 400
    assert readings("The soups will delight everyone.") == [
        {"topic": "cooking", "sentiment": "positive", "tense": "future", "number": "plural"}]


@pytest.mark.parametrize("source, n_items", [("builtin", 48128), ("builtin_heldout", 10636), ("builtin_eval", 216)])
def test_builtin_questions_never_contain_the_answer(source, n_items):
    label_words = {v.lower() for vs in VALUES.values() for v in vs}
    checked = 0
    for ex in load_examples(DataConfig(source=source)):
        for qa in ex.qas:
            q = qa.question.lower()
            words = set(re.findall(r"[a-z]+", q))
            assert not words & {"yes", "no", "true", "false"} or qa.family == "fact", qa.question
            assert "answer" not in q and ":" not in q, qa.question
            if qa.reference not in YES_NO:  # open question: must not name the label, nor any other label
                assert not words & label_words, qa.question
            checked += 1
    assert checked == n_items


def test_builtin_eval_has_the_documented_families_and_balanced_answers():
    qas = [qa for ex in load_examples(DataConfig(source="builtin_eval")) for qa in ex.qas]
    assert len(qas) == 216 and all(qa.reference in YES_NO for qa in qas)
    assert Counter(qa.family for qa in qas) == {"topic": 60, "sentiment": 24, "language": 32, "tense": 30,
                                                "number": 30, "fact": 40}
    for family in VALUES:
        answers = Counter(qa.reference for qa in qas if qa.family == family)
        assert answers["Yes"] == answers["No"], family
    assert {qa.question for qa in qas if qa.family == "fact"} == {"Is the statement in this text true?"}


def test_loaded_examples_carry_the_row_labels_and_phrasings():
    held = load_examples(DataConfig(source="builtin_heldout"))
    assert [dict(ex.labels) for ex in held] == [r["labels"] for r in HELDOUT]
    assert Counter(qa.phrasing for ex in held for qa in ex.qas) == {"seen": 5318, "unseen": 5318}


def test_shipped_builtin_files_match_the_generator_script():
    module = load_script("make_builtin_data")
    built = module.build_all()
    assert sorted(built) == ["builtin_heldout.jsonl", "builtin_train.jsonl"]
    assert built == module.build_all()  # deterministic
    for source, name in (("builtin", "builtin_train.jsonl"), ("builtin_heldout", "builtin_heldout.jsonl")):
        assert builtin_path(source).read_text(encoding="utf-8") == built[name], f"rerun the script: {name}"
