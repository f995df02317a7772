"""Answer expansion for format SFT. Every request goes to the fake server on 127.0.0.1; nothing leaves the host."""

from __future__ import annotations

import json
import logging

import pytest

from grpo_ao.config import load_config
from grpo_ao.data import Task
from grpo_ao.errors import GrpoAoError
from grpo_ao.judge import (
    JudgeConfig,
    JudgeItem,
    build_expander,
    build_judge,
    expand_terse_open_answers,
    is_open_question,
    run_sync,
    score_sync,
)
from grpo_ao.judge.expand import ExpandFormat, parse_expansion
from judge_server import FakeJudgeServer

KEY_ENV = "GRPO_AO_TEST_JUDGE_KEY"
CONTEXT = "They won the cup final 3-1 after extra time."


@pytest.fixture()
def server():
    with FakeJudgeServer() as srv:
        yield srv


@pytest.fixture()
def judge_fields(server, tmp_path, monkeypatch):
    """JudgeConfig fields for kind=openai against the fake server, with tiny backoff."""
    monkeypatch.chdir(tmp_path)  # no stray .env from the repo
    monkeypatch.setenv(KEY_ENV, "sk-test")
    return dict(kind="openai", base_url=server.url, model="fake-judge", api_key_env=KEY_ENV, timeout_s=2.0,
                max_retries=3, backoff_base_s=0.001, backoff_max_s=0.01, deadline_s=20.0)


@pytest.fixture()
def make_expander(judge_fields, tmp_path):
    def make(**overrides):
        return build_expander(JudgeConfig(**{**judge_fields, **overrides}), tmp_path / "judge_cache.sqlite")

    return make


def open_item(answer: str = "Sports.", context: str = CONTEXT) -> JudgeItem:
    return JudgeItem(context, "What is the topic of the text?", answer, "sports")


def test_expansion_replaces_a_terse_open_answer(server, make_expander):
    expander = make_expander()
    [result] = expand_terse_open_answers(expander, [open_item()], max_words=6)
    assert result.expanded and result.error is None
    assert result.text == "The text is mainly about Sports, as far as the activations show."
    [prompt] = server.prompts
    assert CONTEXT in prompt and "What is the topic of the text?" in prompt and "<answer>\nSports.\n</answer>" in prompt
    assert "Do NOT add any fact from the text that the oracle did not state" in prompt
    assert prompt.endswith("Answer: <rewritten answer>")
    assert (expander.stats.calls, expander.stats.successes, expander.stats.failures) == (1, 1, 0)


def test_yes_no_questions_and_long_answers_are_left_alone(server, make_expander):
    items = [
        JudgeItem(CONTEXT, "Is the text about sports?", "Yes.", "Yes"),
        JudgeItem(CONTEXT, "Does it mention a score?", "Yes.", None),  # yes/no by its first word
        JudgeItem(CONTEXT, "Which sport?", "No.", "no"),  # yes/no by its reference
        open_item("The text reports a cup final won after extra time."),  # 10 words: not terse
        open_item("Sports."),
    ]
    results = expand_terse_open_answers(make_expander(), items, max_words=6)
    assert [r.expanded for r in results] == [False, False, False, False, True]
    assert [r.text for r in results[:4]] == [item.answer for item in items[:4]]
    assert all(r.error is None for r in results)
    assert server.calls == 1 and "<answer>\nSports.\n</answer>" in server.prompts[0]


def test_five_words_is_terse_and_six_is_not_at_the_default_limit(server, make_expander):
    five, six = open_item("a cup final in football"), open_item("a cup final in football today")
    results = expand_terse_open_answers(make_expander(), [five, six], max_words=6)
    assert [r.expanded for r in results] == [True, False]


