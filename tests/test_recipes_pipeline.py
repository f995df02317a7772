"""Issue 16, the recipe side: AO pretraining's optimizer recipe, the full pipeline with a starting adapter, pushes
that run last, ./.env for every command, content-keyed activation caches, each stage's gradient checkpointing."""

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from grpo_ao import cli
from grpo_ao.config import AoSftConfig, load_config
from grpo_ao.errors import GrpoAoError
from grpo_ao.recipes import ao_sft, pipeline, sft


class Stop(Exception):
    """Raised by a patched function to end a recipe once what the test needs was seen."""


def _stop_at(monkeypatch, module, name, seen):
    def fake(*args, **kwargs):
        seen.append((args, kwargs))
        raise Stop

    monkeypatch.setattr(module, name, fake)


# ---------------------------------------------------------------------------- 1. AO pretraining's recipe

def test_ao_sft_defaults_are_the_activation_oracles_recipe_and_qwen3_8b_spells_them_out():
    recipe = AoSftConfig()
    assert (recipe.lr, recipe.lr_schedule, recipe.warmup_fraction, recipe.batch_size) == (1e-5, "linear", 0.1, 16)
    assert recipe.warmup_for(256) == 26  # 10 % of 256 steps, rounded
    qwen = load_config("qwen3-8b")
    assert (qwen.ao_sft.lr, qwen.ao_sft.lr_schedule, qwen.ao_sft.warmup_for(256), qwen.ao_sft.batch_size) == (
        1e-5, "linear", 26, 16)
    assert (qwen.lora.r, qwen.lora.alpha, len(qwen.lora.target_modules)) == (64, 128, 7)


@pytest.mark.parametrize("name", ["tiny", "smollm2"])
def test_tiny_and_smollm2_keep_their_ao_sft_optimizer(name):
    cfg = load_config(name).ao_sft
    assert (cfg.lr, cfg.lr_schedule, cfg.warmup_for(256), cfg.batch_size) == (1e-3, "cosine", 10, 16)


def test_ao_sft_builds_its_optimizer_from_its_own_schedule_fields(monkeypatch, tmp_path):
    seen = []
    _stop_at(monkeypatch, ao_sft, "optimizer_and_scheduler", seen)
    cfg = load_config("tiny", ["ao_sft.num_examples=20", "ao_sft.heldout_examples=12", "ao_sft.epochs=1",
                               "ao_sft.batch_size=2", "ao_sft.lr=3e-5", "ao_sft.lr_schedule=linear",
                               "ao_sft.warmup_steps=null", "ao_sft.warmup_fraction=0.2", "logging.progress=false",
                               f"logging.output_dir={tmp_path}"])
    with pytest.raises(Stop):
        ao_sft.run(cfg)
    (_, lr, weight_decay, warmup, schedule, total), _ = seen[0]
    assert (lr, warmup, schedule, total) == (3e-5, 2, "linear", 10)  # 20 items / batch 2 = 10 steps, 20 % warm-up


# ---------------------------------------------------------------------------- 6. gradient checkpointing

@pytest.mark.parametrize("stage", ["ao_sft", "sft"])
def test_ao_sft_and_sft_read_their_own_gradient_checkpointing(stage, monkeypatch, tmp_path):
    recipe = {"ao_sft": ao_sft, "sft": sft}[stage]
    for own, grpo_flag in ((True, False), (False, True)):
        seen = []
        _stop_at(monkeypatch, recipe, "load_oracle", seen)
        cfg = load_config("tiny", [f"{stage}.gradient_checkpointing={str(own).lower()}",
                                   f"grpo.gradient_checkpointing={str(grpo_flag).lower()}",
                                   f"logging.output_dir={tmp_path}"])
        with pytest.raises(Stop):
            recipe.run(cfg)
        assert seen[0][1]["gradient_checkpointing"] is own


# ---------------------------------------------------------------------------- 2. + 3. the pipeline

