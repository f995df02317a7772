"""Data: row schema, loaders (JSONL, Hugging Face, built-in), bad rows, the seeded resumable sampler."""

from __future__ import annotations

import json
import re
import warnings
from collections import Counter
from pathlib import Path

import pytest

from grpo_ao.data import (
    QA,
    BadRowWarning,
    DataConfig,
    Example,
    TaskSampler,
    load_examples,
    strip_yes_no_instruction,
)
from grpo_ao.errors import GrpoAoError


def write_jsonl(path: Path, lines: list[str | dict]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


# --- strip_yes_no_instruction --------------------------------------------------------------------------


@pytest.mark.parametrize("question, expected", [
    ("Is it about cooking? ANSWER ONLY WITH YES OR NO", "Is it about cooking?"),
    ("Is it about cooking? ANSWER ONLY WITH YES OR NO.", "Is it about cooking?"),
    ("Is it about cooking?\n\nanswer only with yes or no!  ", "Is it about cooking?"),
    ("Is it about cooking. Answer Only With Yes Or No", "Is it about cooking"),
    ("Is it about cooking?. ANSWER ONLY WITH YES OR NO", "Is it about cooking?"),
    ("Is it about cooking?", "Is it about cooking?"),
    ("ANSWER ONLY WITH YES OR NO: is this first?", "ANSWER ONLY WITH YES OR NO: is this first?"),  # not trailing
])
def test_strip_yes_no_instruction_removes_only_the_trailing_instruction(question, expected):
    assert strip_yes_no_instruction(question) == expected


# --- DataConfig ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, field", [
    ({"source": ""}, "data.source"),
    ({"source": "data.csv"}, "data.source"),
    ({"source": "hf:"}, "data.source"),
    ({"split": ""}, "data.split"),
    ({"layer_percents": ()}, "data.layer_percents"),
    ({"layer_percents": (25, 150)}, "data.layer_percents"),
    ({"layer_percents": (100,)}, "data.layer_percents"),  # past the last layer: steering refuses 100
    ({"layer_percents": (25.0,)}, "data.layer_percents"),
    ({"min_positions": 0}, "data.min_positions"),
    ({"min_positions": 3, "max_positions": 2}, "data.max_positions"),
    ({"on_bad_row": "ignore"}, "data.on_bad_row"),
    ({"max_examples": 0}, "data.max_examples"),
    ({"seed": True}, "data.seed"),
    ({"context_format": "html"}, "data.context_format"),
    ({"question_draw": "random"}, "data.question_draw"),
])
def test_data_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(GrpoAoError, match=re.escape(field)):
        DataConfig(**kwargs)


def test_data_config_turns_a_yaml_list_into_a_tuple():
    cfg = DataConfig(layer_percents=[30, 60])
    assert cfg.layer_percents == (30, 60)
    hash(cfg)  # still hashable


# --- JSONL ---------------------------------------------------------------------------------------------


def test_jsonl_reads_all_three_row_shapes_and_records_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"context": "A", "questions": ["q1", {"question": "q2", "answer": "Yes", "family": "topic"}], "id": 7},
        "",  # blank lines are not rows
        {"context": "B", "question": "q3? ANSWER ONLY WITH YES OR NO", "answer": "No"},
        {"wildchat_question": "C", "oracle_questions": ["Is it code? ANSWER ONLY WITH YES OR NO.", "Why?"]},
    ])
    examples = load_examples(DataConfig(source=str(path)))
    assert len(examples) == 3
    assert examples[0] == Example(context="A", qas=(QA("q1"), QA("q2", "Yes", "topic")), source=f"{path}:1")
    assert examples[1] == Example(context="B", qas=(QA("q3?", "No"),), source=f"{path}:3")
    assert examples[2] == Example(context="C", qas=(QA("Is it code?"), QA("Why?")), source=f"{path}:4")


def test_jsonl_reads_the_phrasing_of_a_question_and_the_labels_of_a_context(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"context": "A", "labels": {"topic": "music", "tense": "past"},
         "questions": [{"question": "q1", "answer": "Yes", "family": "topic", "phrasing": "unseen"}, "q2"]},
        {"context": "B", "question": "q3", "phrasing": "seen", "labels": [0, 1]},  # a list is someone else's key
    ])
    first, second = load_examples(DataConfig(source=str(path)))
    assert first.qas == (QA("q1", "Yes", "topic", "unseen"), QA("q2"))
    assert first.label_map == {"topic": "music", "tense": "past"}
    assert second.qas == (QA("q3", phrasing="seen"),) and second.labels == ()


