"""The engine on the tiny Llama (SmolLM2's architecture) under torch.compile: the injection lives in the compiled
graph, so greedy tokens still equal the HF injected path's."""

import pytest
from vllm_helpers import (
    assert_same_greedy,
    engine_greedy,
    hf_greedy,
    injected_tokens,
    oracle_inputs,
    start_engine,
)


@pytest.fixture(scope="module")
def engine(llama, tmp_path_factory):
    eng = start_engine(*llama, tmp_path_factory.mktemp("llama"), eager=False)
    yield eng
    eng.close()


def test_compiled_llama_injected_greedy_equals_hf_injected_greedy(llama, engine):
    model, tok = llama
    inputs = oracle_inputs(tok, [3, 1, 5], seed=1)
    hf, hf_lp = hf_greedy(model, tok, inputs, 12)
    before = injected_tokens(engine)
    assert_same_greedy(engine_greedy(engine, inputs, 12), hf, hf_lp)
    assert injected_tokens(engine) - before == 3 + 1 + 5


def test_compiled_llama_mixed_batch_with_an_unsteered_prompt(llama, engine):
    from vllm_helpers import no_injection

    model, tok = llama
    inputs = oracle_inputs(tok, [2, 4, 1], seed=2)
    steered, steered_lp = hf_greedy(model, tok, inputs, 10)
    plain, plain_lp = hf_greedy(model, tok, inputs, 10, coef=0.0)
    out = engine_greedy(engine, no_injection(inputs, [1]), 10)  # row 1 without injection, rows 0 and 2 with
    for row, (ref, ref_lp) in enumerate([(steered, steered_lp), (plain, plain_lp), (steered, steered_lp)]):
        assert (out.completion_ids[row] == ref.completion_ids[row]).all(), f"row {row}"
        assert (out.sampling_logprobs[row] - ref_lp[row]).abs().mul(ref.completion_mask[row]).max() <= 1e-4


def test_parity_check_passes_on_the_compiled_engine(llama, engine):
    model, tok = llama
    report = engine.parity_check(model, tok, oracle_inputs(tok, [3, 1, 5], seed=3))
    assert report.tokens_compared > 0 and report.max_abs_logprob_diff <= 1e-4