def test_full_pipeline_with_a_starting_adapter_evaluates_every_stage_and_pushes_last(sft_adapter, tmp_path,
                                                                                      monkeypatch, capsys):
    """stages [ao_sft, sft, grpo, eval] plus model.adapter on tiny, end to end, with a Hub push that fails."""
    import torch

    from grpo_ao import checkpoint
    from grpo_ao.oracle_layout import read_layout

    fresh = []
    real_load = ao_sft.load_oracle

    def spy_load(cfg, **kwargs):  # AO pretraining must start from a fresh LoRA, not from model.adapter
        model, tokenizer = real_load(cfg, **kwargs)
        fresh.append(all(torch.count_nonzero(p) == 0 for n, p in model.named_parameters() if "lora_B" in n))
        return model, tokenizer

    pushed = []

    def failing_push(adapter_dir, repo_id, private=True):
        pushed.append(repo_id)
        raise GrpoAoError(f"Pushing {adapter_dir} to the Hub repo {repo_id!r} failed: no network.")

    monkeypatch.setattr(ao_sft, "load_oracle", spy_load)
    monkeypatch.setattr(checkpoint, "push_to_hub", failing_push)
    run_dir = tmp_path / "run"
    cfg = load_config("tiny", [
        "stages=[ao_sft, sft, grpo, eval]", f"model.adapter={sft_adapter}", f"logging.output_dir={run_dir}",
        "logging.push_to_hub=me/oracle", "logging.progress=false", "ao_sft.num_examples=16",
        "ao_sft.heldout_examples=8", "ao_sft.epochs=1", "ao_sft.batch_size=8", "sft.num_examples=16",
        "sft.heldout_examples=8", "sft.epochs=1", "grpo.max_steps=2", "eval.num_examples=16"])
    with pytest.raises(GrpoAoError, match="3 of 3 hub pushes failed"):
        pipeline.run(cfg)
    assert fresh == [True]
    summary = json.loads((run_dir / "summary.json").read_text())
    report = json.loads((run_dir / "eval" / "eval.json").read_text())
    assert list(report["adapters"]) == ["start", "model_adapter", "ao", "sft", "grpo"] == list(summary["eval"])
    assert report["adapters"]["model_adapter"]["adapter"] == sft_adapter
    modes = {label: r["layout"]["mode"] for label, r in report["adapters"].items()}
    assert modes == {"start": "merged", "model_adapter": "merged", "ao": "none", "sft": "merged", "grpo": "merged"}
    for stage in ("ao_sft", "sft", "grpo"):
        assert read_layout(summary[stage]["adapter"]).stage == stage
    assert pushed == ["me/oracle-ao", "me/oracle-sft", "me/oracle"]
    err = capsys.readouterr().err
    for stage, repo in (("ao_sft", "me/oracle-ao"), ("sft", "me/oracle-sft"), ("grpo", "me/oracle")):
        assert f"grpo-ao push {summary[stage]['adapter']} {repo}" in err
    assert "no network" in err


def test_a_failed_push_after_grpo_keeps_the_summary_and_prints_the_retry(sft_adapter, tmp_path, monkeypatch, capsys):
    from grpo_ao import checkpoint

    def failing_push(adapter_dir, repo_id, private=True):
        raise GrpoAoError("no network")

    monkeypatch.setattr(checkpoint, "push_to_hub", failing_push)
    code = cli.main(["grpo", "--config", "tiny", "--output-dir", str(tmp_path), "--max-steps", "1",
                     f"model.adapter={sft_adapter}", "logging.push_to_hub=me/oracle", "logging.progress=false"])
    assert code == 2
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert f"grpo-ao push {summary['adapter']} me/oracle" in capsys.readouterr().err


def test_push_command_uploads_an_adapter_directory(tmp_path, fake_hub, capsys):
    (tmp_path / "adapter_config.json").write_text("{}")
    assert cli.main(["push", str(tmp_path), "me/oracle-sft"]) == 0
    assert fake_hub.calls == [("create", "me/oracle-sft", True), ("upload", str(tmp_path), "me/oracle-sft")]
    assert "https://huggingface.co/me/oracle-sft" in capsys.readouterr().out


