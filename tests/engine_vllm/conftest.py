"""Fixtures for the vLLM engine tests; these run only in .venv-vllm (`tests/test_vllm_suite.py` runs them).

Without vLLM (the main .venv) this folder collects nothing. vLLM's CPU attention supports head sizes of 32 and
more, so the tiny models here use head_dim 32 (the `tiny` config's Qwen3 has 16): a random Qwen3 and a random
Llama (SmolLM2's architecture) of 4 layers, width 64, on the offline tokenizer. Each test module starts its own
engine (module fixture) with a 1 GiB KV cache and closes it.
"""

import importlib.util
import os
import tempfile

import pytest

_vllm = importlib.util.find_spec("vllm")
if _vllm is None or _vllm.origin is None:  # (this folder itself is a namespace package named vllm)
    collect_ignore_glob = ["test_*.py"]  # the main venv: tests/test_vllm_suite.py runs these in .venv-vllm

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"
VLLM_HOME = tempfile.mkdtemp(prefix="grpo-ao-vllm-tests-")
os.environ["VLLM_CACHE_ROOT"] = os.path.join(VLLM_HOME, "cache")
os.environ["VLLM_RPC_BASE_PATH"] = os.path.join(VLLM_HOME, "rpc")
os.environ["VLLM_NO_USAGE_STATS"] = "1"

from vllm_helpers import build_tiny  # noqa: E402  (after the environment above)


@pytest.fixture(scope="session")
def qwen3():
    return build_tiny("qwen3")


@pytest.fixture(scope="session")
def llama():
    return build_tiny("llama")
