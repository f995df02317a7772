"""Format SFT and evaluation recipes on the tiny model."""

import json
import math
import subprocess
import sys

import pytest
import torch

from grpo_ao.config import load_config
from grpo_ao.data import Task
from grpo_ao.format import ORACLE_SYSTEM_PROMPT, apply_chat_template, build_oracle_messages
from grpo_ao.loss import sft_loss


def test_sft_loss_is_token_mean_nll_over_assistant_tokens():
    logprobs = torch.tensor([[-1.0, -2.0, -9.0], [-3.0, -7.0, -7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # (1 + 2 + 3) / 3 tokens = 2; the masked -9 and -7s never enter
    assert sft_loss(logprobs, mask).item() == pytest.approx(2.0, abs=1e-6)


def test_sft_sequence_is_the_chat_rendering_and_loss_starts_at_first_assistant_token(tokenizer):
    from grpo_ao.recipes.sft import teacher_forcing_batch

    cfg = load_config("tiny")
    rows = [{"question": "Is this about food?", "layer": 4, "k": 2, "target": "[epistemic status: 7] Yes",
             "vector": torch.randn(2, 64)},
            {"question": "What is the topic?", "layer": 2, "k": 3, "target": "[epistemic status: 1] sports",
             "vector": torch.randn(3, 64)}]
    batch = teacher_forcing_batch(cfg, tokenizer, rows)
    for i, row in enumerate(rows):
        prompt = batch.prompt_ids[i][batch.prompt_mask[i].bool()].tolist()
        target = batch.completion_ids[i][batch.completion_mask[i].bool()].tolist()
        messages = build_oracle_messages(row["question"], row["layer"], row["k"], ORACLE_SYSTEM_PROMPT,
                                         answer=row["target"])
        full = apply_chat_template(tokenizer, messages, add_generation_prompt=False)
        assert tokenizer.decode(prompt + target) == full.rstrip("\n")
        # the first loss token is the first assistant token, and the prompt is never in the loss
        assert tokenizer.decode(target).startswith("[epistemic status:")
        assert tokenizer.decode(prompt).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
        assert tokenizer.decode(target[-1:]) == "<|im_end|>"


def test_sft_targets_are_cached_and_reused_without_subject_forward(tmp_path, monkeypatch, tiny):
    import grpo_ao.rollout as rollout
    from grpo_ao.recipes.sft import make_targets

    model, tokenizer = tiny
    cfg = load_config("tiny", ["sft.answer_max_new_tokens=4"])
    tasks = [Task(0, "The soup was salty and warm.", "Is this about food?", "Yes", "topic", 50, 2),
             Task(1, "They won the cup final.", "What is the topic?", "sports", "topic", 25, 3)]
    calls = []
    real = rollout.extract_activations
    monkeypatch.setattr(rollout, "extract_activations", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = make_targets(cfg, model, tokenizer, tasks, tmp_path / "cache")
    assert calls == [1]
    second = make_targets(cfg, model, tokenizer, tasks, tmp_path / "cache")
    assert calls == [1], "second run must not run the subject model"
    assert [r["target"] for r in first] == [r["target"] for r in second]
    for a, b in zip(first, second):
        torch.testing.assert_close(a["vector"], b["vector"])
        assert a["target"].startswith("[epistemic status: ")


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "grpo_ao.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={"GRPO_AO_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
                          timeout=600)


def test_eval_cli_writes_table_json_and_readable_pngs(tmp_path):
    out = tmp_path / "eval"
    r = _cli("eval", "--config", "tiny", "--output-dir", str(out), "eval.num_examples=12", "--adapter", "base",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "eval.json").read_text())
    assert report["num_items"] == 12 and list(report["adapters"]) == ["base"]
    summary = report["adapters"]["base"]["summary"]
    assert summary["n"] == 12 and 0.0 <= summary["parse_rate"] <= 1.0
    table = (out / "eval.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| base |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    from grpo_ao.recipes.eval_report import TABLE_COLUMNS

    shuffled = report["adapters"]["base"]["controls"]["shuffled"]
    cf = report["adapters"]["base"]["controls"]["counterfactual"]
    numbers = {**summary, "shuffled_accuracy": shuffled["summary"]["accuracy"],
               "accuracy_delta": shuffled["accuracy_delta"], "counterfactual_accuracy": cf["summary"]["accuracy"],
               "accuracy_delta_counterfactual": cf["accuracy_delta"]}
    assert len(cells) == len(TABLE_COLUMNS) + 1
    for (_, key), cell in zip(TABLE_COLUMNS, cells[1:]):  # the table is the JSON, rounded
        value = numbers[key]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            assert cell == "–"
        else:
            assert float(cell) == pytest.approx(value, abs=5e-4)
    for name in ("reliability_base.png", "confidence_base.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    records = [json.loads(line) for line in (out / "eval_records_base.jsonl").read_text().splitlines()]
    control = [json.loads(line) for line in (out / "eval_records_base_shuffled.jsonl").read_text().splitlines()]
    assert len(records) == len(control) == 12 and shuffled["summary"]["n"] == 12
    assert all(r["donor"] != r["item"] for r in control)
    # parse failures never enter calibration: Brier is None when nothing parsed
    if summary["n_parsed"] == 0:
        assert summary["brier_correct"] is None and summary["ece_correct"] is None


def test_eval_rejects_missing_adapter_with_clear_message(tmp_path):
    r = _cli("eval", "--config", "tiny", "--output-dir", str(tmp_path / "e"), "--adapter", "./nope", cwd=tmp_path)
    assert r.returncode == 2 and "no such directory" in r.stderr and "Traceback" not in r.stderr


def test_builtin_eval_questions_never_contain_the_answer():
    from grpo_ao.data import DataConfig, load_examples

    examples = load_examples(DataConfig(source="builtin_eval"))
    items = [(ex, qa) for ex in examples for qa in ex.qas]
    assert len(items) >= 150
    for _, qa in items:
        assert qa.reference in ("Yes", "No")
        words = qa.question.lower().replace("?", " ").split()
        assert "yes" not in words and "no" not in words and "answer" not in words


def test_observe_prints_report(capsys):
    from grpo_ao.recipes import observe

    cfg = load_config("tiny", ["logging.progress=false", "sampling.max_new_tokens=6"])
    out = observe.run(cfg, num_examples=2, num_generations=3, use_judge=False)
    text = capsys.readouterr().out
    assert "=== example 1/2" in text and "=== example 2/2" in text and "parse rate" in text
    assert "histogram of X" in text and len(out["texts"]) == 6


def test_a_truncated_natural_answer_gets_no_end_of_turn_token(tokenizer):
    from grpo_ao.recipes.sft import teacher_forcing_batch

    cfg = load_config("tiny")
    row = {"question": "What is the topic?", "layer": 4, "k": 1, "target": "[epistemic status: 3] The text is about",
           "vector": torch.randn(1, 64)}
    batch = teacher_forcing_batch(cfg, tokenizer, [dict(row), dict(row, truncated=True)])
    ends = [tokenizer.decode(ids[mask.bool()].tolist()) for ids, mask in zip(batch.completion_ids,
                                                                              batch.completion_mask)]
    assert ends[0].endswith("<|im_end|>") and not ends[1].endswith("<|im_end|>")
    assert ends[1] == row["target"]


def test_eval_adapter_labels_are_unique_and_name_the_run_and_step():
    from grpo_ao.errors import GrpoAoError
    from grpo_ao.recipes.evaluate import default_label, parse_adapters

    assert default_label("runs/x/grpo/checkpoints/step-000500/adapter") == "grpo-step-000500"
    assert default_label("my_adapter") == "my_adapter"
    cfg = load_config("tiny")
    with pytest.raises(GrpoAoError, match="name more than one adapter"):
        parse_adapters(cfg, ["org/one", "a=org/two", "a=org/three"])
    assert parse_adapters(cfg, ["base", "org/one", "none"]) == [("base", None), ("one", "org/one"), ("none", None)]
