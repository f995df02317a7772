"""Metric names vs docs/metrics.md, the sinks, and run_info.json with secrets redacted."""

import json
import logging
import re
import sys
import types
from pathlib import Path

import pytest
import torch

from grpo_ao import metrics, run_info
from grpo_ao.config import STAGES
from grpo_ao.metrics import (
    ALL_METRICS,
    CONDITIONAL_METRICS,
    STAGE_METRICS,
    JsonlSink,
    MetricSink,
    MultiSink,
    NullSink,
    TensorBoardSink,
    WandbSink,
    build_sinks,
    confidence_histogram,
    read_metrics,
)
from grpo_ao.run_info import redact_secrets, write_run_info

DOCS = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"


def test_docs_table_lists_exactly_the_metric_constants():
    rows = re.findall(r"^\|\s*`([^`]+)`\s*\|", DOCS.read_text(encoding="utf-8"), flags=re.MULTILINE)
    assert len(rows) == 72, f"found {len(rows)} metric rows in {DOCS}"
    assert rows == list(ALL_METRICS)
    assert len(set(ALL_METRICS)) == len(ALL_METRICS)
    assert all(re.fullmatch(r"[a-z_]+/[a-z0-9_]+", name) for name in ALL_METRICS)
    # every documented name belongs to a stage, and every stage's name is documented
    assert set().union(*STAGE_METRICS.values()) == set(ALL_METRICS)
    assert set(STAGE_METRICS) == set(STAGES) and CONDITIONAL_METRICS <= set(ALL_METRICS)


STAGE_OVERRIDES = {
    "sft": ["sft.num_examples=4", "sft.heldout_examples=2", "sft.epochs=1", "sft.batch_size=4",
            "sft.answer_max_new_tokens=4"],
    "grpo": ["grpo.max_steps=2", "grpo.prompts_per_step=2", "sampling.num_generations=2", "sampling.max_new_tokens=4",
             "logging.checkpoint_every=2"],
    "eval": ["eval.num_examples=16", "eval.max_new_tokens=4"],
}
"""The smallest tiny run of each stage (ao_sft: its own recipe test checks `STAGE_METRICS["ao_sft"]`)."""


def test_each_stage_logs_exactly_the_documented_names_of_that_stage(tmp_path):
    """sft → grpo (from the SFT adapter) → eval on the tiny model; each run directory's metrics.jsonl holds
    exactly that stage's names (eval writes none: its numbers are in eval.json)."""
    from grpo_ao.config import load_config
    from grpo_ao.recipes import evaluate, grpo, sft

    def cfg(stage, *extra):
        return load_config("tiny", ["logging.progress=false", f"logging.output_dir={tmp_path / stage}",
                                    *STAGE_OVERRIDES[stage], *extra])

    adapter = sft.run(cfg("sft"))["adapter"]
    grpo.run(cfg("grpo", f"model.adapter={adapter}"))
    report = evaluate.run(cfg("eval"), adapters=[f"sft={adapter}"])
    assert report["num_items"] == 16 and (tmp_path / "eval" / "eval.json").is_file()
    not_here = set() if torch.cuda.is_available() else {metrics.PERF_PEAK_MEMORY_GB}  # CONDITIONAL_METRICS
    for stage in STAGE_OVERRIDES:
        records = read_metrics(tmp_path / stage)
        logged = {name for r in records for name in r} - {"step", "time"}
        assert logged == set(STAGE_METRICS[stage]) - not_here, (stage, logged ^ set(STAGE_METRICS[stage]))
    assert [r["step"] for r in read_metrics(tmp_path / "grpo")] == [1, 2]


def test_confidence_histogram_counts_parsed_completions_only():
    hist = confidence_histogram([3, 3, None, 10])  # 3 parsed: two at 3, one at 10
    assert hist["calib/confidence_hist_3"] == pytest.approx(2 / 3, abs=1e-12)
    assert hist["calib/confidence_hist_10"] == pytest.approx(1 / 3, abs=1e-12)
    assert sum(hist.values()) == pytest.approx(1.0, abs=1e-12)
    assert set(hist) <= set(ALL_METRICS) and len(hist) == 11
    assert sum(confidence_histogram([None]).values()) == 0.0