BAD_ROWS = [
    ("{not json", "invalid JSON"),
    ('["a list"]', "must be a JSON object"),
    ({"questions": ["q"]}, 'neither "context"'),
    ({"context": "A"}, 'neither "questions"'),
    ({"context": "   ", "question": "q"}, '"context" is empty'),
    ({"context": "A", "questions": []}, '"questions" is empty'),
    ({"context": "A", "questions": "q"}, "must be a list"),
    ({"context": 3, "question": "q"}, "must be a string"),
    ({"context": "A", "questions": [{"answer": "Yes"}]}, 'no "question" field'),
    ({"context": "A", "question": "q", "answer": 1}, "answer must be a string"),
    ({"context": "A", "question": "ANSWER ONLY WITH YES OR NO"}, "empty after removing"),
    ({"wildchat_question": "C", "oracle_questions": ["q", 5]}, "list of strings"),
    ({"context": "A", "question": "q", "phrasing": 2}, "phrasing must be a string"),
    ({"context": "A", "question": "q", "labels": {"topic": 3}}, 'labels"[\'topic\'] must be a string'),
]


def test_bad_rows_are_skipped_with_a_warning_naming_file_and_line(tmp_path):
    good = {"context": "ok", "question": "q"}
    path = write_jsonl(tmp_path / "d.jsonl", [good] + [row for row, _ in BAD_ROWS] + [good])
    with pytest.warns(BadRowWarning) as record:
        examples = load_examples(DataConfig(source=str(path)))
    assert [e.source for e in examples] == [f"{path}:1", f"{path}:{len(BAD_ROWS) + 2}"]
    messages = [str(w.message) for w in record]
    assert len(messages) == len(BAD_ROWS) == 14
    for lineno, ((_, reason), msg) in enumerate(zip(BAD_ROWS, messages, strict=True), start=2):
        assert msg.startswith(f"{path}:{lineno}: skipped bad row")
        assert reason in msg


@pytest.mark.parametrize("row, reason", BAD_ROWS)
def test_bad_row_with_on_bad_row_error_raises_with_file_and_line(tmp_path, row, reason):
    path = write_jsonl(tmp_path / "d.jsonl", [{"context": "ok", "question": "q"}, row])
    with pytest.raises(GrpoAoError, match=re.escape(f"{path}:2: bad row")) as err:
        load_examples(DataConfig(source=str(path), on_bad_row="error"))
    assert reason in str(err.value)


def test_invalid_utf8_line_is_a_bad_row(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"context": "ok", "question": "q"}\n{"context": "\xff\xfe", "question": "q"}\n')
    with pytest.warns(BadRowWarning, match=re.escape(f"{path}:2: skipped bad row: not valid UTF-8")):
        assert len(load_examples(DataConfig(source=str(path)))) == 1


def test_many_bad_rows_are_listed_up_to_a_limit_then_counted(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ["{bad"] * 25 + [{"context": "ok", "question": "q"}])
    with pytest.warns(BadRowWarning) as record:
        load_examples(DataConfig(source=str(path)))
    assert len(record) == 21  # 20 listed one by one + the final count
    assert "skipped 25 bad rows" in str(record[-1].message)


def test_missing_jsonl_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(GrpoAoError, match=re.escape(str(missing))):
        load_examples(DataConfig(source=str(missing)))


def test_file_without_any_valid_row_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ["{bad"])
    with pytest.warns(BadRowWarning), pytest.raises(GrpoAoError, match="no valid example"):
        load_examples(DataConfig(source=str(path)))


def test_max_examples_keeps_the_first_valid_examples_in_file_order(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"context": f"c{i}", "question": "q"} for i in range(10)])
    examples = load_examples(DataConfig(source=str(path), max_examples=3))
    assert [e.context for e in examples] == ["c0", "c1", "c2"]


# --- Hugging Face datasets (local, offline) --------------------------------------------------------------

AO_ROWS = [
    {"wildchat_question": "How do I sort a list in Python?",
     "oracle_questions": ["Is the user asking about programming? ANSWER ONLY WITH YES OR NO", "What language?"],
     "meta": "x"},
    {"wildchat_question": "Write a poem about rain.",
     "oracle_questions": ["Is the user asking for a poem? ANSWER ONLY WITH YES OR NO."], "meta": "y"},
]


def test_hf_loads_a_saved_dataset_folder_in_the_activation_oracle_format(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(AO_ROWS)}).save_to_disk(str(tmp_path / "ao"))
    examples = load_examples(DataConfig(source=f"hf:{tmp_path / 'ao'}", split="train"))
    assert len(examples) == 2
    assert examples[0].context == "How do I sort a list in Python?"
    assert examples[0].qas == (QA("Is the user asking about programming?"), QA("What language?"))
    assert examples[1].qas == (QA("Is the user asking for a poem?"),)
    assert all(qa.reference is None for e in examples for qa in e.qas)
    assert examples[1].source == f"hf:{tmp_path / 'ao'}[train]:row 1"
    with pytest.raises(GrpoAoError, match="data.split='test' is not in"):
        load_examples(DataConfig(source=f"hf:{tmp_path / 'ao'}", split="test"))