def test_push_to_hub_must_be_a_repo_id():
    with pytest.raises(GrpoAoError, match="logging.push_to_hub='oracle'"):
        load_config("tiny", ["logging.push_to_hub=oracle"])


# ---------------------------------------------------------------------------- 4. ./.env for every command

def test_every_command_loads_dotenv_and_an_exported_variable_wins(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf-exported")
    (tmp_path / ".env").write_text("WANDB_API_KEY=wandb-from-dotenv-123\nHF_TOKEN=hf-from-dotenv-456\n")
    assert cli.main(["config", "validate", "tiny"]) == 0
    assert os.environ["WANDB_API_KEY"] == "wandb-from-dotenv-123"
    assert os.environ["HF_TOKEN"] == "hf-exported"
    out = capsys.readouterr()
    assert "from-dotenv" not in out.out + out.err and "hf-exported" not in out.out + out.err
    from grpo_ao.judge.chat import find_api_key

    assert find_api_key("WANDB_API_KEY") == ("wandb-from-dotenv-123", "./.env")
    assert find_api_key("HF_TOKEN") == ("hf-exported", "environment")


# ---------------------------------------------------------------------------- 5. content-keyed caches

def _data_file(path: Path, suffix: str = "") -> str:
    from importlib import resources

    rows = resources.files("grpo_ao").joinpath("resources", "builtin_train.jsonl").read_text().splitlines()[:60]
    path.write_text("".join(json.dumps({**json.loads(r), "context": json.loads(r)["context"] + suffix}) + "\n"
                            for r in rows))
    return str(path)


def test_ao_sft_activation_cache_is_not_reused_when_the_data_file_changes(tmp_path, monkeypatch):
    calls = []
    real = ao_sft.extract_in_batches
    monkeypatch.setattr(ao_sft, "extract_in_batches", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
    data = _data_file(tmp_path / "data.jsonl")
    cfg = load_config("tiny", [f"data.source={data}", "ao_sft.num_examples=8", "ao_sft.heldout_examples=40",
                               "ao_sft.heldout_contexts=20", "ao_sft.epochs=1", "ao_sft.batch_size=8",
                               "sft.num_examples=16", "sft.heldout_examples=8",
                               "logging.progress=false", "eval.batch_size=4", f"logging.output_dir={tmp_path / 'ao'}"])
    ao_sft.run(cfg)
    first = list(calls)
    assert first, "the first run reads the subject"  # training, held-out and counterfactual reads
    ao_sft.run(cfg)
    assert calls == first, "same data, same tokenizer, same code: the cache is reused"
    _data_file(tmp_path / "data.jsonl", suffix=" Then it rained.")  # same path, same config, other text
    ao_sft.run(cfg)
    assert calls == first + first, "changed data file: fresh activations"


def test_sft_cache_key_follows_the_tasks_the_tokenizer_and_the_adapter_files(tmp_path, tokenizer):
    from grpo_ao.data import Task
    from grpo_ao.models import build_tiny_tokenizer

    cfg = load_config("tiny")
    natural = sft.oracle_spec(cfg).without_system_prompt()
    tasks = [Task(0, "The soup was salty.", "Is this about food?", "Yes", "topic", 50, 2)]
    key = sft.cache_key(cfg, tasks, tokenizer, natural)
    assert sft.cache_key(cfg, list(tasks), build_tiny_tokenizer(), natural) == key, "deterministic"
    assert sft.cache_key(cfg, [replace(tasks[0], context="The soup was sweet.")], tokenizer, natural) != key
    other = build_tiny_tokenizer()
    other.add_tokens(["<extra>"])
    assert sft.cache_key(cfg, tasks, other, natural) != key
    assert sft.cache_key(cfg, tasks, tokenizer, replace(natural, mode="merged", system_prompt="Hi")) != key
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"one")
    with_adapter = replace(cfg, model=replace(cfg.model, adapter=str(adapter)))
    first = sft.cache_key(with_adapter, tasks, tokenizer, natural)
    (adapter / "adapter_model.safetensors").write_bytes(b"two")  # retrained in place
    assert sft.cache_key(with_adapter, tasks, tokenizer, natural) != first
    shutil.rmtree(adapter)
