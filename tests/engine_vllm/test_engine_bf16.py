"""The engine in bfloat16 on the tiny Qwen3 against the HF bfloat16 path: the parity check passes with the dtype's
default tolerance, though greedy paths part at near-ties, and still fails on a real mismatch."""

import pytest
import torch
from vllm_helpers import build_tiny, oracle_inputs, start_engine

from grpo_ao.errors import GrpoAoError
from grpo_ao.rollout_config import PARITY_LOGPROB_TOL


@pytest.fixture(scope="module")
def bf16(tmp_path_factory):
    model, tok = build_tiny("qwen3")
    model = model.to(torch.bfloat16)
    engine = start_engine(model, tok, tmp_path_factory.mktemp("bf16"), dtype="bfloat16", tol=None)
    yield model, tok, engine
    engine.close()


def test_bf16_parity_check_passes_with_the_dtype_default(bf16):
    model, tok, engine = bf16
    report = engine.parity_check(model, tok, oracle_inputs(tok, [3, 1, 5], seed=4))
    assert report.tolerance == PARITY_LOGPROB_TOL["bfloat16"]
    assert 0 < report.max_abs_logprob_diff <= report.tolerance, report


def test_bf16_parity_check_still_fails_on_the_wrong_injection_layer(bf16):
    model, tok, engine = bf16
    right = engine.spec
    engine.spec = type(right)(**{**right.__dict__, "injection_layer": 2})
    try:
        with pytest.raises(GrpoAoError, match="parity check failed.*injection layer"):
            engine.parity_check(model, tok, oracle_inputs(tok, [3, 1, 5], seed=5))
    finally:
        engine.spec = right
