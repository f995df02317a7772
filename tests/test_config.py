"""Run-config rules checked once at load: new sections and fields, stage order, cross-section rules and data
sizes. Every rule here is also a CLI exit-2 case in test_cli.py; this file checks what a message or a value must
be, and that a value the config accepts is one the components accept."""

import json
import re
from dataclasses import replace

import pytest

from grpo_ao.config import (
    STAGES,
    AoSftConfig,
    GrpoConfig,
    LoggingConfig,
    count_contexts,
    load_config,
    require_data_fits,
)
from grpo_ao.data import DataConfig
from grpo_ao.errors import GrpoAoError
from grpo_ao.steering import layer_for_percent


def _jsonl(path, contexts):
    path.write_text("".join(json.dumps({"context": c, "question": "Is it about cats?", "answer": "No"}) + "\n"
                            for c in contexts))
    return str(path)


def test_ao_sft_section_has_the_documented_defaults():
    cfg = load_config("tiny").ao_sft
    assert cfg == replace(AoSftConfig(), lr=1e-3, lr_schedule="cosine", warmup_steps=10)  # tiny's own optimizer
    assert (cfg.num_examples, cfg.heldout_examples, cfg.heldout_contexts) == (2048, 128, 24)
    assert (cfg.context_prediction_frac, cfg.context_prediction_tokens, cfg.max_answer_tokens) == (0.25, 4, 12)
    assert (cfg.epochs, cfg.batch_size, cfg.max_grad_norm, cfg.gradient_checkpointing) == (2, 16, 1.0, False)


@pytest.mark.parametrize("override", [
    "num_examples=0", "heldout_examples=0", "heldout_contexts=0", "context_prediction_tokens=0", "epochs=0",
    "batch_size=0", "max_answer_tokens=0", "context_prediction_frac=1.0", "context_prediction_frac=-0.1",
    "lr=0", "warmup_steps=-1", "max_grad_norm=0", "lr_schedule=step", "warmup_fraction=1.0",
])
def test_ao_sft_rejects_each_bad_value_naming_field_and_value(override):
    name, value = override.split("=")
    with pytest.raises(GrpoAoError, match=re.escape(f"ao_sft.{name}=")):
        load_config("tiny", [f"ao_sft.{override}"])


def test_ao_sft_context_prediction_frac_zero_is_allowed():
    assert load_config("tiny", ["ao_sft.context_prediction_frac=0"]).ao_sft.context_prediction_frac == 0.0


@pytest.mark.parametrize("stages", [["ao_sft"], ["ao_sft", "sft", "grpo", "eval"], ["sft", "eval"], ["grpo"]])
def test_stages_in_order_are_accepted(stages):
    assert load_config("tiny", [f"stages={stages}"]).stages == tuple(stages)


@pytest.mark.parametrize("stages, fragment", [
    (["sft", "ao_sft"], "in the order ao_sft, sft, grpo, eval; use ['ao_sft', 'sft']"),
    (["grpo", "grpo"], "each stage once"),
    (["train"], "unknown stages ['train']"),
    ([], "stages is empty"),
])
def test_stages_out_of_order_repeated_unknown_or_empty_are_rejected(stages, fragment):
    with pytest.raises(GrpoAoError, match=re.escape(fragment)):
        load_config("tiny", [f"stages={stages}"])
    assert STAGES == ("ao_sft", "sft", "grpo", "eval")


def test_advantage_routing_is_sequence_by_default_and_accepts_only_sequence_split_or_tag():
    assert GrpoConfig().advantage_routing == "sequence"
    assert load_config("tiny", ["grpo.advantage_routing=split"]).grpo.advantage_routing == "split"
    assert load_config("tiny", ["grpo.advantage_routing=tag"]).grpo.advantage_routing == "tag"
    with pytest.raises(GrpoAoError, match=re.escape("grpo.advantage_routing='tokens'; use sequence, split or tag")):
        load_config("tiny", ["grpo.advantage_routing=tokens"])


def test_an_eval_data_mistake_names_the_eval_data_path():
    with pytest.raises(GrpoAoError, match=r"^eval\.data\.layer_percents must be"):
        load_config("tiny", ["eval.data.layer_percents=[100]"])
    with pytest.raises(GrpoAoError, match=r"^data\.layer_percents must be"):
        load_config("tiny", ["data.layer_percents=[100]"])


def test_every_layer_percent_the_config_accepts_maps_to_a_subject_layer():
    for p in range(100):  # accepted by the config, so the steering code must accept it too
        assert 0 <= layer_for_percent(36, DataConfig(layer_percents=(p,)).layer_percents[0]) < 36
    with pytest.raises(GrpoAoError, match="0..99"):
        DataConfig(layer_percents=(100,))


def test_checkpoint_every_zero_is_refused_and_a_large_value_means_only_at_the_end():
    with pytest.raises(GrpoAoError, match=re.escape("logging.checkpoint_every=0 must be >= 1")):
        LoggingConfig(checkpoint_every=0)
    assert LoggingConfig(checkpoint_every=10**9, samples_every=0).samples_every == 0