def test_hf_loads_a_local_json_file_and_reports_bad_rows_by_row(tmp_path):
    pytest.importorskip("datasets")
    rows = [{"context": "Sunny day.", "question": "Weather?", "answer": "Yes"},
            {"context": "", "question": "Empty?", "answer": "No"}]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    with pytest.warns(BadRowWarning, match=re.escape(f"hf:{path}[train]:row 1: skipped bad row")):
        examples = load_examples(DataConfig(source=f"hf:{path}"))
    assert [(e.context, e.qas) for e in examples] == [("Sunny day.", (QA("Weather?", "Yes"),))]


def test_hf_missing_local_path_is_an_error_without_network(tmp_path):
    with pytest.raises(GrpoAoError, match="local dataset path not found"):
        load_examples(DataConfig(source=f"hf:{tmp_path / 'missing'}"))


# --- TaskSampler -----------------------------------------------------------------------------------------


def toy_examples(n: int = 7) -> list[Example]:
    return [Example(context=" ".join(["w"] * (i + 1)), qas=(QA(f"q{i}a", "Yes"), QA(f"q{i}b", "No", "topic")),
                    source=f"toy:{i + 1}") for i in range(n)]


def n_words(text: str) -> int:
    return len(text.split())


def test_sampler_draws_fields_from_the_example_and_the_config():
    examples = toy_examples()
    cfg = DataConfig(layer_percents=(30, 60), min_positions=2, max_positions=4)
    tasks = TaskSampler(examples, cfg).next_batch(200)
    assert len(tasks) == 200
    for t in tasks:
        ex = examples[t.example_index]
        assert t.context == ex.context
        assert (t.question, t.reference, t.family) in {(qa.question, qa.reference, qa.family) for qa in ex.qas}
    assert {t.layer_percent for t in tasks} == {30, 60}
    assert {t.num_positions for t in tasks} == {2, 3, 4}


def test_sampler_visits_every_example_once_per_epoch():
    examples = toy_examples(7)
    tasks = TaskSampler(examples, DataConfig(seed=3)).next_batch(21)
    for epoch in range(3):
        assert sorted(t.example_index for t in tasks[7 * epoch: 7 * epoch + 7]) == list(range(7))
    assert [t.example_index for t in tasks[:7]] != [t.example_index for t in tasks[7:14]]  # reshuffled


def test_sampler_is_deterministic_per_seed():
    def run(seed):
        return TaskSampler(toy_examples(), DataConfig(seed=seed)).next_batch(30)

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_sampler_resumed_from_state_continues_like_an_uninterrupted_run():
    examples, cfg = toy_examples(5), DataConfig(seed=11, max_positions=6)
    uninterrupted = TaskSampler(examples, cfg, count_tokens=n_words)
    expected = [uninterrupted.next_batch(3) for _ in range(8)]  # 24 draws, crosses several epochs

    first = TaskSampler(examples, cfg, count_tokens=n_words)
    got = [first.next_batch(3) for _ in range(3)]  # stop mid-epoch (9 draws)
    state = json.loads(json.dumps(first.state_dict()))  # must survive JSON
    resumed = TaskSampler(examples, cfg, count_tokens=n_words)
    resumed.next_batch(2)  # a resumed sampler's own past draws must not matter
    resumed.load_state_dict(state)
    got += [resumed.next_batch(3) for _ in range(5)]
    assert got == expected
    assert resumed.state_dict() == uninterrupted.state_dict()


def test_sampler_state_from_other_data_is_rejected():
    state = TaskSampler(toy_examples(5), DataConfig()).state_dict()
    with pytest.raises(GrpoAoError, match="same data.source"):
        TaskSampler(toy_examples(6), DataConfig()).load_state_dict(state)


def test_sampler_caps_k_at_the_context_length():
    examples = toy_examples(3)  # contexts of 1, 2 and 3 tokens
    tasks = TaskSampler(examples, DataConfig(max_positions=5), count_tokens=n_words).next_batch(300)
    for i in range(3):
        ks = {t.num_positions for t in tasks if t.example_index == i}
        assert ks == set(range(1, i + 2))


def test_sampler_skips_contexts_shorter_than_min_positions_with_a_warning():
    examples = toy_examples(4)  # 1..4 tokens
    with pytest.warns(BadRowWarning) as record:
        sampler = TaskSampler(examples, DataConfig(min_positions=3, max_positions=5), count_tokens=n_words)
    assert [str(w.message).split(":")[0:2] for w in record] == [["toy", "1"], ["toy", "2"]]
    tasks = sampler.next_batch(40)
    assert {t.example_index for t in tasks} == {2, 3}
    assert all(3 <= t.num_positions <= n_words(t.context) for t in tasks)


