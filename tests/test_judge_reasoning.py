"""API judge: reasoning control, token-limit failures, the settings in the cache key, skipping unparsed answers,
and the one result type. Every request goes to the fake server on 127.0.0.1; nothing leaves the host."""

from __future__ import annotations

import dataclasses
import sqlite3

import pytest

from grpo_ao.errors import GrpoAoError
from grpo_ao.judge import (
    NOT_JUDGED_UNPARSED,
    JudgeConfig,
    JudgeItem,
    JudgeResult,
    build_judge,
    score_answers,
    score_sync,
)
from grpo_ao.judge.cache import JudgeCache
from judge_server import FakeJudgeServer

KEY_ENV = "GRPO_AO_TEST_JUDGE_KEY"


@pytest.fixture()
def server():
    with FakeJudgeServer() as srv:
        yield srv


@pytest.fixture()
def make_judge(server, tmp_path, monkeypatch):
    """build_judge(kind=openai) against the fake server, tiny backoff, one cache file per test."""
    monkeypatch.chdir(tmp_path)  # no stray .env from the repo
    monkeypatch.setenv(KEY_ENV, "sk-test")

    def make(**overrides):
        fields = dict(kind="openai", base_url=server.url, model="fake-judge", api_key_env=KEY_ENV,
                      timeout_s=2.0, max_retries=3, backoff_base_s=0.001, backoff_max_s=0.01, deadline_s=20.0)
        return build_judge(JudgeConfig(**{**fields, **overrides}), cache_path=tmp_path / "judge_cache.sqlite")

    return make


def item(n: int) -> JudgeItem:
    return JudgeItem("The cat sat on the mat.", "What is the text about?", f"A cat. ANS{n}", "a cat")


# -- reasoning control ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("level", "body"), [
    ("none", {"enabled": False, "exclude": True}),  # the default: the shipped GLM judge can switch thinking off
    ("low", {"effort": "low", "exclude": True}),
    ("medium", {"effort": "medium", "exclude": True}),
    ("high", {"effort": "high", "exclude": True}),
])
def test_reasoning_level_is_sent_as_openrouters_reasoning_object(server, make_judge, level, body):
    [result] = score_sync(make_judge(reasoning=level, max_tokens=300), [item(40)])
    assert result.informativeness == 0.40
    [request] = server.requests
    assert request["reasoning"] == body
    assert (request["model"], request["max_tokens"], request["temperature"]) == ("fake-judge", 300, 0.0)


def test_reasoning_default_sends_no_reasoning_field(server, make_judge):
    score_sync(make_judge(reasoning="default"), [item(40)])
    assert "reasoning" not in server.requests[0]


def test_default_reasoning_is_off():
    assert JudgeConfig().reasoning == "none"


def test_unknown_reasoning_level_is_rejected_naming_the_field():
    with pytest.raises(GrpoAoError, match=r"judge\.reasoning = 'max'.*none, low, medium, high, default"):
        JudgeConfig(reasoning="max")


def test_empty_reply_cut_off_by_max_tokens_fails_once_retried_and_names_the_fix(server, make_judge):
    server.default = "length_empty"
    judge = make_judge(reasoning="high", max_tokens=64, max_retries=5)
    [result] = score_sync(judge, [item(40)])
    assert not result.ok and result.informativeness is None and not result.skipped
    assert result.attempts == 2 == server.calls  # retried once like any bad reply, not max_retries times
    assert "judge.max_tokens=64 with an empty reply" in result.error
    assert "raise judge.max_tokens or lower judge.reasoning (now 'high')" in result.error
    assert (judge.stats.failures, judge.stats.successes) == (1, 0)


def test_cut_off_reply_without_reasoning_only_asks_for_more_tokens(server, make_judge):
    server.default = "length_cut"
    [result] = score_sync(make_judge(reasoning="none"), [item(40)])
    assert "before the format line" in result.error and "raise judge.max_tokens (after 2 attempts)" in result.error
    assert "judge.reasoning" not in result.error


def test_a_400_says_how_to_stop_sending_the_reasoning_field(server, make_judge):
    server.default = "400"
    [with_field] = score_sync(make_judge(reasoning="low"), [item(1)])
    [without] = score_sync(make_judge(reasoning="default"), [item(1)])
    assert "HTTP 400" in with_field.error and "judge.reasoning=default" in with_field.error
    assert "HTTP 400" in without.error and "judge.reasoning" not in without.error


# -- the cache key holds every setting that changes the reply -----------------------------------------------

