"""Checkpoints: round trip, plain-peft loading, crash safety, pruning, Hub push errors."""

import json
import random

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import Qwen3Config, Qwen3ForCausalLM

from grpo_ao import checkpoint
from grpo_ao.checkpoint import latest_checkpoint, load_checkpoint, push_to_hub, save_checkpoint
from grpo_ao.errors import GrpoAoError

IDS = torch.tensor([[1, 5, 9, 13, 2, 7]])


def _base(seed=0):
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16,
    )  # fmt: skip
    return Qwen3ForCausalLM(config)


def _setup(seed=0):
    """A LoRA model on a tiny Qwen3 (same base weights for every seed), AdamW and a warmup schedule."""
    base = _base(0)
    torch.manual_seed(seed)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 10))
    return model, optimizer, scheduler


def _train_step(model, optimizer, scheduler):
    loss = model(IDS, labels=IDS).loss
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def _lora_state(model):
    return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}


def _save(run_dir, step, objs, **kwargs):
    model, optimizer, scheduler = objs
    return save_checkpoint(
        run_dir, step, model=model, optimizer=optimizer, scheduler=scheduler,
        trainer_state={"data_position": 7 * step, "judge_cache": "cache.sqlite"}, **kwargs,
    )  # fmt: skip


def test_round_trip_restores_adapter_optimizer_scheduler_and_rng(tmp_path):
    original = _setup(seed=0)
    _train_step(*original)
    _train_step(*original)
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    path = _save(tmp_path, 2, original)
    saved_lora = _lora_state(original[0])
    expected_draws = (torch.rand(3), random.random(), np.random.rand())

    resumed = _setup(seed=123)  # a fresh process: other LoRA init, empty optimizer
    some_a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert not torch.equal(_lora_state(resumed[0])[some_a], saved_lora[some_a])
    state = load_checkpoint(path, model=resumed[0], optimizer=resumed[1], scheduler=resumed[2])

    assert state == {"step": 2, "data_position": 14, "judge_cache": "cache.sqlite"}
    for name, value in _lora_state(resumed[0]).items():
        torch.testing.assert_close(value, saved_lora[name], atol=0, rtol=0)
    assert resumed[2].state_dict()["last_epoch"] == 2
    assert resumed[1].state_dict()["state"][0]["step"] == 2
    torch.testing.assert_close(torch.rand(3), expected_draws[0], atol=0, rtol=0)
    assert random.random() == expected_draws[1]
    assert np.random.rand() == expected_draws[2]
    # the next update is identical to the uninterrupted run's (Adam moments and lr restored)
    _train_step(*original)
    _train_step(*resumed)
    for name, value in _lora_state(resumed[0]).items():
        torch.testing.assert_close(value, _lora_state(original[0])[name], atol=1e-7, rtol=0)


def test_checkpoint_layout_and_adapter_loads_with_plain_peft(tmp_path):
    objs = _setup()
    _train_step(*objs)
    path = _save(tmp_path, 1, objs)
    assert path == tmp_path / "checkpoints" / "step-000001"
    names = {p.name for p in path.iterdir()}
    assert names == {"adapter", "optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json", "COMPLETE"}
    assert {p.name for p in (path / "adapter").iterdir()} >= {
        "adapter_model.safetensors",
        "adapter_config.json",
    }
    assert json.loads((path / "trainer_state.json").read_text())["data_position"] == 7

    plain = PeftModel.from_pretrained(_base(0), path / "adapter").eval()
    objs[0].eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(IDS).logits, objs[0](IDS).logits, atol=1e-6, rtol=0)


def test_latest_checkpoint_ignores_temp_and_incomplete_dirs(tmp_path):
    objs = _setup()
    assert latest_checkpoint(tmp_path) is None
    good = _save(tmp_path, 3, objs)
    root = tmp_path / "checkpoints"
    (root / ".tmp-step-000009-abc").mkdir()  # crashed before the rename
    (root / ".tmp-step-000009-abc" / "COMPLETE").write_text("")
    (root / "step-000007").mkdir()  # renamed by hand, or a copy cut short: no COMPLETE marker
    (root / "step-000007" / "trainer_state.json").write_text("{}")
    assert latest_checkpoint(tmp_path) == good
    with pytest.raises(GrpoAoError, match="not a complete checkpoint"):
        load_checkpoint(root / "step-000007", model=objs[0], optimizer=None, scheduler=None)


def test_crash_mid_write_leaves_previous_checkpoint_as_latest(tmp_path, monkeypatch):
    objs = _setup()
    first = _save(tmp_path, 1, objs)
    real_save = torch.save

    def crash_on_rng(obj, f, *args, **kwargs):
        if str(f).endswith("rng.pt"):
            raise KeyboardInterrupt  # killed mid-write
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", crash_on_rng)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 2, objs)
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path) == first
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000001"]


def test_keep_last_prunes_oldest_but_never_the_newest_save(tmp_path):
    objs = _setup()
    for step in range(1, 6):
        _save(tmp_path, step, objs, keep_last=2)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-000004", "step-000005"]
    _save(tmp_path, 2, objs, keep_last=2)  # lower step than the rest: still kept, it was just written
    assert sorted(p.name for p in root.iterdir()) == ["step-000002", "step-000004", "step-000005"]
    _save(tmp_path, 5, objs, keep_last=None)  # same step again: replaced in place
    assert (root / "step-000005" / "COMPLETE").is_file()
    assert latest_checkpoint(tmp_path) == root / "step-000005"
    with pytest.raises(GrpoAoError, match="keep_last"):
        _save(tmp_path, 6, objs, keep_last=0)


def test_push_to_hub_turns_failures_into_grpo_ao_errors(tmp_path, monkeypatch, fake_hub):
    import huggingface_hub

    with pytest.raises(GrpoAoError, match="adapter_config.json"):
        push_to_hub(tmp_path, "me/oracle")
    (tmp_path / "adapter_config.json").write_text("{}")
    assert push_to_hub(tmp_path, "me/oracle") == "https://huggingface.co/me/oracle"
    assert fake_hub.calls == [("create", "me/oracle", True), ("upload", str(tmp_path), "me/oracle")]

    class OfflineApi(fake_hub.api):
        def create_repo(self, repo_id, private, exist_ok):
            raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub, "HfApi", OfflineApi)
    with pytest.raises(GrpoAoError, match="me/oracle.*no network"):
        push_to_hub(tmp_path, "me/oracle")