def test_failing_server_keeps_the_original_answers_and_counts_failures(server, make_expander, caplog):
    server.default = "500"
    expander = make_expander(max_retries=2)
    items = [open_item("Sports."), open_item("Football.")]
    with caplog.at_level(logging.WARNING, logger="grpo_ao"):
        results = expand_terse_open_answers(expander, items, max_words=6)
    assert [r.text for r in results] == ["Sports.", "Football."]
    assert all(not r.expanded and "HTTP 500" in r.error for r in results)
    assert server.calls == 6  # 2 items × (1 + max_retries)
    assert (expander.stats.failures, expander.stats.retries, expander.stats.successes) == (2, 4, 0)
    assert "2 of 2 requested items failed and keep the oracle's original answer" in caplog.text


def test_an_unparseable_reply_is_retried_once_then_the_original_is_kept(server, make_expander):
    server.default = "unparseable"
    [result] = expand_terse_open_answers(make_expander(max_retries=5), [open_item()], max_words=6)
    assert result.text == "Sports." and not result.expanded and "unparseable reply" in result.error
    assert server.calls == 2


def test_one_unparseable_reply_then_a_good_one_expands(server, make_expander):
    server.plan = ["unparseable"]
    [result] = expand_terse_open_answers(make_expander(), [open_item()], max_words=6)
    assert result.expanded and server.calls == 2


def test_second_expander_is_served_from_the_cache_with_zero_calls(server, make_expander):
    items = [open_item("Sports."), open_item("Football."), open_item("Sports.")]  # one duplicate
    first = expand_terse_open_answers(make_expander(), items, max_words=6)
    assert server.calls == 2  # deduped
    second_expander = make_expander()  # a new object on the same SQLite file: a restarted process
    second = expand_terse_open_answers(second_expander, items, max_words=6)
    assert server.calls == 2
    assert [r.text for r in second] == [r.text for r in first] and all(r.expanded for r in second)
    assert (second_expander.stats.cache_hits, second_expander.stats.calls) == (2, 0)


def test_expansions_and_judge_scores_share_the_file_but_not_the_namespace(server, make_expander, judge_fields,
                                                                          tmp_path):
    item = open_item("Sports. ANS70")
    expand_terse_open_answers(make_expander(), [item], max_words=6)
    judge = build_judge(JudgeConfig(**judge_fields), cache_path=tmp_path / "judge_cache.sqlite")
    [judged] = score_sync(judge, [item])
    assert judged.informativeness == 0.70 and not judged.cached and server.calls == 2
    again = run_sync(lambda: make_expander().expand([item]))
    assert again[0].expanded and server.calls == 2  # both served from the one file


def test_cache_key_depends_on_reply_settings_and_item_not_reference():
    fmt = ExpandFormat(JudgeConfig(kind="openai", model="model-a"))
    others = [JudgeConfig(kind="openai", model="model-b"), JudgeConfig(kind="openai", model="model-a", temperature=0.5),
              JudgeConfig(kind="openai", model="model-a", max_tokens=77),
              JudgeConfig(kind="openai", model="model-a", reasoning="high")]
    keys = {fmt.key(open_item()), fmt.key(open_item("Football.")), fmt.key(open_item(context="Another text.")),
            *(ExpandFormat(c).key(open_item()) for c in others)}
    assert len(keys) == 7
    assert fmt.key(open_item()) == fmt.key(JudgeItem(CONTEXT, "What is the topic of the text?", "Sports.", None))


@pytest.mark.parametrize(("question", "reference", "is_open"), [
    ("What is the topic of the text?", None, True),
    ("Which language is the text in?", "French", True),
    ("Describe the mood.", None, True),
    ("Summarize the text in one sentence.", "A team won a final.", True),
    ("Is the text about sports?", None, False),
    ("are the verbs in the past tense?", None, False),
    ("Could this be a review?", None, False),
    ("Doesn't it mention food?", None, False),
    ("Isn’t it about food?", None, False),  # typographic apostrophe
    ("Cannot the text be about food?", None, False),
    ("Which sport is it?", "Yes, it is football.", False),  # a reference that opens with yes/no
    ("Which sport is it?", "Yes.", False),  # a yes/no reference closes any question
    ("Name the sport.", "no", False),
    ("", None, False),
])
def test_selection_rule_for_open_questions(question, reference, is_open):
    assert is_open_question(question, reference) is is_open


