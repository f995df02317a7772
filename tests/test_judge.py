"""Judge tests. Every request goes to a fake OpenAI-compatible server on 127.0.0.1; nothing leaves the host."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import subprocess
import sys
import time

import pytest

from grpo_ao.errors import GrpoAoError
from grpo_ao.judge import JudgeConfig, JudgeItem, JudgeStats, build_judge, parse_reply, score_sync
from grpo_ao.judge.cache import JudgeCache, cache_key
from grpo_ao.judge.offline import BAND_SCORES
from grpo_ao.judge.openai_judge import backoff_delay, parse_retry_after
from judge_server import FakeJudgeServer

KEY_ENV = "GRPO_AO_TEST_JUDGE_KEY"
KEY = "sk-or-v1-THIS-IS-THE-SECRET-9f8e7d"


@pytest.fixture()
def server():
    with FakeJudgeServer() as srv:
        yield srv


@pytest.fixture()
def make_judge(server, tmp_path, monkeypatch):
    """build_judge(kind=openai) against the fake server, tiny backoff, cache in tmp_path."""
    monkeypatch.chdir(tmp_path)  # no stray .env from the repo
    monkeypatch.setenv(KEY_ENV, KEY)

    def make(**overrides):
        fields = dict(kind="openai", base_url=server.url, model="fake-judge", api_key_env=KEY_ENV,
                      timeout_s=2.0, max_retries=3, backoff_base_s=0.001, backoff_max_s=0.01, deadline_s=20.0)
        cfg = JudgeConfig(**{**fields, **overrides})
        return build_judge(cfg, cache_path=tmp_path / "judge_cache.sqlite")

    return make


def item(n: int | str, context: str = "The cat sat on the mat.") -> JudgeItem:
    return JudgeItem(context=context, question="What is the text about?", answer=f"A cat. ANS{n}")


# -- parsing ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("reply", "expected"), [
    ("Looks right.\nScore: 72", 0.72),
    ("Terse; 2 of 3 facts.\nScore: 45/100", 0.45),  # the prototype read the last integer: 100 -> 1.0
    ("Score: 45.5", 0.455),
    ("**Score:** 80", 0.80),
    ("Score: 10\nOn reflection, better.\nScore: 20", 0.20),  # the last Score line wins
    ("Score: 0", 0.0),
    ("Score: 100", 1.0),
])
def test_parse_reply_reads_the_last_score_line(reply, expected):
    assert parse_reply(reply).informativeness == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("reply", ["Score: 150", "Score: -5", "I'd give it 7/10.", "", None,
                                   "Score: 40\nScore: high", "Score: 45/10", "The score: 45 points"])
def test_parse_reply_rejects_anything_but_a_valid_score_line(reply):
    parsed = parse_reply(reply)
    assert parsed.informativeness is None and parsed.error


def test_parse_reply_with_correctness_needs_the_correct_line():
    assert parse_reply("Score: 60\nCorrect: yes", with_correctness=True).correct == 1.0
    assert parse_reply("Score: 60\nCorrect: No", with_correctness=True).correct == 0.0
    assert parse_reply("Score: 60", with_correctness=True).informativeness is None
    assert parse_reply("Score: 60\nCorrect: maybe", with_correctness=True).informativeness is None


# -- the API judge against the loopback server ------------------------------------------------------------

def test_openai_judge_scores_from_the_reply_and_counts_usage(server, make_judge):
    judge = make_judge(price_prompt_per_mtok=1.0, price_completion_per_mtok=2.0)
    results = score_sync(judge, [item(37), item(80)])
    assert [r.informativeness for r in results] == [0.37, 0.80]
    assert all(r.ok and not r.cached and r.attempts == 1 and r.error is None for r in results)
    assert "Score: 37" in results[0].raw
    assert server.auth_headers == [f"Bearer {KEY}"] * 2
    assert any("A cat. ANS37" in p for p in server.prompts) and "Score: N" in server.prompts[0]
    stats = judge.stats
    assert (stats.calls, stats.successes, stats.failures, stats.retries) == (2, 2, 0, 0)
    assert stats.prompt_tokens == sum(len(p.split()) for p in server.prompts) > 0
    # cost = prompt·1/1e6 + completion·2/1e6
    assert stats.cost_usd == pytest.approx((stats.prompt_tokens + 2 * stats.completion_tokens) / 1e6, abs=1e-15)
    assert judge.stats.as_metrics()["judge/cost_usd"] == pytest.approx(stats.cost_usd, abs=1e-15)


def test_score_45_of_100_from_the_server_is_045(server, make_judge):
    server.default = "slash100"
    assert score_sync(make_judge(), [item(1)])[0].informativeness == 0.45


def test_with_correctness_asks_for_and_parses_the_correct_line(server, make_judge):
    results = score_sync(make_judge(with_correctness=True), [item(70), item(20)])
    assert "Correct: yes|no" in server.prompts[0]
    assert [(r.informativeness, r.correct) for r in results] == [(0.70, 1.0), (0.20, 0.0)]


def test_retries_429_and_500_then_succeeds(server, make_judge):
    server.plan = ["429", "500"]
    judge = make_judge()
    [result] = score_sync(judge, [item(64)])
    assert result.informativeness == 0.64 and result.attempts == 3
    assert (server.calls, judge.stats.calls, judge.stats.retries, judge.stats.failures) == (3, 3, 2, 0)


def test_retry_after_header_is_honoured(server, make_judge):
    server.plan, server.retry_after = ["429"], "0.3"
    [result] = score_sync(make_judge(), [item(10)])  # own backoff ≤ 0.01 s, so the wait is Retry-After's
    assert result.ok and server.request_times[1] - server.request_times[0] >= 0.28


def test_failure_after_the_retry_budget_is_a_failure_not_a_score(server, make_judge, caplog):
    server.default = "500"
    judge = make_judge(max_retries=2)
    with caplog.at_level(logging.WARNING, logger="grpo_ao"):
        [result] = score_sync(judge, [item(90)])
    assert result.informativeness is None and not result.ok and result.correct is None
    assert result.attempts == 3 == server.calls and "HTTP 500" in result.error
    assert (judge.stats.failures, judge.stats.retries) == (1, 2)
    assert "1 of 1 requested items failed" in caplog.text


def test_client_errors_are_not_retried(server, make_judge):
    server.default = "400"
    [result] = score_sync(make_judge(), [item(1)])
    assert not result.ok and result.attempts == 1 and "HTTP 400" in result.error


def test_timeout_is_retried_then_reported(server, make_judge):
    server.default, server.hang_s = "hang", 1.0
    [result] = score_sync(make_judge(timeout_s=0.15, max_retries=1), [item(1)])
    assert not result.ok and result.attempts == 2 and "timeout" in result.error


@pytest.mark.parametrize(("mode", "reason"), [("unparseable", "unparseable reply"), ("garbage", "bad response"),
                                              ("score150", "outside 0-100")])
def test_bad_replies_are_retried_once_then_fail(server, make_judge, mode, reason):
    server.default = mode
    [result] = score_sync(make_judge(max_retries=5), [item(1)])
    assert not result.ok and result.attempts == 2 == server.calls and reason in result.error


def test_one_bad_reply_then_a_good_one_succeeds(server, make_judge):
    server.plan = ["unparseable"]
    [result] = score_sync(make_judge(), [item(55)])
    assert result.informativeness == 0.55 and result.attempts == 2


def test_dedupe_makes_one_call_for_identical_items(server, make_judge):
    judge = make_judge()
    results = score_sync(judge, [item(42)] * 8 + [item(7)])
    assert server.calls == 2
    assert [r.informativeness for r in results] == [0.42] * 8 + [0.07]
    assert (judge.stats.items, judge.stats.unique, judge.stats.calls) == (9, 2, 2)


def test_second_judge_is_served_from_the_cache_with_zero_calls(server, make_judge):
    batch = [item(n) for n in (11, 22, 33)]
    first = score_sync(make_judge(), batch + [item("ALWAYS500")])
    calls_after_first = server.calls
    second_judge = make_judge()  # a new object on the same SQLite file: what a restarted process does
    second = score_sync(second_judge, batch)
    assert server.calls == calls_after_first
    assert [r.informativeness for r in second] == [r.informativeness for r in first[:3]]
    assert all(r.cached and r.attempts == 0 for r in second)
    assert (second_judge.stats.cache_hits, second_judge.stats.calls) == (3, 0)
    # the failure was not cached: it is asked again
    assert not first[3].ok
    assert not score_sync(second_judge, [item("ALWAYS500")])[0].cached
    assert server.calls > calls_after_first


@pytest.mark.parametrize("change", [
    {"model": "other"}, {"prompt_template": "Be strict. {context} {question} {answer}"}, {"temperature": 0.5},
    {"max_tokens": 4096}, {"reasoning": "high"}, {"reasoning": "default"}, {"with_correctness": True},
])
def test_cache_key_changes_with_every_setting_that_changes_the_reply(change):
    base = JudgeConfig()
    assert cache_key(dataclasses.replace(base, **change), item(1)) != cache_key(base, item(1))


def test_cache_key_ignores_settings_that_do_not_change_the_reply():
    base = JudgeConfig()
    same = dataclasses.replace(base, timeout_s=5.0, max_retries=0, max_concurrency=2, deadline_s=9.0,
                               price_prompt_per_mtok=1.0, price_completion_per_mtok=1.0, score_parse_failures=True)
    assert cache_key(same, item(1)) == cache_key(base, item(1))
    assert cache_key(base, dataclasses.replace(item(1), reference="Yes")) == cache_key(base, item(1))
    assert cache_key(base, item(2)) != cache_key(base, item(1))


def test_cache_is_safe_across_processes(tmp_path):
    path = tmp_path / "shared.sqlite"
    JudgeCache(path)
    writer = ("import sys; from grpo_ao.judge.cache import JudgeCache; from grpo_ao.judge import JudgeResult\n"
              "c = JudgeCache(sys.argv[1])\n"
              "for i in range(40): c.put(f'{sys.argv[2]}-{i}', JudgeResult(i / 40, None, 'r', False, 0.0, 1))\n")
    procs = [subprocess.Popen([sys.executable, "-c", writer, str(path), tag]) for tag in ("a", "b")]
    assert [p.wait(timeout=30) for p in procs] == [0, 0]
    found = JudgeCache(path).get_many([f"{tag}-{i}" for tag in "ab" for i in range(40)])
    assert len(found) == 80 and found["b-20"].informativeness == 0.5


def test_concurrency_never_exceeds_the_limit(server, make_judge):
    server.delay_s = 0.05
    results = score_sync(make_judge(max_concurrency=3), [item(n) for n in range(20)])
    assert all(r.ok for r in results)
    assert 2 <= server.max_inflight <= 3  # at least 2: requests really overlapped


def test_global_deadline_fails_unfinished_items(server, make_judge):
    server.default, server.hang_s = "hang", 2.0
    started = time.monotonic()
    results = score_sync(make_judge(timeout_s=5.0, deadline_s=0.3, max_concurrency=2), [item(n) for n in range(4)])
    assert time.monotonic() - started < 1.5
    assert all(not r.ok and "deadline" in r.error for r in results)
    assert "no reply yet" in results[0].error and "not started" in results[3].error
    assert [r.attempts for r in results] == [1, 1, 0, 0]  # two were in flight, two never got a slot


def test_api_key_never_appears_in_logs_repr_or_saved_config(server, make_judge, caplog):
    server.plan = ["429"]
    judge = make_judge(max_retries=1)
    with caplog.at_level(logging.DEBUG):
        results = score_sync(judge, [item(1), item(2), item("ALWAYS500")])
    assert any(r.ok for r in results) and any(not r.ok for r in results)
    assert server.auth_headers[0] == f"Bearer {KEY}"  # the key was really used
    assert caplog.text and KEY not in caplog.text
    assert KEY not in repr(judge) and KEY not in str(judge)
    assert KEY not in str(dataclasses.asdict(judge.cfg)) and KEY not in repr(judge.cfg)
    assert all(KEY not in (r.error or "") + r.raw for r in results)


def test_missing_api_key_raises_a_grpoaoerror_naming_the_variable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(GrpoAoError, match=KEY_ENV) as err:
        build_judge(JudgeConfig(kind="openai", api_key_env=KEY_ENV))
    assert ".env" in str(err.value)


def test_dotenv_in_the_working_directory_provides_the_key(server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(KEY_ENV, "placeholder")
    monkeypatch.delenv(KEY_ENV)  # registered with monkeypatch, so the value .env sets is removed afterwards
    (tmp_path / ".env").write_text(f"{KEY_ENV}=sk-from-dotenv\n")
    judge = build_judge(JudgeConfig(kind="openai", base_url=server.url, api_key_env=KEY_ENV))
    assert score_sync(judge, [item(5)])[0].informativeness == 0.05
    assert server.auth_headers == ["Bearer sk-from-dotenv"]


@pytest.mark.parametrize(("overrides", "field"), [
    ({"kind": "gpt"}, "kind"), ({"max_concurrency": 0}, "max_concurrency"), ({"timeout_s": 0}, "timeout_s"),
    ({"prompt_template": "{context} {question}"}, "prompt_template"),
    ({"backoff_base_s": 2.0, "backoff_max_s": 1.0}, "backoff_max_s"),
    ({"price_prompt_per_mtok": 1.0}, "price_prompt_per_mtok"), ({"constant_score": 1.5}, "constant_score"),
])
def test_judge_config_rejects_bad_values_naming_the_field(overrides, field):
    with pytest.raises(GrpoAoError, match=f"judge.{field}"):
        JudgeConfig(**overrides)


def test_judge_config_refuses_a_key_in_place_of_the_variable_name_without_echoing_it():
    with pytest.raises(GrpoAoError, match="api_key_env") as err:
        JudgeConfig(api_key_env=KEY)
    assert KEY not in str(err.value)


def test_score_sync_works_inside_a_running_event_loop():
    judge = build_judge(JudgeConfig(kind="constant", constant_score=0.25))

    async def main():
        return score_sync(judge, [item(1)])

    assert asyncio.run(main())[0].informativeness == 0.25


# -- Done when: a flaky server, 64 items --------------------------------------------------------------------

@pytest.mark.parametrize("max_retries", [4, 1])  # 1: P(item fails) = 0.4² = 16 %, so failures do occur
def test_flaky_server_64_items_are_scored_or_explicitly_failed_and_counters_add_up(server, make_judge,
                                                                                   max_retries):
    server.random_failures(p429=0.3, p500=0.1, seed=0)
    judge = make_judge(max_retries=max_retries, max_concurrency=8)
    results = score_sync(judge, [item(n, context=f"text {n}") for n in range(64)])
    ok = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    assert all(r.informativeness == n / 100 for n, r in enumerate(results) if r.ok)
    assert all(r.error and ("HTTP 429" in r.error or "HTTP 500" in r.error) and r.attempts == max_retries + 1
               for r in failed)
    s = judge.stats
    assert len(ok) + len(failed) == 64 and (s.successes, s.failures) == (len(ok), len(failed))
    assert s.calls == server.calls == sum(r.attempts for r in results)
    assert s.retries == s.calls - 64  # every item sent a first request
    assert server.statuses[200] == len(ok) and server.statuses[429] + server.statuses[500] == s.calls - len(ok)
    assert server.statuses[429] > 0 and server.statuses[500] > 0 and s.retries > 0
    assert s.cache_hits == 0 and s.unique == 64
    if max_retries == 1:
        assert failed, "with one retry some of 64 items fail (expected ~10)"


# -- counters and backoff -----------------------------------------------------------------------------------

def test_stats_delta_and_metrics():
    stats = JudgeStats(calls=4, latency_sum_s=2.0, cache_hits=1, prompt_tokens=100)
    before = stats.snapshot()
    stats.calls, stats.latency_sum_s, stats.failures = 6, 3.0, 1
    delta = stats.delta(before).as_metrics()
    assert delta == {"judge/calls": 2.0, "judge/cache_hits": 0.0, "judge/retries": 0.0, "judge/failures": 1.0,
                     "judge/latency_s": 0.5, "judge/prompt_tokens": 0.0, "judge/completion_tokens": 0.0,
                     "judge/cost_usd": 0.0}
    assert set(stats.as_metrics("eval_judge/")) == {k.replace("judge/", "eval_judge/") for k in delta}
    assert before.calls == 4  # the snapshot is independent
    assert JudgeStats().as_metrics()["judge/latency_s"] == 0.0


def test_backoff_grows_exponentially_with_jitter_and_honours_retry_after():
    cfg = JudgeConfig(backoff_base_s=1.0, backoff_max_s=5.0, retry_after_max_s=10.0)
    rng = random.Random(0)
    for k, cap in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0)]:  # min(5, 1·2^(k-1))
        assert cap / 2 <= backoff_delay(cfg, k, None, rng) <= cap
    assert backoff_delay(cfg, 1, 7.0, rng) == 7.0
    assert backoff_delay(cfg, 1, 60.0, rng) == 10.0  # capped at retry_after_max_s


def test_parse_retry_after_accepts_seconds_milliseconds_and_dates():
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "150", "retry-after": "9"}) == 0.15
    assert 0 <= parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) < 1.0  # in the past -> 0
    assert parse_retry_after({"retry-after": "soon"}) is None and parse_retry_after({}) is None


# -- offline judges -----------------------------------------------------------------------------------------

def yes_no_item(answer: str, reference: str | None = "Yes") -> JudgeItem:
    return JudgeItem("We flew to Lisbon and took the tram.", "Is this text about travel?", answer, reference)


def test_reference_judge_scores_on_the_rubric_bands():
    judge = build_judge(JudgeConfig(kind="reference"))
    answers = ["No.", "I can't tell.", "Yes.", "This text is about travel.",
               "Yes, a flight to Lisbon and a ride on the old tram.", "No, it is about cooking."]
    results = score_sync(judge, [yes_no_item(a) for a in answers] + [yes_no_item("No, it is about cooking.", "no.")])
    # wrong 0.1 · no position 0.25 · correct bare yes / bare restatement 0.45 · correct with detail 0.7;
    # the last two: "No, it is about cooking." is wrong against Yes, and detailed against "no."
    assert [r.informativeness for r in results] == [0.1, 0.25, 0.45, 0.45, 0.7, 0.1, 0.7]
    assert [r.correct for r in results] == [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0]  # no position is not correct
    assert (judge.stats.calls, judge.stats.successes, judge.stats.failures) == (7, 7, 0)
    assert results[1].raw.startswith("no_position:") and results[1].raw.endswith("Score: 25")


def test_reference_judge_bands_sit_inside_the_hosted_rubric_bands():
    # DEFAULT_TEMPLATE: 0-20 wrong, 20-40 generic/dodges, 40-50 correct bare yes/no, 60-80 correct with detail
    rubric = {"wrong": (0.0, 0.2), "no_position": (0.2, 0.4), "terse": (0.4, 0.5), "detailed": (0.6, 0.8)}
    assert set(BAND_SCORES) == set(rubric)
    assert all(lo < BAND_SCORES[name] < hi for name, (lo, hi) in rubric.items())


def test_reference_judge_grades_open_questions_by_label():
    judge = build_judge(JudgeConfig(kind="reference"))
    question = "What is the topic of this text?"
    results = score_sync(judge, [JudgeItem("ctx", question, a, "sports") for a in
                                 ("Football.", "It is about music.", "sports or music",
                                  "A football match in which the home side won after extra time.")])
    assert [(r.informativeness, r.correct) for r in results] == [(0.45, 1.0), (0.1, 0.0), (0.25, 0.0), (0.7, 1.0)]


def test_reference_judge_without_a_reference_fails_instead_of_guessing():
    judge = build_judge(JudgeConfig(kind="reference"))
    results = score_sync(judge, [yes_no_item("Yes", None), yes_no_item("Yes", "  ?? ")])
    assert all(not r.ok and "no reference" in r.error for r in results)
    assert judge.stats.failures == 2


def test_constant_judge_scores_everything_the_same_and_dedupes():
    judge = build_judge(JudgeConfig(kind="constant", constant_score=0.3))
    results = score_sync(judge, [item(1), item(1), item(2)])
    assert [(r.informativeness, r.correct) for r in results] == [(0.3, 0.3)] * 3
    assert (judge.stats.items, judge.stats.unique, judge.stats.calls) == (3, 2, 2)