def test_sampler_short_context_with_on_bad_row_error_raises_with_location():
    with pytest.raises(GrpoAoError, match="toy:1: context has 1 tokens"):
        TaskSampler(toy_examples(3), DataConfig(min_positions=2, on_bad_row="error"), count_tokens=n_words)


def test_sampler_with_no_usable_example_is_an_error():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadRowWarning)
        with pytest.raises(GrpoAoError, match="no usable example"):
            TaskSampler(toy_examples(2), DataConfig(min_positions=5), count_tokens=n_words)


def test_sampler_on_builtin_data_covers_every_family():
    cfg = DataConfig(seed=0)
    examples = load_examples(cfg)
    tasks = TaskSampler(examples, cfg).next_batch(len(examples))
    assert len({t.example_index for t in tasks}) == len(examples) > 3000  # one full epoch
    assert {t.family for t in tasks} == {"topic", "sentiment", "language", "tense", "number", "fact"}


def test_balanced_draw_asks_expanded_contexts_yes_as_often_as_no_and_every_family_alike():
    # builtin asks each labelled family once per value: 1 "Yes" per family, 1-9 "No"s; uniform draws see ~80 % No
    examples = load_examples(DataConfig())
    counts = {}
    for draw in ("balanced", "uniform"):
        cfg = DataConfig(seed=1, question_draw=draw)
        tasks = TaskSampler(examples, cfg).next_batch(12000)
        counts[draw] = Counter(t.reference for t in tasks if t.reference in ("Yes", "No"))
        if draw == "balanced":
            families = Counter(t.family for t in tasks)
    yes_share = {d: c["Yes"] / (c["Yes"] + c["No"]) for d, c in counts.items()}
    assert abs(yes_share["balanced"] - 0.5) < 0.02 and yes_share["uniform"] < 0.25, yes_share
    # a family per draw uniformly among the context's families: topic (on ~87 % of the contexts) leads,
    # but no family falls below half of an even share
    assert min(families.values()) > 0.5 * 12000 / 6, families


def test_balanced_draw_keeps_one_question_examples_and_open_shares():
    ex = Example("t", (QA("Y?", "Yes", "f"), QA("N1?", "No", "f"), QA("N2?", "No", "f"), QA("O?", "o", "f"),
                       QA("G?", "No", "g")))
    tasks = TaskSampler([ex], DataConfig(seed=0)).next_batch(8000)
    got = Counter(t.question for t in tasks)
    # family f or g with 1/2 each; in f: open 1/4, Yes 3/8, the two No 3/16 each; g: its one question
    expected = {"O?": 1 / 8, "Y?": 3 / 16, "N1?": 3 / 32, "N2?": 3 / 32, "G?": 1 / 2}
    assert all(abs(got[q] / 8000 - p) < 0.02 for q, p in expected.items()), got


def test_sampler_passes_the_question_phrasing_on():
    cfg = DataConfig(source="builtin_heldout", seed=0)
    tasks = TaskSampler(load_examples(cfg), cfg).next_batch(200)
    assert {t.phrasing for t in tasks} == {"seen", "unseen"}
    assert {t.phrasing for t in TaskSampler(toy_examples(), DataConfig()).next_batch(5)} == {None}


def test_pairs_draw_follows_each_yes_no_draw_with_its_minimal_pair_and_resumes_mid_pair():
    examples = load_examples(DataConfig(source="builtin_eval"))
    cfg = DataConfig(source="builtin_eval", seed=3, question_draw="pairs")
    tasks = TaskSampler(examples, cfg).next_batch(400)
    answered = {(qa.question, qa.reference) for ex in examples for qa in ex.qas}
    i, pairs = 0, 0
    while i < len(tasks) - 1:
        first, second = tasks[i], tasks[i + 1]
        other = {"Yes": "No", "No": "Yes"}.get(first.reference)
        if other is not None and (first.question, other) in answered:
            # the same question about another context that answers it the other way
            assert second.question == first.question and {first.reference, second.reference} == {"Yes", "No"}
            assert second.example_index != first.example_index
            pairs, i = pairs + 1, i + 2
        else:
            i += 1
    assert pairs > 150
    # a state taken between a draw and its partner continues with the partner
    a = TaskSampler(examples, cfg)
    a.next_batch(1)
    state = json.loads(json.dumps(a.state_dict()))
    b = TaskSampler(examples, cfg)
    b.load_state_dict(state)
    assert state["pending"] is not None  # seed 3's first draw is a yes/no question with a partner
    assert b.next_batch(7) == a.next_batch(7) == tasks[1:8]
    # balanced draws are not paired
    plain = TaskSampler(examples, DataConfig(source="builtin_eval", seed=3)).next_batch(400)
    assert sum(x.question == y.question for x, y in zip(plain[::2], plain[1::2])) < 100