@pytest.mark.parametrize(("reply", "expected"), [
    ("Same claim.\nAnswer: The text is about a cup final.", "The text is about a cup final."),
    ("**Answer:** The text is about sports.", "The text is about sports."),
    ('answer: "It is about sports."', "It is about sports."),
    ("Answer: first try\nAnswer: The last line wins.", "The last line wins."),
])
def test_parse_expansion_reads_the_final_answer_line(reply, expected):
    assert parse_expansion(reply) == (expected, None)


@pytest.mark.parametrize("reply", ["", None, "The text is about sports.", "Answer: sports\nHope this helps!",
                                   "Answer:", "Answer: <rewritten answer>", "Answer: " + "word " * 81])
def test_parse_expansion_rejects_anything_but_a_final_answer_line(reply):
    text, error = parse_expansion(reply)
    assert text is None and error


def test_build_expander_needs_the_openai_judge_and_an_api_key(tmp_path, monkeypatch):
    with pytest.raises(GrpoAoError, match="judge.kind=openai"):
        build_expander(JudgeConfig(kind="reference"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(GrpoAoError, match=KEY_ENV) as err:
        build_expander(JudgeConfig(kind="openai", api_key_env=KEY_ENV))
    assert "expand_open_answers=false" in str(err.value)


def test_sft_run_with_expansion_and_an_offline_judge_fails_before_loading_a_model(tmp_path, monkeypatch):
    from grpo_ao.recipes import sft

    def no_model(*args, **kwargs):
        pytest.fail("load_oracle was called before the config check")

    monkeypatch.setattr(sft, "load_oracle", no_model)
    overrides = [f"logging.output_dir={tmp_path / 'run'}", "sft.expand_open_answers=true", "judge.kind=reference"]
    with pytest.raises(GrpoAoError, match="judge.kind=openai") as err:  # at load time or at the start of run
        sft.run(load_config("tiny", overrides))
    assert "sft.expand_open_answers=false" in str(err.value)
    assert not (tmp_path / "run").exists()


def test_make_targets_expands_terse_open_answers_and_records_the_natural_answer(server, judge_fields, tmp_path,
                                                                                 tiny, capsys):
    from grpo_ao.recipes.sft import make_targets

    model, tokenizer = tiny
    judge = [f"judge.{k}={v}" for k, v in judge_fields.items()]
    # max_words=50: any answer of the random model (≤ 4 tokens, or the 8-word fallback) counts as terse
    cfg = load_config("tiny", ["sft.answer_max_new_tokens=4", "sft.expand_open_answers=true",
                               "sft.expand_max_words=50", f"logging.output_dir={tmp_path / 'run'}", *judge])
    tasks = [Task(0, "The soup was salty and warm.", "Is this about food?", "Yes", "topic", 50, 2),
             Task(1, "They won the cup final.", "What is the topic?", "sports", "topic", 25, 3)]
    rows = make_targets(cfg, model, tokenizer, tasks, tmp_path / "cache")
    assert [r["expanded"] for r in rows] == [False, True] and server.calls == 1
    closed, opened = rows
    assert closed["target"].endswith(closed["natural_answer"])
    expected = server.rewrite.format(answer=opened["natural_answer"].rstrip("."))
    assert opened["target"].startswith("[epistemic status: ") and opened["target"].endswith(expected)
    assert "expanded 1 of 1 terse answers" in capsys.readouterr().out
    saved = [json.loads(line) for line in (tmp_path / "cache" / "targets.jsonl").read_text().splitlines()]
    assert [(r["expanded"], r["natural_answer"]) for r in saved] == [(False, closed["natural_answer"]),
                                                                     (True, opened["natural_answer"])]
    assert (tmp_path / "run" / "judge_cache.sqlite").exists()