@pytest.mark.parametrize("change", [
    {"model": "other-judge"}, {"temperature": 0.7}, {"max_tokens": 2048}, {"reasoning": "low"},
    {"with_correctness": True}, {"prompt_template": "Grade it. {context} {question} {answer}"},
])
def test_changing_a_reply_setting_misses_the_cache_and_the_same_settings_hit(server, make_judge, change):
    score_sync(make_judge(), [item(30)])
    [again] = score_sync(make_judge(), [item(30)])
    assert again.cached and server.calls == 1
    judge = make_judge(**change)
    [changed] = score_sync(judge, [item(30)])
    assert changed.ok and not changed.cached and server.calls == 2
    assert (judge.stats.cache_hits, judge.stats.calls) == (0, 1)


def test_a_cache_file_from_before_the_merge_is_not_read(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:  # the old layout: table `replies`, value = [informativeness, correct]
        conn.execute("CREATE TABLE replies (namespace TEXT, key TEXT, value TEXT, raw TEXT, created REAL)")
        conn.execute("INSERT INTO replies VALUES ('judge', 'k', '[0.5, null]', 'Score: 50', 0)")
    cache = JudgeCache(path)
    assert cache.get_many(["k"]) == {}
    cache.put("k", JudgeResult(0.7, None, "Score: 70", False, 0.1, 1))
    assert cache.get_many(["k"])["k"] == JudgeResult(0.7, None, "Score: 70", cached=True)


# -- answers whose tag did not parse are not sent -------------------------------------------------------------

def test_unparsed_answers_are_skipped_not_sent_and_not_failures(server, make_judge):
    judge = make_judge()
    results = score_answers(judge, [item(10), item(20), item(30)], [True, False, True], score_parse_failures=False)
    assert server.calls == 2 and not any("ANS20" in p for p in server.prompts)
    assert [r.informativeness for r in results] == [0.10, None, 0.30]
    skipped = results[1]
    assert skipped.skipped and not skipped.ok and skipped.attempts == 0 and skipped.error == NOT_JUDGED_UNPARSED
    assert not results[0].skipped and not results[2].skipped
    s = judge.stats
    assert (s.items, s.successes, s.failures, s.skipped) == (2, 2, 0, 1)


def test_score_parse_failures_sends_them_too(server, make_judge):
    judge = make_judge()
    results = score_answers(judge, [item(10), item(20)], [True, False], score_parse_failures=True)
    assert server.calls == 2 and [r.informativeness for r in results] == [0.10, 0.20]
    assert judge.stats.skipped == 0


def test_score_answers_with_nothing_parsed_sends_nothing_and_works_offline():
    judge = build_judge(JudgeConfig(kind="reference"))
    results = score_answers(judge, [item(1), item(2)], [False, False], score_parse_failures=False)
    assert all(r.skipped for r in results) and judge.stats.calls == 0 and judge.stats.skipped == 2
    with pytest.raises(ValueError, match="2 items but 1 parse flags"):
        score_answers(judge, [item(1), item(2)], [True], score_parse_failures=False)


# -- one result type for judgements and other calls ----------------------------------------------------------

def test_judge_result_is_built_as_before_and_ok_means_a_score_or_a_value():
    positional = JudgeResult(0.4, 1.0, "Score: 40", False, 0.2, 1)
    keyword = JudgeResult(informativeness=0.4, correct=1.0, raw="Score: 40", cached=False, latency_s=0.2,
                          attempts=1, error=None)
    assert positional == keyword and positional.ok and positional.value is None and not positional.skipped
    failed = JudgeResult(None, None, "", False, 0.0, 3, "HTTP 500")
    assert not failed.ok and not failed.skipped
    assert JudgeResult(value="The text is about sports.", attempts=1).ok  # the answer expander's rewrite
    with pytest.raises(AssertionError):
        JudgeResult(None, None, "", False, 0.0, 1)  # neither a score nor an error
    with pytest.raises(AssertionError):
        JudgeResult(0.5, None, "", False, 0.0, 1, "HTTP 500")  # never a score together with an error


def test_cache_keeps_namespaces_apart_and_round_trips_values(tmp_path):
    cache = JudgeCache(tmp_path / "c.sqlite")
    cache.put("k", JudgeResult(value="The text is about sports.", raw="Answer: ...", attempts=1), "expand")
    [hit] = cache.get_many(["k"], "expand").values()
    assert hit.value == "The text is about sports." and hit.informativeness is None and hit.cached
    assert cache.get_many(["k"]) == {}  # the judge namespace does not see it


def test_a_result_from_the_api_has_the_same_type_as_an_offline_one(server, make_judge):
    [api] = score_sync(make_judge(), [item(45)])
    [offline] = score_sync(build_judge(JudgeConfig(kind="reference")), [item(45)])
    assert type(api) is type(offline) is JudgeResult
    assert dataclasses.replace(api, raw="", latency_s=0.0) == JudgeResult(0.45, None, "", False, 0.0, 1)
