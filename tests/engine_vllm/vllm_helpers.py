"""Builders shared by the vLLM tests: tiny models, oracle inputs, an engine on them."""

BLOCK = 32
"""KV block size of the test engines (the smallest the CPU attention takes): prompts of > 32 tokens get cached."""
QUESTIONS = [
    "What is the topic of this text about cooking and travel and music?",
    "Is the sentiment positive or negative?",
    "Which language is it, english or french or spanish or german?",
]


def build_tiny(arch: str, seed: int = 0):
    """A random tiny `qwen3` or `llama` causal LM (head_dim 32) and the offline tokenizer, eval mode."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    from grpo_ao.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    shape = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                 num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=512,
                 initializer_range=0.1, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                 eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(Qwen3Config(**shape)) if arch == "qwen3" else LlamaForCausalLM(LlamaConfig(**shape))
        model.get_input_embeddings().weight.data.mul_(2.0)  # peaked, yet the injection moves greedy tokens
    model.generation_config = GenerationConfig(eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id],
                                               pad_token_id=tokenizer.pad_token_id)
    return model.eval(), tokenizer


def oracle_inputs(tokenizer, ks, seed=0, hidden=64, questions=QUESTIONS, scale=3.0):
    """Left-padded oracle prompts (no system prompt) with K = ks[b] placeholders and random vectors."""
    import torch

    from grpo_ao.format import left_pad, render_oracle_prompt
    from grpo_ao.rollout import OracleInputs

    g = torch.Generator().manual_seed(seed)
    prompts = [render_oracle_prompt(tokenizer, questions[b % len(questions)], 2, k, None, mode="none")
               for b, k in enumerate(ks)]
    ids, mask, positions = left_pad(prompts, tokenizer.pad_token_id)
    vectors = [torch.randn(k, hidden, generator=g) * scale for k in ks]
    return OracleInputs(ids, mask, positions, vectors, [2] * len(ks))


def spec(layer: int = 1):
    from grpo_ao.rollout import OracleSpec

    return OracleSpec(system_prompt=None, mode="none", context_format="chat", injection_layer=layer, coef=1.0)


MAX_MODEL_LEN = 256
"""The test engines' longest prompt + completion."""


def start_engine(model, tokenizer, work_dir, *, sync="merge", eager=True, layer=1, dtype="float32", tol=1e-4,
                 **engine_kwargs):
    """save_for_vllm + a CPU engine (float32 unless told) with small blocks and a short max length; the parity
    tolerance `tol` (None: the dtype's default)."""
    from grpo_ao.rollout_config import RolloutConfig
    from grpo_ao.vllm import VllmEngine, save_for_vllm

    base = save_for_vllm(model, tokenizer, work_dir / "base")
    settings = RolloutConfig(engine="vllm", vllm_enforce_eager=eager, vllm_max_model_len=MAX_MODEL_LEN,
                             vllm_weight_sync=sync, parity_prompts=3, parity_tokens=8, parity_logprob_tol=tol)
    return VllmEngine(base, tokenizer, spec=spec(layer), settings=settings, dtype=dtype, device="cpu", seed=0,
                      work_dir=work_dir, max_lora_rank=8, engine_kwargs={"block_size": BLOCK, **engine_kwargs})


def no_injection(inputs, rows):
    """`inputs` with the placeholders of `rows` dropped (those prompts go to the engine un-steered)."""
    from dataclasses import replace

    import torch

    drop = set(rows)
    return replace(inputs, positions=[[] if b in drop else p for b, p in enumerate(inputs.positions)],
                   vectors=[torch.zeros(0, v.shape[1]) if b in drop else v for b, v in enumerate(inputs.vectors)])


def hf_greedy(model, tokenizer, inputs, tokens, layer=1, coef=1.0):
    """The HF injected path's greedy rollouts (G = 1) and their logprobs at temperature 1: ([N, T] ids, [N, T])."""
    from dataclasses import replace

    from grpo_ao.rollout import SamplingConfig, completion_logprobs, generate_rollouts

    s = replace(spec(layer), coef=coef)
    out = generate_rollouts(model, tokenizer, inputs, SamplingConfig(num_generations=1, max_new_tokens=tokens,
                                                                     greedy=True), spec=s)
    return out, completion_logprobs(model, out, 1.0, spec=s)


def engine_greedy(engine, inputs, tokens):
    from grpo_ao.rollout import SamplingConfig

    return engine.generate(inputs, SamplingConfig(num_generations=1, max_new_tokens=tokens, greedy=True))


def assert_same_greedy(ours, hf, hf_logprobs, atol=1e-4):
    """Same sampled ids and masks; logprobs within `atol` on the completion tokens."""
    import torch

    assert torch.equal(ours.completion_ids, hf.completion_ids), f"\nvLLM {ours.completion_ids}\nHF   {hf.completion_ids}"
    assert torch.equal(ours.completion_mask, hf.completion_mask)
    gap = ((ours.sampling_logprobs - hf_logprobs).abs() * hf.completion_mask).max()
    assert gap <= atol, f"max |Δ logprob| {gap}"


def injected_tokens(engine):
    from grpo_ao.vllm.models import injected_tokens as count

    return sum(engine.llm.collective_rpc(count))
