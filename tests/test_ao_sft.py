"""AO pretraining (recipes/ao_sft.py): item drawing, context prediction targets, the held-out split, a tiny run."""

import json
import random
from dataclasses import replace

import pytest

from grpo_ao.config import load_config
from grpo_ao.data import load_examples, split_examples
from grpo_ao.recipes import ao_sft


@pytest.fixture(scope="module")
def cfg():
    return load_config("tiny", ["ao_sft.num_examples=24", "ao_sft.heldout_examples=12", "ao_sft.heldout_contexts=20",
                                "ao_sft.epochs=1", "ao_sft.batch_size=8", "logging.progress=false",
                                "logging.checkpoint_every=2", "eval.batch_size=12"])


def test_split_examples_never_shares_a_context_between_train_and_heldout(cfg):
    examples = load_examples(cfg.data)
    train, held = split_examples(examples, 20, seed=0)
    assert len(held) == 20 and len(train) + len(held) <= len(examples)
    assert not {ex.context for ex in train} & {ex.context for ex in held}
    assert split_examples(examples, 20, seed=0)[1] == held, "seeded"


def test_context_prediction_item_targets_the_tokens_next_to_the_read_window(cfg, tokenizer):
    examples = load_examples(cfg.data)
    rng = random.Random(0)
    n = cfg.ao_sft.context_prediction_tokens
    seen = set()
    for ex in examples[:40]:
        item = ao_sft.context_prediction_item(ex, rng, cfg, tokenizer)
        if item is None:
            continue
        seen.add(item.kind)
        ids = tokenizer(ex.context, add_special_tokens=False)["input_ids"]
        prefix = tokenizer(item.text, add_special_tokens=False)["input_ids"]
        assert ids[:len(prefix)] == prefix, "the subject reads a prefix of the text, token for token"
        end = len(prefix)
        span = ids[end:end + n] if item.kind == "next" else ids[end - item.k - n:end - item.k]
        assert item.target == tokenizer.decode(span).strip()
        assert str(n) in item.question and item.reference is None
        assert cfg.data.min_positions <= item.k <= cfg.data.max_positions
    assert seen == {"next", "previous"}


def test_draw_items_mixes_classification_and_context_prediction_in_the_configured_share(cfg, tokenizer):
    examples = load_examples(cfg.data)
    items = ao_sft.draw_items(cfg, examples, tokenizer, 40, seed=0, context_prediction=True)
    assert len(items) == 40
    n_ctx = sum(it.kind in ("next", "previous") for it in items)
    assert n_ctx == round(40 * cfg.ao_sft.context_prediction_frac)
    for it in items:
        if it.kind in ("yes_no", "open"):
            assert it.target == it.reference and it.reference is not None
            assert any(qa.question == it.question and qa.reference == it.reference
                       for ex in examples if ex.context == it.text for qa in ex.qas)
    held = ao_sft.draw_items(cfg, examples, tokenizer, 20, seed=1, context_prediction=False)
    assert all(it.kind in ("yes_no", "open") for it in held)
    assert {it.kind for it in held} == {"yes_no", "open"}
    assert ao_sft.draw_items(cfg, examples, tokenizer, 40, seed=0, context_prediction=True) == items, "seeded"


def test_teacher_forcing_batch_has_no_system_prompt_and_ends_answers_with_end_of_turn(cfg, tiny, tokenizer):
    model, _ = tiny
    items = ao_sft.draw_items(cfg, load_examples(cfg.data), tokenizer, 6, seed=0, context_prediction=False)
    vectors = [__import__("torch").ones(it.k, model.config.hidden_size) for it in items]
    batch = ao_sft.teacher_forcing_batch(tokenizer, model, items, vectors, max_tokens=12)
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for i, it in enumerate(items):
        prompt = tokenizer.decode(batch.prompt_ids[i][batch.prompt_mask[i].bool()])
        assert "epistemic" not in prompt and prompt.count(" ?") >= it.k
        ids = batch.completion_ids[i][batch.completion_mask[i].bool()].tolist()
        assert ids[-1] == eot and tokenizer.decode(ids[:-1]) == it.target


def test_ao_sft_run_trains_writes_an_adapter_and_reports_real_and_shuffled_accuracy(cfg, tmp_path):
    run_cfg = replace(cfg, logging=replace(cfg.logging, output_dir=str(tmp_path / "ao")))
    summary = ao_sft.run(run_cfg)
    assert summary["steps"] == 3 and summary["train_items"] == 24 and summary["heldout_items"] == 12
    for when in ("before", "after"):
        for kind in ("real", "shuffled"):
            assert 0.0 <= summary[when][kind]["accuracy"] <= 1.0
    adapter = tmp_path / "ao" / "checkpoints" / "step-000003" / "adapter"
    assert summary["adapter"] == str(adapter) and (adapter / "adapter_config.json").exists()
    rows = [json.loads(line) for line in (tmp_path / "ao" / "heldout_answers.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    from grpo_ao.grading import grade

    recomputed = sum(grade(r["question"], r["reference"], r["answer"]).correct is True for r in rows) / len(rows)
    assert summary["after"]["real"]["accuracy"] == pytest.approx(recomputed)
    metrics = [json.loads(line) for line in (tmp_path / "ao" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "ao_sft/loss" in m] == [1, 2, 3]
    from grpo_ao import metrics as M

    assert {k for m in metrics for k in m} - {"step", "time"} == set(M.STAGE_METRICS["ao_sft"])


def test_ao_sft_resume_continues_from_the_checkpoint_to_the_same_adapter(cfg, tmp_path):
    import torch
    from safetensors.torch import load_file

    full = replace(cfg, logging=replace(cfg.logging, output_dir=str(tmp_path / "full")))
    ao_sft.run(full)
    part = replace(cfg, logging=replace(cfg.logging, output_dir=str(tmp_path / "part")))
    ao_sft.run(part)
    import shutil

    shutil.rmtree(tmp_path / "part" / "checkpoints" / "step-000003")  # as if killed after step 2
    ao_sft.run(part, resume=True)
    a = load_file(str(tmp_path / "full" / "checkpoints" / "step-000003" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "part" / "checkpoints" / "step-000003" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
