"""`oracle.vector_preprocessing=center`: the subject vectors minus the subject's mean at their layer, in every path
that gives vectors to the oracle (rollouts, AO pretraining, eval), recorded in the adapter's layout and enforced
when a stage starts from that adapter."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from grpo_ao import cli
from grpo_ao.config import load_config
from grpo_ao.data import DataConfig, load_examples
from grpo_ao.errors import GrpoAoError
from grpo_ao.oracle_layout import LAYOUT_FILE, OracleLayout, parse_layout, read_layout
from grpo_ao.recipes import adapters
from grpo_ao.recipes.setup import oracle_spec, task_sampler
from grpo_ao.rollout import build_oracle_inputs
from grpo_ao.steering import (
    MEAN_REFERENCE_CONTEXTS,
    MEAN_REFERENCE_TOKENS,
    extract_activations,
    extract_in_batches,
    subject_means,
)
from layout_files import adapter_dir

CONTEXTS = ["The cake needs flour, sugar and two eggs.", "Our team lost the final match again."]


def test_center_subtracts_the_mean_of_the_reference_windows(tiny):
    model, tokenizer = tiny
    layers = [2, 5]
    raw = extract_activations(model, tokenizer, CONTEXTS, layers, [3, 4])
    centered = extract_activations(model, tokenizer, CONTEXTS, layers, [3, 4], preprocessing="center")
    means = subject_means(model, tokenizer, [2, 5], "chat")
    for r, c, layer in zip(raw, centered, layers, strict=True):
        assert c.shape == r.shape and c.dtype == r.dtype
        torch.testing.assert_close(c, r - means[layer], atol=1e-5, rtol=0)
    # the means are what the reference windows average to (recomputed here the long way, one context at a time)
    refs = [ex.context for ex in load_examples(DataConfig(source="builtin"))[:MEAN_REFERENCE_CONTEXTS]]
    ks = [min(MEAN_REFERENCE_TOKENS, len(tokenizer(c, add_special_tokens=False)["input_ids"])) for c in refs]
    windows = extract_in_batches(model, tokenizer, refs, [5] * len(refs), ks, "chat", 1)
    torch.testing.assert_close(means[5], torch.cat(windows).float().mean(0), atol=1e-4, rtol=1e-5)
    assert means[5].norm() > 0.1 * torch.cat(windows).float().norm(dim=1).mean(), "a real shared component"
    # centered reference windows average to 0
    again = extract_in_batches(model, tokenizer, refs, [5] * len(refs), ks, "chat", 64, preprocessing="center")
    assert torch.cat(again).float().mean(0).abs().max() < 1e-4
    with pytest.raises(ValueError, match="preprocessing"):
        extract_activations(model, tokenizer, CONTEXTS, layers, [3, 4], preprocessing="whiten")


def test_the_config_value_is_checked_and_reaches_the_rollout_inputs(tiny):
    model, tokenizer = tiny
    with pytest.raises(GrpoAoError, match="oracle.vector_preprocessing='whiten'"):
        load_config("tiny", ["oracle.vector_preprocessing=whiten"])
    cfg = load_config("tiny", ["oracle.vector_preprocessing=center"])
    spec = oracle_spec(cfg)
    assert spec.vector_preprocessing == "center" and spec.without_system_prompt().vector_preprocessing == "center"
    tasks = task_sampler(cfg.data, tokenizer).next_batch(3)
    centered = build_oracle_inputs(model, tokenizer, tasks, spec=spec)
    raw = build_oracle_inputs(model, tokenizer, tasks, spec=replace(spec, vector_preprocessing="none"))
    means = subject_means(model, tokenizer, sorted(set(raw.layers)), cfg.data.context_format)
    for r, c, layer in zip(raw.vectors, centered.vectors, raw.layers, strict=True):
        torch.testing.assert_close(c, r - means[layer], atol=1e-5, rtol=0)
    assert torch.equal(raw.prompt_ids, centered.prompt_ids), "the prompt does not change, only the vectors"


CENTERED = OracleLayout(stage="ao_sft", base_model="tiny", system_prompt_mode="none", system_prompt=None,
                        injection_layer=1, steering_coef=1.0, layer_percents=(25, 50, 75), min_positions=1,
                        max_positions=5, context_format="chat", vector_preprocessing="center")


def test_an_adapter_records_its_preprocessing_and_stages_follow_or_refuse(tmp_path, capsys):
    cfg = load_config("tiny", ["oracle.vector_preprocessing=center"])
    assert adapters.written_layout(cfg, "ao_sft").vector_preprocessing == "center"
    assert parse_layout({**json.loads(json.dumps(CENTERED.__dict__)), "layer_percents": [25, 50, 75]},
                        "x") == CENTERED
    old = json.loads((Path(adapter_dir(tmp_path, CENTERED, "old")) / LAYOUT_FILE).read_text())
    del old["vector_preprocessing"]  # a file written before the field existed: raw vectors
    assert parse_layout(old, "old file").vector_preprocessing == "none"
    ao = adapter_dir(tmp_path, CENTERED)
    asked = adapters.cfg_for_adapter(load_config("tiny"), ao, label="ao")  # eval / observe follow the file
    assert oracle_spec(asked).vector_preprocessing == "center"
    assert "vector_preprocessing: adapter 'center', config 'none'" in capsys.readouterr().out
    with pytest.raises(GrpoAoError, match="oracle.vector_preprocessing=center"):  # sft must match
        adapters.check_start_layout(load_config("tiny", [f"model.adapter={ao}"]), "sft", adapters.SFT_MUST_MATCH)
    code = cli.main(["grpo", "--config", "tiny", f"model.adapter={ao}", "oracle.system_prompt_mode=none",
                     "--output-dir", str(tmp_path / "g")])
    err = capsys.readouterr().err
    assert code == 2 and "vector_preprocessing: adapter 'center', config 'none'" in err
    assert "Traceback" not in err


def test_ao_sft_with_center_trains_on_centered_vectors_and_writes_the_layout(tmp_path, monkeypatch):
    from grpo_ao.recipes import ao_sft

    seen = []
    real = ao_sft.extract_in_batches

    def spy(*args, **kwargs):
        seen.append(kwargs.get("preprocessing", args[8] if len(args) > 8 else "none"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ao_sft, "extract_in_batches", spy)
    cfg = load_config("tiny", ["oracle.vector_preprocessing=center", "ao_sft.num_examples=8",
                               "ao_sft.heldout_examples=4", "ao_sft.heldout_contexts=20", "ao_sft.epochs=1",
                               "ao_sft.batch_size=8", "ao_sft.eval_every=0", "logging.progress=false",
                               f"logging.output_dir={tmp_path / 'ao'}", "eval.batch_size=8"])
    summary = ao_sft.run(cfg)
    assert seen and set(seen) == {"center"}, "training and held-out vectors are both centered"
    assert read_layout(summary["adapter"]).vector_preprocessing == "center"