def test_count_contexts_counts_distinct_contexts_of_a_jsonl_file(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", ["A", "B", "A", "C"])  # 4 rows, 3 distinct contexts
    assert count_contexts(DataConfig(source=path)) == 3
    assert count_contexts(DataConfig(source=path, max_examples=2)) == 2


def test_sft_held_out_prompts_must_fit_in_the_contexts_of_a_local_source(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [f"text {i}" for i in range(10)])
    small = [f"data.source={path}", "ao_sft.heldout_contexts=2"]
    cfg = load_config("tiny", [*small, "sft.num_examples=7", "sft.heldout_examples=3"])  # 7 + 3 = 10 fits
    assert (cfg.sft.num_examples, cfg.sft.heldout_examples) == (7, 3)
    with pytest.raises(GrpoAoError, match=re.escape("sft.num_examples + sft.heldout_examples = 8 + 3 is more than "
                                                    "the 10 contexts")):
        load_config("tiny", [*small, "sft.num_examples=8", "sft.heldout_examples=3"])


def test_ao_sft_must_leave_a_context_to_train_on(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [f"text {i}" for i in range(10)])
    small = [f"data.source={path}", "sft.num_examples=5", "sft.heldout_examples=5"]
    assert load_config("tiny", [*small, "ao_sft.heldout_contexts=9"]).ao_sft.heldout_contexts == 9
    with pytest.raises(GrpoAoError, match=re.escape("ao_sft.heldout_contexts=10 leaves none of the 10 contexts")):
        load_config("tiny", [*small, "ao_sft.heldout_contexts=10"])


def test_require_data_fits_is_what_a_recipe_calls_for_an_hf_source():
    cfg = load_config("tiny", ["sft.num_examples=20", "sft.heldout_examples=4", "ao_sft.heldout_contexts=3"])
    require_data_fits(cfg, 24)  # 20 + 4 = 24 contexts, 3 held out of 24
    with pytest.raises(GrpoAoError, match="sft.num_examples"):
        require_data_fits(cfg, 23)


def test_expand_open_answers_without_the_hosted_judge_is_refused_at_load():
    with pytest.raises(GrpoAoError, match=re.escape("judge.kind=reference. Set judge.kind=openai")):
        load_config("tiny", ["sft.expand_open_answers=true"])
    assert load_config("qwen3-8b", ["sft.expand_open_answers=true"]).sft.expand_open_answers


def test_an_unknown_builtin_adapter_is_refused_at_load_and_names_the_shipped_ones():
    from grpo_ao.errors import GrpoAoError
    from grpo_ao.models import builtin_adapters

    with pytest.raises(GrpoAoError, match="no such shipped adapter") as err:
        load_config("tiny", ["model.adapter=builtin:nope"])
    for name in builtin_adapters():
        assert f"builtin:{name}" in str(err.value)


def test_builtin_adapters_resolve_to_a_peft_directory_inside_the_package():
    from pathlib import Path

    from grpo_ao.models import builtin_adapters, resolve_adapter

    assert resolve_adapter(None) is None and resolve_adapter("org/name") == "org/name"
    for name in builtin_adapters():
        assert (Path(resolve_adapter(f"builtin:{name}")) / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("override, field", [
    ("rollout.engine=sglang", "rollout.engine="), ("rollout.vllm_weight_sync=copy", "rollout.vllm_weight_sync="),
    ("rollout.vllm_gpu_memory_utilization=1.0", "rollout.vllm_gpu_memory_utilization="),
    ("rollout.vllm_max_model_len=16", "rollout.vllm_max_model_len="), ("rollout.parity_prompts=-1", "rollout.parity_prompts="),
    ("rollout.parity_tokens=0", "rollout.parity_tokens="), ("rollout.parity_logprob_tol=0", "rollout.parity_logprob_tol="),
    ("rollout.parity_every=-1", "rollout.parity_every="), ("grpo.tis_cap=0.5", "grpo.tis_cap="),
    ("sampling.min_new_tokens=17", "sampling.min_new_tokens="), ("grpo.tag_expectation=true", "grpo.tag_expectation="),
    ("grpo.format_anchor=-1", "grpo.format_anchor="), ("grpo.format_anchor=1", "grpo.format_anchor="),
    ("grpo.tag_entropy=-0.1", "grpo.tag_entropy="), ("grpo.tag_entropy=0.01", "grpo.tag_entropy="),
    ("grpo.answer_anchor=-1", "grpo.answer_anchor="), ("grpo.answer_anchor=1", "grpo.answer_anchor="),
    ("grpo.answer_anchor_source=builtin", "grpo.answer_anchor_source="),
])
def test_rollout_engine_and_tis_settings_reject_bad_values_naming_the_field(override, field):
    with pytest.raises(GrpoAoError, match=re.escape(field)):
        load_config("tiny", [override])


@pytest.mark.parametrize("source", ["foo.txt", "/no/such/anchor.jsonl"])
def test_a_bad_answer_anchor_source_is_refused_at_load_naming_the_field(source):
    anchored = ["grpo.advantage_routing=tag", "grpo.tag_expectation=true", "grpo.answer_anchor=1"]
    with pytest.raises(GrpoAoError, match=re.escape("grpo.answer_anchor_source")):
        load_config("tiny", [*anchored, f"grpo.answer_anchor_source={source}"])
    assert load_config("tiny", [*anchored, "grpo.answer_anchor_source=builtin"]).grpo.answer_anchor_source == "builtin"


def test_the_vllm_engine_with_the_tiny_model_on_cpu_is_refused_at_load_with_the_reason():
    with pytest.raises(GrpoAoError, match="head"):
        load_config("tiny", ["rollout.engine=vllm", "model.device=cpu"])
    assert load_config("smollm2", ["rollout.engine=vllm"]).rollout.engine == "vllm"
    assert load_config("tiny", ["grpo.tis_cap=2", "sampling.min_new_tokens=16"]).grpo.tis_cap == 2