def test_every_sink_satisfies_the_protocol(tmp_path):
    sinks = [NullSink(), JsonlSink(tmp_path), TensorBoardSink(tmp_path), MultiSink([])]
    assert all(isinstance(s, MetricSink) for s in sinks)
    for s in sinks:
        s.close()


def test_jsonl_sink_writes_flushed_strict_json_lines(tmp_path):
    sink = JsonlSink(tmp_path)
    sink.log({metrics.REWARD_MEAN: torch.tensor(0.25), metrics.JUDGE_CALLS: 8}, step=1)
    sink.log({metrics.REWARD_MEAN: float("nan")}, step=2)
    sink.log_samples([{"question": "Is it French?", "confidence": 7, "score": torch.tensor([0.5])}], step=2)
    # readable before close: every write is flushed
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2]
    assert records[0][metrics.REWARD_MEAN] == 0.25 and records[0][metrics.JUDGE_CALLS] == 8
    assert records[1][metrics.REWARD_MEAN] is None  # NaN -> null, so the file stays strict JSON
    assert isinstance(records[0]["time"], float)
    sample = json.loads((tmp_path / "samples.jsonl").read_text().strip())
    assert sample == {"step": 2, "question": "Is it French?", "confidence": 7, "score": [0.5]}
    sink.close()


def test_read_metrics_keeps_last_record_per_step_after_a_resume(tmp_path):
    sink = JsonlSink(tmp_path)
    for step, value in [(1, 0.1), (2, 0.2), (3, 0.3), (2, 0.22), (3, 0.33)]:  # resumed from step 1
        sink.log({metrics.LOSS_TOTAL: value}, step=step)
    sink.close()
    assert len(read_metrics(tmp_path)) == 5
    assert [r[metrics.LOSS_TOTAL] for r in read_metrics(tmp_path, last_per_step=True)] == [0.1, 0.22, 0.33]
    assert read_metrics(tmp_path / "missing") == []


