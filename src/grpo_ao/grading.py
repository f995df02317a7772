"""The one rule that decides whether an oracle's answer is correct; the offline judge, the reward and the eval call it.

`grade(question, reference, answer)` reads the answer (an optional leading `[epistemic status: X]` tag is
ignored) clause by clause; clauses are split at . , ; : ! ? newlines, dashes and but/however/although/
though/whereas/while. Full rule, with examples: docs/grading.md.

- Yes/no question (reference Yes/No, or the question opens with Is/Are/Does/...; `is_yes_no_question`): the
  stance is read from explicit words ("Yes", "**No**", "Nope", "I think not", "probably yes", "it seems so",
  "It is.") and from restatements of the asked label ("The text is about travel." → yes, "It is not about
  animals." / "does not seem to be about" → no), where naming another label of the same family is a "no"
  ("It's about cooking." to "…about sports?") and denying the complement of a two-sided pair is a "yes"
  ("I would not say it is negative" to "…positive?"). Explicit words win over restatements; an explicit word
  that its own restatement contradicts is wrong ("Yes, it's about cooking" to "…about sports?").
- Open question against a label reference ("cooking", "French"): correct when the reference label or a synonym
  is asserted and no other label of its family is; wrong when another label is asserted alone or the label is
  only negated. A reference outside every family: correct when at least half of its content words are
  asserted.
- No position → `correct=None`: empty, a dodge ("I don't know", "unclear", "yes and no"), an echo of the
  question, "maybe" alone, both a label and its opposite ("sports or music").

We deliberately do not call a model, fuzzy-match, embed or stem beyond one trailing "s": the rule must be
pure, deterministic and readable, and the vocabulary below is the whole of what it knows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# --- vocabulary (data): family -> label -> words that assert it (the label itself first) ---------------------
FAMILIES: dict[str, dict[str, tuple[str, ...]]] = {
    "topic": {
        "cooking": ("cooking", "cook", "cooked", "food", "recipe", "baking", "bake", "cuisine", "culinary", "meal",
                    "dish", "kitchen", "chef"),
        "sports": ("sports", "sport", "sporting", "football", "soccer", "tennis", "basketball", "rugby", "athletics",
                   "athlete", "marathon", "olympics", "cycling", "goalkeeper", "stadium"),
        "programming": ("programming", "code", "coding", "software", "programmer", "developer", "computer",
                        "compiler", "debugging", "bug", "python", "api", "database", "algorithm"),
        "weather": ("weather", "rain", "rainy", "sunny", "sunshine", "storm", "snow", "forecast", "climate",
                    "heatwave", "fog", "hailstorm"),
        "music": ("music", "musical", "song", "album", "concert", "band", "orchestra", "singer", "guitar", "piano",
                  "melody", "jazz", "symphony"),
        "medicine": ("medicine", "medical", "health", "healthcare", "hospital", "doctor", "patient", "disease",
                     "illness", "treatment", "drug", "vaccine", "clinical", "surgery", "medication"),
        "finance": ("finance", "financial", "money", "economy", "economic", "economics", "stock", "bank", "banking",
                    "investment", "investing", "investor", "profit", "mortgage", "budget"),
        "travel": ("travel", "travelling", "traveling", "trip", "tourism", "tourist", "vacation", "holiday",
                   "journey", "flight", "hotel", "sightseeing"),
        "animals": ("animals", "animal", "wildlife", "pet", "dog", "cat", "zoo", "creature", "puppy"),
        "space": ("space", "astronomy", "planet", "astronaut", "galaxy", "universe", "cosmos", "rocket", "nasa",
                  "orbit", "telescope", "spacecraft"),
    },
    "sentiment": {
        "positive": ("positive", "good", "happy", "pleased", "upbeat", "optimistic", "favorable", "favourable",
                     "cheerful", "joyful", "enthusiastic"),
        "negative": ("negative", "bad", "sad", "unhappy", "upset", "pessimistic", "unfavorable", "unfavourable",
                     "angry", "disappointed"),
        "neutral": ("neutral", "mixed"),
    },
    "language": {
        "english": ("english", "anglais", "inglés", "ingles", "englisch"),
        "french": ("french", "français", "francais", "francés", "frances", "französisch", "franzosisch"),
        "spanish": ("spanish", "español", "espanol", "espagnol", "spanisch"),
        "german": ("german", "deutsch", "allemand", "alemán", "aleman"),
    },
    "tense": {"past": ("past", "preterite"), "present": ("present",), "future": ("future",)},
    "number": {"singular": ("singular",), "plural": ("plural",)},
    "fact": {"true": ("true", "correct", "accurate", "factual", "truthful"),
             "false": ("false", "incorrect", "inaccurate", "untrue", "wrong")},
}
"""Label families the data knows. Two labels of one family compete: asserting one denies the others."""
COMPLEMENTS = frozenset({("positive", "negative"), ("true", "false"), ("singular", "plural")})
"""Two-sided pairs: denying one asserts the other ("not negative" to "…positive?" is a yes)."""
FAMILY_CUES = {"topic": "topic", "sentiment": "sentiment", "tone": "sentiment", "mood": "sentiment",
               "language": "language", "tense": "tense", "number": "number", "truth": "fact"}
"""Question words that name the family of an open question when there is no label reference."""

STRICT_YES = frozenset({"yes", "yeah", "yep", "yup", "yea", "ya", "aye"})
STRICT_NO = frozenset({"no", "nope", "nah"})
PURE_YES = STRICT_YES | {"so", "true", "correct", "right", "affirmative", "exactly", "indeed"}
"""Yes when a clause says nothing else ("It is true.", "I think so"); "not" + one of them is a no."""
PURE_NO = STRICT_NO | {"not", "false", "incorrect", "wrong", "negative", "unlikely", "doubt", "doubtful"}
"""No when a clause says nothing else ("That is false."), unless the word is a label of the asked family."""
COMMITTING = frozenset({"probably", "likely", "definitely", "certainly", "absolutely", "surely", "clearly", "sure"})
"""Hedges that lean yes on their own ("Probably."); "maybe", "perhaps", "possibly" alone take no position."""
NEGATORS = STRICT_NO | {"not", "never", "nothing", "none", "neither", "nor", "without", "lacks", "unlikely", "doubt",
                        "doubtful"}
FILLERS = frozenset(
    "i me my we it this that there s is are was were be been would will d am m think believe guess suppose say "
    "feel seems seem appears appear looks look like to the a an answer well oh hmm um ok okay really quite pretty "
    "very fairly rather most more highly almost maybe perhaps possibly might may could can do does did have has "
    "honestly actually final confident reasonably somewhat kind of sort then".split())
"""Words that carry no position: stripped around stance words ("I'd say the answer is no")."""
YES_NO_OPENERS = frozenset(
    "is are am does do did was were can could will would has have had should shall may might must".split())
"""First words of a yes/no question (contractions are expanded first: "Isn't" → "is not")."""
STOPWORDS = FILLERS | COMMITTING | NEGATORS | PURE_YES | frozenset(
    "about text sentence passage statement written writing topic subject language sentiment tense tone "
    "discusses discuss describes describe mentions mention talks talk refers related regarding concerning "
    "focuses deals with of in on for and or from by as at its their his her which what also only some any all "
    "here they them he she you your these those one other through into over under after before between during "
    "where when who how why because just".split())
"""Words that are never content: excluded from `detail` and from reference-word matching."""
DETAIL_MIN_WORDS = 3
"""An answer has detail when it adds at least this many content words that are not in the question."""

_DODGES = re.compile(r"\b(not sure|unsure|uncertain|unclear|not clear|do not know|no idea|no clue|can not "
                     r"(tell|say|answer|determine|know|be determined)|unable to|impossible to|(hard|difficult) to "
                     r"(say|tell)|not enough information|insufficient|no way to|not possible to|not certain|"
                     r"yes and no|yes or no|either way)\b")
_TAG = re.compile(r"^(\s*\[\s*epistemic status:[^\]]*\])+", re.IGNORECASE)
_REWRITES = ((r"\bcan[’']t\b", "can not"), (r"\bwon[’']t\b", "will not"), (r"\bcannot\b", "can not"),
             (r"n[’']t\b", " not"), (r"[’']s\b", " is"), (r"[’']d\b", " would"), (r"[’']m\b", " am"),
             (r"[’']re\b", " are"), (r"[’']ll\b", " will"), (r"[’']ve\b", " have"),
             (r"\b(no|without( a)?) doubts?\b", "certainly"), (r"\bof course\b", "certainly"),
             (r"\bnot at all\b", "not"))
_CLAUSE_END = re.compile(r"([.!?;:,\n]+|\s[-–—]+\s|\*\*)")
_CONJUNCTION = re.compile(r"\b(?:but|however|although|though|whereas|while)\b")
_WORD = re.compile(r"[^\W_]+")
_VOCAB = {w: (family, label) for family, labels in FAMILIES.items() for label, ws in labels.items() for w in ws}
assert len(_VOCAB) == sum(len(ws) for labels in FAMILIES.values() for ws in labels.values()), \
    "a word may assert only one label"


@dataclass(frozen=True)
class Grade:
    """What `grade` read from one answer."""

    correct: bool | None
    """Agrees with the reference; None when there is no reference or the answer takes no position."""
    stance: str | None
    """"yes" / "no" read for a yes/no question; None for open questions or no position."""
    label: str | None
    """The one label asserted to an open question (e.g. "cooking"); None otherwise."""
    reason: str
    """Short human-readable why (goes into the judge's `raw`)."""
    detail: bool
    """Consistent and says more than the bare answer: names the competing label that makes it a "no", or adds
    >= DETAIL_MIN_WORDS content words (not stopwords, not in the question, not synonyms of the label)."""


@dataclass(frozen=True)
class _Clause:
    tokens: list[str]
    asks: bool  # ends in "?" or opens like a question: an echo, not a position
    dodges: bool


def normalize(text: str) -> str:
    """Lowercase, tag removed, contractions expanded, idioms rewritten.

    >>> normalize("[epistemic status: 7] It isn't, no doubt.")
    'it is not, certainly.'
    """
    text = _TAG.sub("", text).strip().lower()
    for pattern, repl in _REWRITES:
        text = re.sub(pattern, repl, text)
    return text


def words(text: str) -> list[str]:
    """Normalized words (letters and digits, accents kept).

    >>> words("**No**, it's about Français!")
    ['no', 'it', 'is', 'about', 'français']
    """
    return _WORD.findall(normalize(text))


def _label(word: str) -> tuple[str, str] | None:
    return _VOCAB.get(word) or (_VOCAB.get(word[:-1]) if word.endswith("s") else None)


def _stance_of(toks: list[str]) -> str | None:
    return "yes" if toks and toks[0] in STRICT_YES else "no" if toks and toks[0] in STRICT_NO else None


def is_yes_no_question(question: str, reference: str | None) -> bool:
    """True when the reference opens with Yes/No, or the question opens with a `YES_NO_OPENERS` word.

    >>> is_yes_no_question("Isn't it about food?", None), is_yes_no_question("What is the topic?", "YES.")
    (True, True)
    >>> is_yes_no_question("Which language is it?", "French")
    False
    """
    q = words(question)
    return _stance_of(words(reference or "")) is not None or (bool(q) and q[0] in YES_NO_OPENERS)


def _clauses(answer: str) -> list[_Clause]:
    parts = _CLAUSE_END.split(normalize(answer))
    out = []
    for text, end in zip(parts[0::2], parts[1::2] + [""], strict=True):
        for piece in _CONJUNCTION.split(text):
            toks = _WORD.findall(piece)
            if toks:
                opens_question = toks[0] in YES_NO_OPENERS and toks[1:2] in (["this"], ["the"], ["it"], ["there"])
                out.append(_Clause(toks, "?" in end or opens_question, bool(_DODGES.search(" ".join(toks)))))
    return out


def _explicit(toks: list[str], family: str | None) -> tuple[str | None, list[str]]:
    """(stance, the words left for restatement) from the clause's explicit yes/no words, else (None, toks)."""
    i = 0
    while i < len(toks) and (toks[i] in FILLERS or toks[i] in COMMITTING):
        i += 1
    if i < len(toks) and toks[i] in STRICT_YES:
        return "yes", toks[i + 1:]
    if i < len(toks) and toks[i] in STRICT_NO:
        return "no", toks[i:]  # keep the "no": it negates what follows ("No mention of travel")
    core = [t for t in toks if t not in FILLERS and t not in COMMITTING]
    if not core:  # "Probably." / "It is." lean yes; "Maybe." takes no position
        affirms = bool(COMMITTING & set(toks)) or bool({"is", "does", "are", "was", "will", "can"} & set(toks)
                                                       and {"it", "this", "that", "they"} & set(toks))
        return ("yes" if affirms else None), []
    pure = [t for t in core if (_label(t) or ("", ""))[0] != family]  # a label of the asked family is restated
    if len(core) == 1 and pure == core:
        return ("yes" if core[0] in PURE_YES else "no" if core[0] in PURE_NO else None), toks
    if core[0] == "not" and len(core) == 2 and pure[-1:] == core[1:] and core[1] in PURE_YES:
        return "no", []
    return None, toks


def _labels(toks: list[str], family: str) -> list[tuple[str, bool]]:
    """(label, negated) for each label of `family` in order; a negator negates the next label only."""
    out, negated = [], False
    for t in toks:
        found = _label(t)
        if t in NEGATORS:
            negated = True
        elif found is not None and found[0] == family:
            out.append((found[1], negated))
            negated = False
    return out


def _restated(toks: list[str], asked: tuple[str, str] | None, keys: set[str]) -> list[tuple[str, str]]:
    """(stance, how) from restatements: the asked label, a competing one, a complement, or a question key word."""
    if asked is None:
        hits = [i for i, t in enumerate(toks) if t in keys or t.rstrip("s") in keys]
        return [("no" if NEGATORS & set(toks[:hits[0]]) else "yes", "key")] if hits else []
    family, label = asked
    out = []
    for found, negated in _labels(toks, family):
        if found == label:
            out.append(("no" if negated else "yes", "asked"))
        elif not negated:
            out.append(("no", "competing"))
        elif (label, found) in COMPLEMENTS or (found, label) in COMPLEMENTS:
            out.append(("yes", "complement"))
    return out


def _content(clauses: list[_Clause], question: str, exclude: tuple[str, str] | None) -> set[str]:
    """Content words of the answer's positions: not stopwords, not in the question, not the label's synonyms."""
    seen = {t.rstrip("s") for t in words(question)}
    return {t for c in clauses for t in c.tokens if t not in STOPWORDS and len(t) > 2
            and t.rstrip("s") not in seen and (exclude is None or _label(t) != exclude)}


def _grade_yes_no(question: str, ref: str | None, clauses: list[_Clause]) -> Grade:
    q = words(question)
    found = {_label(t) for t in q} - {None}
    asked = found.pop() if len(found) == 1 else None
    keys = {t.rstrip("s") for t in q[1:] if t not in STOPWORDS and len(t) > 2} if asked is None else set()
    explicit, restated = set(), []
    for c in clauses:
        said, rest = _explicit(c.tokens, asked[0] if asked else None)
        explicit |= {said} - {None}
        restated += _restated(rest, asked, keys)
    meant = {s for s, _ in restated}
    if len(explicit) > 1:
        return Grade(None, None, None, "says both yes and no", False)
    if not explicit and len(meant) != 1:
        why = "asserts a label and its opposite" if meant else "takes no position"
        return Grade(None, None, None, why, False)
    stance = explicit.pop() if explicit else meant.pop()
    if len(meant) == 1 and stance not in meant:
        return Grade(False if ref else None, stance, None, f"says {stance} but its own words say the opposite",
                     False)
    correct = None if ref is None else stance == ref
    consistent = len(meant) <= 1
    names_other = any(how == "competing" for _, how in restated) and stance == "no"
    detail = consistent and (names_other or len(_content(clauses, question, asked)) >= DETAIL_MIN_WORDS)
    return Grade(correct, stance, None, f"says {stance}" + ("" if ref is None else f", reference {ref}"), detail)


def _grade_words(question: str, ref_words: list[str], clauses: list[_Clause]) -> Grade:
    """Correct when >= half of the reference's content words are asserted (said before any negator)."""
    ref_content = {t.rstrip("s") for t in ref_words if t not in STOPWORDS}
    said = set()
    for c in clauses:
        cut = next((i for i, t in enumerate(c.tokens) if t in NEGATORS), len(c.tokens))
        said |= {t.rstrip("s") for t in c.tokens[:cut] if t not in STOPWORDS}
    if not ref_content or not said:
        return Grade(None, None, None, "takes no position" if not said else "reference has no content words", False)
    recall = len(ref_content & said) / len(ref_content)
    extra = {t for t in _content(clauses, question, None) if t.rstrip("s") not in ref_content}
    return Grade(recall >= 0.5, None, None, f"says {recall:.0%} of the reference's content words",
                 recall >= 0.5 and len(extra) >= DETAIL_MIN_WORDS)


def _grade_open(question: str, reference: str | None, clauses: list[_Clause]) -> Grade:
    ref_words = words(reference or "")
    ref_labels = {_label(t) for t in ref_words} - {None}
    target = ref_labels.pop() if len(ref_labels) == 1 else None
    cue = next((FAMILY_CUES[t] for t in words(question) if t in FAMILY_CUES), None)
    family = target[0] if target else (cue if not ref_words else None)
    if family is None:  # a reference outside every family: match its content words
        return _grade_words(question, ref_words, clauses)
    pairs = [p for c in clauses for p in _labels(c.tokens, family)]
    asserted = {lab for lab, neg in pairs if not neg}
    if len(asserted) > 1:
        return Grade(None, None, None, f"names several {family} labels: {', '.join(sorted(asserted))}", False)
    if not asserted:
        if target and (target[1], True) in pairs:
            return Grade(False, None, None, f"denies {target[1]}", False)
        return Grade(None, None, None, f"names no {family} label", False)
    label = asserted.pop()
    correct = None if target is None else label == target[1]
    detail = bool(correct) and len(_content(clauses, question, (family, label))) >= DETAIL_MIN_WORDS
    return Grade(correct, None, label, f"says {label}" + (f", reference {target[1]}" if target else ""), detail)


def grade(question: str, reference: str | None, answer: str) -> Grade:
    """Read `answer` to `question` and compare it with `reference` (rules in the module docstring).

    Args:
        question: the question asked to the oracle.
        reference: the reference answer ("Yes", "no.", "Cooking", ...), or None when there is none.
        answer: the oracle's answer, with or without its `[epistemic status: X]` tag.

    >>> grade("Is this text about travel?", "Yes", "This text is about travel.").correct
    True
    >>> g = grade("Is the sentiment of this text positive?", "yes.", "[epistemic status: 8] It is negative.")
    >>> g.correct, g.stance, g.detail
    (False, 'no', True)
    >>> grade("What is the topic of this text?", "sports", "The text discusses football.").label
    'sports'
    >>> grade("Is this text about travel?", "No", "I can't tell.").correct is None
    True
    """
    ref_stance = _stance_of(words(reference or ""))
    positions = [c for c in _clauses(answer) if not c.asks and not c.dodges]
    if reference is not None and not words(reference):
        reference = None
    if ref_stance is not None or (reference is None and is_yes_no_question(question, None)):
        result = _grade_yes_no(question, ref_stance, positions)
    else:
        result = _grade_open(question, reference, positions)
    if result.correct is None and not positions and _clauses(answer):
        return Grade(None, None, None, "dodges or echoes the question", False)
    return result
