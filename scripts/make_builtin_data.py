"""Write the built-in training and held-out sets from the material in src/grpo_ao/resources/builtin_data/.

    python scripts/make_builtin_data.py           # writes src/grpo_ao/resources/builtin_{train,heldout}.jsonl
    python scripts/make_builtin_data.py --check   # exit 1 when the shipped files differ from what it would write

Deterministic: one `random.Random(SEED)` draws everything, so re-running gives identical bytes.

Contexts, two kinds (docs/data.md has the counts):
- composed, in English, French, German and Spanish: one sentence, or two with the same topic, sentiment and
  tense; a sentence is subject (singular or plural, with an optional modifier) + predicate (past, present or
  future; positive, negative or neutral). Labels: language and tense always, topic unless the subject is an
  "other" one, sentiment unless the predicate is neutral, number (of the subject) for one-sentence contexts;
- scenes, in the same four languages: people doing everyday things ("The carpenters will fix the broken
  gate."), one sentence or two in the same tense, labelled language, tense and (one sentence) number;
- facts, in English: one world-knowledge statement, true or false (`facts.json`).
Every sentence is used by at most one context, so no two contexts share a sentence; held-out contexts (and
their fact items) are drawn first. No sentence equals a sentence of builtin_eval.jsonl, and none shares half
of its words with an eval text (Jaccard >= 0.5 is rejected). builtin_eval.jsonl itself is not written here:
it is fixed (a test checks its sha256).

Questions (`questions.json`): for every family a context is labelled with, one yes/no question per label value
(answer "Yes" for the context's own value) and one open question (answer: the value). Training rows ask each
in one random "seen" phrasing; held-out rows ask each twice, in a seen and in an unseen phrasing, marked with
"phrasing". We do not balance Yes/No here: the sampler of the recipe that wants balance does it.
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

SEED = 0
OUT_DIR = Path(__file__).resolve().parents[1] / "src" / "grpo_ao" / "resources"
DATA_DIR = OUT_DIR / "builtin_data"
LANGUAGE_FILES = ("en.json", "fr.json", "de.json", "es.json")
FAMILY_ORDER = ("topic", "sentiment", "language", "tense", "number", "fact")
TENSES = ("past", "present", "future")
NUMBERS = ("singular", "plural")
SENTIMENT_SLOTS = ("positive", "negative", "positive", "negative", "neutral")  # 2 : 2 : 1
COMPOSED_PER_LANGUAGE = {"train": 640, "heldout": 70}
SCENES_PER_LANGUAGE = {"train": 120, "heldout": 12}
FACT_HELDOUT_SHARE = 0.12  # of each relation's items (at least one)
MODIFIER_SHARE = 0.6  # of subjects that get a modifier
CLAIM_SHARE = {"topic": 1.0, "sentiment": 0.6, "language": 0.4, "tense": 0.5, "number": 1.0}
"""Share of composed contexts whose true label of a family is claimed (asked about): keeps the files small."""
SCENE_CLAIM_SHARE = {"language": 0.5, "tense": 1.0, "number": 1.0}
MIN_WORDS = 6  # of a composed context
MAX_JACCARD = 0.5  # a sentence sharing this share of its words with an eval text is rejected


def load(name: str) -> dict:
    return json.loads((DATA_DIR / name).read_text(encoding="utf-8"))


def sentences_of(text: str) -> list[str]:
    """Sentences split after . ! ? (the split the held-out tests use)."""
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def word_set(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"[a-z]+", text.lower()))


class SentenceGuard:
    """Accepts a sentence once: never an eval sentence, never near an eval text, never reused."""

    def __init__(self, eval_contexts: list[str]) -> None:
        self.used = {s for c in eval_contexts for s in sentences_of(c)}
        self.eval_words = [word_set(c) for c in eval_contexts]

    def take(self, sentence: str) -> bool:
        words = word_set(sentence)
        if sentence in self.used or any(len(words & e) / len(words | e) >= MAX_JACCARD for e in self.eval_words):
            return False
        self.used.add(sentence)
        return True


def capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def compose_sentence(rng: random.Random, subjects: list[str], predicates: list[str], modifiers: list[str],
                     tense: str, number: str, avoid: set[str]) -> tuple[str, str, str]:
    """(sentence, subject entry, predicate entry); the subject and predicate are not in `avoid`."""
    subject = rng.choice([s for s in subjects if s not in avoid])
    predicate = rng.choice([p for p in predicates if p not in avoid])
    noun = subject.split("|")[NUMBERS.index(number)]
    if modifiers and rng.random() < MODIFIER_SHARE:
        noun += " " + rng.choice(modifiers)
    verb = predicate.split("|")[2 * TENSES.index(tense) + NUMBERS.index(number)]
    return capitalize(f"{noun} {verb}."), subject, predicate


def draw_sentences(rng: random.Random, subjects: list[str], predicates: list[str], modifiers: list[str],
                   tense: str, n_sentences: int, guard: SentenceGuard) -> tuple[list[str], list[str]]:
    """(sentences, their subjects' numbers): distinct subjects and predicates, >= MIN_WORDS words in all."""
    while True:
        avoid: set[str] = set()
        numbers, parts = [], []
        for _ in range(n_sentences):
            number = rng.choice(NUMBERS)
            sentence, subject, predicate = compose_sentence(rng, subjects, predicates, modifiers, tense, number,
                                                            avoid)
            avoid |= {subject, predicate}
            numbers.append(number)
            parts.append(sentence)
        long_enough = sum(len(p.split()) for p in parts) >= MIN_WORDS
        if long_enough and len(set(parts)) == len(parts) and all(guard.take(s) for s in parts):
            return parts, numbers


def claimed(rng: random.Random, true: dict[str, str], shares: dict[str, float]) -> dict[str, str]:
    """The labels a context is asked about: each true one with its share; at least one (the language)."""
    return {f: v for f, v in true.items() if rng.random() < shares[f]} or {"language": true["language"]}


def composed_contexts(rng: random.Random, lang: dict, count: int, guard: SentenceGuard) -> list[dict]:
    """`count` contexts of one language. Topic (11 with "other"), sentiment slot (5), tense (3) and length (2)
    each cycle with their own period, so every prefix is balanced per factor and 330 in a row cover every
    combination once (the periods are coprime)."""
    topics, slots, tenses = list(lang["subjects"]), list(SENTIMENT_SLOTS), list(TENSES)
    for factor in (topics, slots, tenses):
        rng.shuffle(factor)
    out = []
    for i in range(count):
        topic, sentiment, tense, n_sentences = (topics[i % len(topics)], slots[i % len(slots)],
                                                tenses[i % len(tenses)], 1 + i % 2)
        parts, numbers = draw_sentences(rng, lang["subjects"][topic], lang["predicates"][sentiment],
                                        lang["modifiers"][topic], tense, n_sentences, guard)
        true = {"topic": topic, "sentiment": sentiment, "language": lang["language"], "tense": tense,
                "number": numbers[0]}
        if topic == "other":
            del true["topic"]
        if sentiment == "neutral":
            del true["sentiment"]
        if n_sentences > 1:  # "the subject" of a two-sentence text is not one thing
            del true["number"]
        labels = claimed(rng, true, CLAIM_SHARE)
        out.append({"context": " ".join(parts), "labels": labels})
    return out


def scene_contexts(rng: random.Random, lang: dict, count: int, guard: SentenceGuard) -> list[dict]:
    """`count` contexts of people doing everyday things (no topic, no sentiment): tense and length cycle."""
    tenses = list(TENSES)
    rng.shuffle(tenses)
    out = []
    for i in range(count):
        tense, n_sentences = tenses[i % len(tenses)], 1 + (i // len(tenses)) % 2
        parts, numbers = draw_sentences(rng, lang["scenes"]["subjects"], lang["scenes"]["predicates"], [], tense,
                                        n_sentences, guard)
        true = {"language": lang["language"], "tense": tense} | ({"number": numbers[0]} if n_sentences == 1 else {})
        out.append({"context": " ".join(parts), "labels": claimed(rng, true, SCENE_CLAIM_SHARE)})
    return out


def fact_contexts(rng: random.Random, facts: dict, guard: SentenceGuard) -> dict[str, list[dict]]:
    """Split -> one-sentence fact contexts: per item its true sentence and one false one (another object)."""
    out: dict[str, list[dict]] = {"train": [], "heldout": []}
    for relation in facts["relations"]:
        items = list(relation["items"])
        rng.shuffle(items)
        n_held = max(1, round(FACT_HELDOUT_SHARE * len(items)))
        for j, (subject, obj) in enumerate(items):
            split = "heldout" if j < n_held else "train"
            wrong = rng.choice([o for o in relation["objects"] if o != obj])
            for value, o in (("true", obj), ("false", wrong)):
                sentence = capitalize(relation["template"].format(s=subject, o=o))
                if guard.take(sentence):
                    out[split].append({"context": sentence, "labels": {"fact": value}})
    return out


def render_question(phrasing: dict, family: dict, value: str) -> str:
    label = phrasing.get("labels", {}).get(value) or family["label_phrases"].get(value, value)
    return phrasing["text"].format(label=label)


def questions_for(rng: random.Random, labels: dict[str, str], families: dict, splits: tuple[str, ...]) -> list[dict]:
    """For each labelled family: one yes/no question per value, then the open question, per phrasing split."""
    out = []
    for name in FAMILY_ORDER:
        if name not in labels:
            continue
        family, truth = families[name], labels[name]
        for split in splits:
            yes_no = [p for p in family["yes_no"] if p["split"] == split]
            opened = [p for p in family["open"] if p["split"] == split]
            asked = [(render_question(rng.choice(yes_no), family, v), "Yes" if v == truth else "No")
                     for v in family["values"]]
            asked.append((rng.choice(opened)["text"], truth))
            for question, answer in asked:
                q = {"question": question, "answer": answer, "family": name}
                if len(splits) > 1:
                    q["phrasing"] = split
                out.append(q)
    return out


def build_all() -> dict[str, str]:
    """File name -> JSONL text of the training and held-out sets."""
    rng = random.Random(SEED)
    families = load("questions.json")["families"]
    eval_rows = [json.loads(line) for line in (OUT_DIR / "builtin_eval.jsonl").read_text(encoding="utf-8").splitlines()]
    guard = SentenceGuard([row["context"] for row in eval_rows])
    contexts = fact_contexts(rng, load("facts.json"), guard)
    for split in ("heldout", "train"):  # held-out first: training never takes one of its sentences
        for name in LANGUAGE_FILES:
            lang = load(name)
            contexts[split] += composed_contexts(rng, lang, COMPOSED_PER_LANGUAGE[split], guard)
            contexts[split] += scene_contexts(rng, lang, SCENES_PER_LANGUAGE[split], guard)
    files = {}
    for split, prefix, phrasings in (("train", "train", ("seen",)), ("heldout", "heldout", ("seen", "unseen"))):
        items = contexts[split]
        rng.shuffle(items)
        rows = [{"id": f"{prefix}-{i:05d}", "context": c["context"], "labels": c["labels"],
                 "questions": questions_for(rng, c["labels"], families, phrasings)} for i, c in enumerate(items)]
        files[f"builtin_{split}.jsonl"] = "".join(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n"
                                                  for row in rows)
    return files


def main(argv: list[str]) -> int:
    """Write the files, or with --check exit 1 when the shipped files differ from what would be written."""
    stale = []
    for name, text in build_all().items():
        path = OUT_DIR / name
        if "--check" in argv:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
            continue
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path} ({text.count(chr(10))} rows, {len(text.encode()) / 1e6:.2f} MB)")
    if stale:
        print(f"out of date: {stale}; run python scripts/make_builtin_data.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
