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
