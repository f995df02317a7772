"""Session fixtures: the tiny random Qwen3 and its offline tokenizer. No test touches the network."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture(scope="session")
def tiny():
    from grpo_ao.models import build_tiny_model_and_tokenizer

    return build_tiny_model_and_tokenizer(seed=0)


@pytest.fixture(scope="session")
def tokenizer(tiny):
    return tiny[1]


@pytest.fixture()
def tiny_model():
    """A fresh tiny model per test (tests may wrap or train it)."""
    from grpo_ao.models import build_tiny_model_and_tokenizer

    return build_tiny_model_and_tokenizer(seed=0)[0]


SFT_FIXTURE_OVERRIDES = [
    "logging.progress=false",
    "sft.num_examples=32",
    "sft.heldout_examples=8",
    "sft.epochs=12",
    "sft.batch_size=8",
]
"""A format SFT that takes ~10 s on 2 CPU cores; its greedy answers parse (checked below)."""


@pytest.fixture(scope="session")
def sft_adapter(tmp_path_factory):
    """Path of a format-SFT'd LoRA adapter on the tiny model, trained once per session.

    A fresh LoRA on the random tiny model never writes `[epistemic status: X]`, so every rollout
    is a parse failure with the same reward and GRPO gets no gradient; GRPO tests start here.
    """
    from grpo_ao.config import load_config
    from grpo_ao.recipes import sft

    run_dir = tmp_path_factory.mktemp("sft_fixture")
    summary = sft.run(load_config("tiny", [f"logging.output_dir={run_dir}", *SFT_FIXTURE_OVERRIDES]))
    assert summary["parse_rate_after"] >= 0.5, f"the SFT fixture did not learn the format: {summary}"
    return summary["adapter"]


@pytest.fixture()
def fake_hub(monkeypatch):
    """`huggingface_hub.HfApi` replaced by a recorder: `.calls` lists ("create", repo, private) and ("upload",
    folder, repo); `.api` is the class, to subclass for failures (install a subclass with monkeypatch)."""
    import types

    import huggingface_hub

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, private, exist_ok):
            calls.append(("create", repo_id, private))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, folder_path, repo_id, commit_message):
            calls.append(("upload", folder_path, repo_id))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    return types.SimpleNamespace(calls=calls, api=FakeApi)
