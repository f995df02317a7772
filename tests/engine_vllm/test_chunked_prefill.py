"""Chunked prefill: with a 32-token step budget the placeholders of one prompt arrive in different steps, and
each is steered exactly once, in the step that holds it."""

import pytest
from vllm_helpers import (
    assert_same_greedy,
    engine_greedy,
    hf_greedy,
    injected_tokens,
    oracle_inputs,
    start_engine,
)

LONG = "what is the topic of this text about cooking and sports and music and weather and science and travel ?"


@pytest.fixture(scope="module")
def engine(qwen3, tmp_path_factory):
    eng = start_engine(*qwen3, tmp_path_factory.mktemp("chunked"), max_num_batched_tokens=32, max_num_seqs=4,
                       enable_chunked_prefill=True)
    yield eng
    eng.close()


def test_chunked_prefill_injected_greedy_equals_hf_injected_greedy(qwen3, engine):
    model, tok = qwen3
    inputs = oracle_inputs(tok, [5, 2, 30], seed=6, questions=[LONG])
    assert inputs.prompt_mask.sum(dim=1).min() > 32, "every prompt must take more than one step"
    assert max(inputs.positions[2]) - min(inputs.positions[2]) > 20, "K=30 spans a chunk boundary"
    hf, hf_lp = hf_greedy(model, tok, inputs, 10)
    before = injected_tokens(engine)
    assert_same_greedy(engine_greedy(engine, inputs, 10), hf, hf_lp)
    assert injected_tokens(engine) - before == 5 + 2 + 30
