"""`model.compile`: the decoder blocks' attention and MLP compiled, the injection hook still applied.

Compiled with Dynamo's `eager` backend: graph capture, guards, dynamic shapes and the dispatch around the hooks
are what compile could get wrong about the injection, and they are the same whatever backend runs the graphs.
Inductor's code generation costs ~30 s per variant on these 2 CPU cores (measured once, by hand: a no-grad forward
and a training forward+backward compiled with Inductor on the tiny model, logprobs within 5.3e-6 of eager) and
AOTAutograd alone ~50 s for this file; Inductor runs for real in scripts/gpu_check.sh on a GPU."""

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from grpo_ao import model_compile
from grpo_ao.errors import GrpoAoError
from grpo_ao.format import ORACLE_SYSTEM_PROMPT
from grpo_ao.model_compile import compile_blocks, is_compiled
from grpo_ao.models import (
    LoraSettings,
    ModelConfig,
    attach_lora,
    build_tiny_model_and_tokenizer,
    compile_enabled,
    load_model,
)
from grpo_ao.rollout import (
    OracleSpec,
    Rollouts,
    SamplingConfig,
    build_oracle_inputs,
    completion_logprobs,
    generate_rollouts,
    injected_logprobs,
)

SPEC = OracleSpec(system_prompt=ORACLE_SYSTEM_PROMPT, mode="merged", context_format="chat", injection_layer=1,
                  coef=1.0)


class T:
    def __init__(self, context: str, question: str, layer_percent: int, num_positions: int) -> None:
        self.context, self.question, self.layer_percent, self.num_positions = context, question, layer_percent, \
            num_positions


TASKS = [T("I baked bread with butter today.", "Is this about food?", 50, 2),
         T("The match ended in a draw after extra time.", "What is the topic?", 25, 4),
         T("It rained all week in the mountains.", "Is it about weather?", 75, 3)]


@pytest.fixture(autouse=True)
def aot_eager(monkeypatch):
    monkeypatch.setattr(model_compile, "BACKEND", "eager")
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def oracle(compiled: bool):
    """The tiny model with a LoRA whose B matrices are non-zero (so the adapter changes the forward)."""
    model, tokenizer = build_tiny_model_and_tokenizer(seed=0)
    torch.manual_seed(1)
    model = attach_lora(model, LoraSettings(r=4, dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    if compiled:
        compile_blocks(model)
    return model, tokenizer


def fixed_rollouts(model, tokenizer, rows: int = 3) -> Rollouts:
    inputs = build_oracle_inputs(model, tokenizer, TASKS[:rows], spec=SPEC)
    completion = torch.arange(11, 11 + rows * 5).reshape(rows, 5)  # [rows, 5] fixed ids
    return Rollouts(inputs.prompt_ids, inputs.prompt_mask, inputs.positions, inputs.vectors, completion,
                    torch.ones(rows, 5, dtype=torch.long), torch.ones(rows, dtype=torch.bool), [""] * rows, 1)


def train_logprobs(model, rollouts, spec=SPEC):
    """Training forward (train mode, grad) with the injection, and the LoRA gradients of sum(logprobs)."""
    model.train()
    model.zero_grad(set_to_none=True)
    with injected_logprobs(model, rollouts, 1.0, spec=spec) as logprobs:  # [n, T]
        logprobs.sum().backward()
    model.eval()
    return logprobs.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


def test_compiled_training_forward_equals_eager_and_the_injection_still_acts():
    eager, tokenizer = oracle(compiled=False)
    compiled, _ = oracle(compiled=True)
    rollouts = fixed_rollouts(eager, tokenizer)
    lp_eager, grads_eager = train_logprobs(eager, rollouts)
    lp_compiled, grads_compiled = train_logprobs(compiled, rollouts)
    assert is_compiled(compiled) and not is_compiled(eager)
    assert counters["stats"]["unique_graphs"] > 0, "the compiled attention and MLP ran"
    torch.testing.assert_close(lp_compiled, lp_eager, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads_compiled, grads_eager, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    lp_plain, _ = train_logprobs(compiled, rollouts, spec=OracleSpec(**{**SPEC.__dict__, "coef": 0.0}))
    assert (lp_compiled - lp_plain).abs().max() > 1e-2, "the injection must change the compiled forward"


def test_compiled_graphs_do_not_multiply_with_depth_or_with_shapes():
    model, tokenizer = oracle(compiled=True)
    train_logprobs(model, fixed_rollouts(model, tokenizer, rows=3))
    after_first = counters["stats"]["unique_graphs"]
    train_logprobs(model, fixed_rollouts(model, tokenizer, rows=2))  # another batch size and prompt length
    assert counters["stats"]["unique_graphs"] == after_first, "dynamic shapes: no recompilation per shape"
    inputs = build_oracle_inputs(model, tokenizer, TASKS, spec=SPEC)
    calls = []
    block = model.get_base_model().model.layers[SPEC.injection_layer]
    handle = block.register_forward_hook(lambda module, args, out: calls.append(1))
    generate_rollouts(model, tokenizer, inputs, SamplingConfig(2, max_new_tokens=4), spec=SPEC)
    handle.remove()
    assert len(calls) == 1 + 4, "the compiled block's hooks run on the prefill and on every decode step"
    # attention (no cache: training, eval) and MLP (adapter off/on, decode, grad/no grad): a handful of variants,
    # shared by the 8 blocks; a graph per block (the layer index in the KV-cache update) would give 8+ per variant
    assert counters["stats"]["unique_graphs"] < len(model.get_base_model().model.layers)


def test_a_compile_failure_is_a_user_error_naming_model_compile_false(monkeypatch):
    def broken_backend(graph, example_inputs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(model_compile, "BACKEND", broken_backend)
    model, tokenizer = oracle(compiled=True)
    with pytest.raises(GrpoAoError, match="model.compile=false"):
        completion_logprobs(model, fixed_rollouts(model, tokenizer), 1.0, spec=SPEC)


def test_compile_defaults_to_on_with_cuda_and_off_on_the_cpu():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert compile_enabled(ModelConfig(), cuda) and not compile_enabled(ModelConfig(), cpu)
    assert not compile_enabled(ModelConfig(compile=False), cuda) and compile_enabled(ModelConfig(compile=True), cpu)
    assert not is_compiled(load_model(ModelConfig(device="cpu"))[0])
    assert is_compiled(load_model(ModelConfig(device="cpu", compile=True))[0])
