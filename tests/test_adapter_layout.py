"""Adapters carry their oracle layout (grpo_ao_oracle.json): written by every checkpoint, read by eval, observe,
sft and grpo; a difference with the config is an error (training) or printed (asking), never silent."""

import json
from dataclasses import replace

import pytest

from grpo_ao import cli
from grpo_ao.config import load_config
from grpo_ao.errors import GrpoAoError
from grpo_ao.oracle_layout import LAYOUT_FILE, OracleLayout, read_layout
from grpo_ao.recipes import adapters, grpo, sft
from grpo_ao.recipes.setup import oracle_spec
from layout_files import adapter_dir

AO_LAYOUT = OracleLayout(stage="ao_sft", base_model="tiny", system_prompt_mode="none", system_prompt=None,
                         injection_layer=1, steering_coef=1.0, layer_percents=(25, 50, 75), min_positions=1,
                         max_positions=5, context_format="chat")


def test_the_shipped_smollm2_ao_adapter_records_the_base_oracle_layout():
    layout = read_layout("builtin:smollm2-ao")
    assert layout == OracleLayout(stage="ao_sft", base_model="smollm2", system_prompt_mode="none",
                                  system_prompt=None, injection_layer=1, steering_coef=1.0,
                                  layer_percents=(50,), min_positions=5, max_positions=16,
                                  context_format="chat", vector_preprocessing="none")


def test_a_checkpoint_writes_the_layout_attached_to_the_model_beside_the_adapter(tmp_path, tiny_model):
    from grpo_ao.checkpoint import save_checkpoint
    from grpo_ao.models import LoraSettings, attach_lora
    from grpo_ao.oracle_layout import attach_layout

    model = attach_lora(tiny_model, LoraSettings(r=2))
    plain = save_checkpoint(tmp_path / "plain", 1, model=model, optimizer=None, scheduler=None, trainer_state={})
    assert not (plain / "adapter" / LAYOUT_FILE).exists(), "nothing attached, nothing invented"
    attach_layout(model, AO_LAYOUT)
    final = save_checkpoint(tmp_path / "run", 1, model=model, optimizer=None, scheduler=None, trainer_state={})
    assert (final / "adapter" / "adapter_config.json").is_file()
    assert read_layout(str(final / "adapter")) == AO_LAYOUT
    assert json.loads((final / "adapter" / LAYOUT_FILE).read_text())["system_prompt_mode"] == "none"


def test_eval_and_observe_ask_an_adapter_in_the_layout_its_file_records(tmp_path, capsys):
    cfg = load_config("tiny")  # merged epistemic system prompt
    ao = adapter_dir(tmp_path, AO_LAYOUT)
    asked = adapters.cfg_for_adapter(cfg, ao, label="ao")
    spec = oracle_spec(asked)
    assert (spec.system_prompt, spec.mode) == (None, "none")
    out = capsys.readouterr().out
    assert "Asking adapter 'ao' in the layout it was trained in (system_prompt_mode: adapter 'none'" in out
    same = adapter_dir(tmp_path, adapters.written_layout(cfg, "sft"), "same")
    assert adapters.cfg_for_adapter(cfg, same) is cfg
    forced = replace(cfg, oracle=replace(cfg.oracle, layout_from_adapter=False))
    assert oracle_spec(adapters.cfg_for_adapter(forced, ao)).mode == "merged"
    assert "oracle.layout_from_adapter=false" in capsys.readouterr().out
    assert adapters.cfg_for_adapter(cfg, str(tmp_path / "no-file-here")) is cfg


def test_a_different_layer_or_k_is_a_warning_not_a_different_prompt(tmp_path, capsys):
    cfg = load_config("tiny")
    other = adapter_dir(tmp_path, replace(adapters.written_layout(cfg, "sft"), layer_percents=(50,), max_positions=3))
    assert adapters.cfg_for_adapter(cfg, other) is cfg
    assert "Warning: adapter" in capsys.readouterr().out
    assert adapters.check_start_layout(replace(cfg, model=replace(cfg.model, adapter=other)), "grpo") is not None


def test_grpo_from_an_adapter_trained_in_another_layout_exits_2_naming_the_fix(tmp_path, capsys):
    ao = adapter_dir(tmp_path, AO_LAYOUT)
    code = cli.main(["grpo", "--config", "tiny", f"model.adapter={ao}", "--output-dir", str(tmp_path / "g")])
    err = capsys.readouterr().err
    assert code == 2
    assert "system_prompt_mode: adapter 'none', config 'merged'" in err
    assert "oracle.system_prompt_mode=none" in err and "oracle.layout_from_adapter=false" in err
    cfg = load_config("tiny", [f"model.adapter={ao}", "oracle.layout_from_adapter=false"])
    assert adapters.check_start_layout(cfg, "grpo") == AO_LAYOUT, "the explicit override trains anyway"
    assert "oracle.layout_from_adapter=false" in capsys.readouterr().out


def test_sft_from_a_base_oracle_accepts_its_prompt_but_not_another_injection_layer(tmp_path):
    cfg = load_config("tiny", [f"model.adapter={adapter_dir(tmp_path, AO_LAYOUT)}"])
    start = adapters.check_start_layout(cfg, "sft", adapters.SFT_MUST_MATCH)
    assert adapters.natural_answer_spec(cfg, start).mode == "none"
    shifted = adapter_dir(tmp_path, replace(AO_LAYOUT, injection_layer=2), "l2")
    with pytest.raises(GrpoAoError, match="injection_layer: adapter 2, config 1.*oracle.injection_layer=2"):
        adapters.check_start_layout(load_config("tiny", [f"model.adapter={shifted}"]), "sft", adapters.SFT_MUST_MATCH)


def test_a_hub_adapter_without_a_reachable_file_uses_the_config_and_says_so(capsys):
    assert read_layout("someone/not-cached-oracle") is None  # HF_HUB_OFFLINE=1 in the tests
    assert "someone/not-cached-oracle" in capsys.readouterr().out


def test_a_layout_file_this_version_cannot_honour_is_a_clear_error(tmp_path):
    directory = tmp_path / "future"
    directory.mkdir()
    data = {**json.loads(json.dumps(AO_LAYOUT.__dict__, default=list)), "vector_preprocessing": "whitened"}
    (directory / LAYOUT_FILE).write_text(json.dumps(data))
    with pytest.raises(GrpoAoError, match="whitened"):
        read_layout(str(directory))


def test_each_training_stage_attaches_the_layout_it_trains_in(monkeypatch, tmp_path):
    seen = {}

    class Stop(Exception):
        pass

    def fake_load(cfg, **kwargs):
        seen.update(kwargs)
        raise Stop

    cfg = load_config("tiny", [f"logging.output_dir={tmp_path}"])
    for recipe in (sft, grpo):
        monkeypatch.setattr(recipe, "load_oracle", fake_load)
        with pytest.raises(Stop):
            recipe.run(cfg)
        assert seen["layout"] == adapters.written_layout(cfg, recipe.__name__.rsplit(".", 1)[1])
        assert seen["layout"].system_prompt_mode == "merged"


def test_ao_sft_straight_into_grpo_with_a_system_prompt_is_refused_at_load():
    with pytest.raises(GrpoAoError, match="Add sft between them"):
        load_config("tiny", ["stages=[ao_sft, grpo, eval]"])
    assert load_config("tiny", ["stages=[ao_sft, grpo, eval]", "oracle.system_prompt_mode=none"]).stages
    assert load_config("tiny", ["stages=[ao_sft, sft, grpo, eval]"]).stages