def test_tensorboard_sink_writes_events(tmp_path):
    sink = TensorBoardSink(tmp_path)
    sink.log({metrics.REWARD_MEAN: 0.5}, step=1)
    sink.log_samples([{"question": "q"}], step=1)
    sink.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_tensorboard_sink_without_package_warns_and_does_nothing(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now fails
    with caplog.at_level(logging.WARNING):
        sink = TensorBoardSink(tmp_path)
    assert "TensorBoard is not installed" in caplog.text
    sink.log({metrics.REWARD_MEAN: 0.5}, step=1)
    sink.close()
    assert not (tmp_path / "tensorboard").exists()


def _no_wandb_login(monkeypatch, tmp_path):
    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "netrc").write_text("machine example.com login me password x\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))


def test_wandb_missing_package_warns_once_and_run_continues(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with caplog.at_level(logging.WARNING):
        sinks = build_sinks(tmp_path, tensorboard=False, wandb_project="p", run_name="r", config_dict={})
    assert "wandb is not installed" in caplog.text
    assert len(caplog.records) == 1 and "\n" not in caplog.records[0].getMessage()
    sinks.log({metrics.REWARD_MEAN: 1.0}, step=1)
    sinks.close()
    assert read_metrics(tmp_path)[0][metrics.REWARD_MEAN] == 1.0


class _FakeRun:
    def __init__(self):
        self.logged, self.finished = [], False

    def log(self, data, step):
        self.logged.append((data, step))

    def finish(self):
        self.finished = True


def _fake_wandb(monkeypatch):
    fake = types.SimpleNamespace(inits=[], run=_FakeRun())
    fake.Table = lambda columns, data: ("table", columns, data)

    def init(project, name, config):
        fake.inits.append((project, name, config))
        return fake.run

    fake.init = init
    monkeypatch.setitem(sys.modules, "wandb", fake)
    return fake


def test_wandb_without_api_key_warns_and_does_not_start(tmp_path, monkeypatch, caplog):
    fake = _fake_wandb(monkeypatch)
    _no_wandb_login(monkeypatch, tmp_path)
    with caplog.at_level(logging.WARNING):
        sink = WandbSink("proj", "run", {})
    assert "WANDB_API_KEY is not set" in caplog.text
    sink.log({metrics.REWARD_MEAN: 1.0}, step=1)
    sink.close()
    assert fake.inits == [] and fake.run.logged == []


def test_wandb_with_api_key_logs_redacted_config_and_survives_a_failing_backend(
    tmp_path, monkeypatch, caplog
):
    fake = _fake_wandb(monkeypatch)
    _no_wandb_login(monkeypatch, tmp_path)
    monkeypatch.setenv("WANDB_API_KEY", "dummy")
    sink = WandbSink("proj", "run", {"judge": {"api_key": "sk-real"}})
    assert fake.inits == [("proj", "run", {"judge": {"api_key": "<redacted>"}})]
    sink.log({metrics.REWARD_MEAN: 1.0}, step=3)
    sink.log_samples([{"question": "q", "completions": ["a", "b"]}], step=3)
    assert fake.run.logged[0] == ({metrics.REWARD_MEAN: 1.0}, 3)
    assert fake.run.logged[1] == (
        {"samples": ("table", ["completions", "question"], [['["a", "b"]', "q"]])},
        3,
    )

    def broken(data, step):
        raise ConnectionError("network down")

    fake.run.log = broken
    with caplog.at_level(logging.WARNING):
        sink.log({metrics.REWARD_MEAN: 2.0}, step=4)  # warns, does not raise
        sink.log({metrics.REWARD_MEAN: 3.0}, step=5)  # now a no-op
    assert caplog.text.count("W&B logging failed") == 1
    sink.close()
    assert not fake.run.finished  # disabled after the failure


def test_redact_secrets_hides_secret_values_but_keeps_env_var_names_and_tokenizer():
    config = {
        "judge": {
            "api_key": "sk-or-v1-123",
            "api_key_env": "OPENROUTER_API_KEY",  # the NAME of the variable: kept
            "model": "z-ai/glm-4.7-flash",
        },
        "hub": {"HF_Token": "hf_abc", "push_token_env": "sk-pasted-by-mistake"},
        "model": {"tokenizer": "Qwen/Qwen3-8B", "pad_token": "<pad>"},
        "grpo": {"max_new_tokens": 300, "api_key": None},
        "extra": [{"client_secret": "s3cr3t", "Password": "pw"}],
        "notes": "sk-abcdefghijklmnopqrstuvwx",  # looks like a key wherever it sits
    }
    redacted = redact_secrets(config)
    assert redacted == {
        "judge": {
            "api_key": "<redacted>",
            "api_key_env": "OPENROUTER_API_KEY",
            "model": "z-ai/glm-4.7-flash",
        },
        "hub": {"HF_Token": "<redacted>", "push_token_env": "<redacted>"},
        "model": {"tokenizer": "Qwen/Qwen3-8B", "pad_token": "<redacted>"},
        "grpo": {"max_new_tokens": 300, "api_key": None},
        "extra": [{"client_secret": "<redacted>", "Password": "<redacted>"}],
        "notes": "<redacted>",
    }
    assert config["judge"]["api_key"] == "sk-or-v1-123"  # the input is not modified


def test_write_run_info_saves_redacted_config_commit_seed_and_versions(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["grpo-ao", "grpo", "judge.api_key=sk-x", "grpo.lr=1e-6"])
    path = write_run_info(tmp_path, {"judge": {"api_key": "sk-secret"}, "seed": 7}, seed=7)
    info = json.loads(path.read_text())
    assert info["config"] == {"judge": {"api_key": "<redacted>"}, "seed": 7}
    assert "sk-secret" not in path.read_text() and "sk-x" not in path.read_text()
    assert info["command"] == ["grpo-ao", "grpo", "judge.api_key=<redacted>", "grpo.lr=1e-6"]
    assert info["seed"] == 7
    assert info["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", info["git_commit"])
    assert set(info["versions"]) >= {"python", "torch", "transformers", "peft"}
    assert torch.__version__.startswith(info["versions"]["torch"].split("+")[0])


def test_write_run_info_without_git_records_none(tmp_path, monkeypatch):
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(run_info.subprocess, "run", no_git)
    info = json.loads(write_run_info(tmp_path, {}, seed=0).read_text())
    assert info["git_commit"] is None and info["git_dirty"] is None
