"""The rollout engines' parts that need no vLLM: the cache salt from vectors on any device and in any dtype, the
per-request sampler seeds, the completion mask from vLLM's finish reason, the tolerance per dtype, the HF engine's
seed, and the import direction (config → engine choice → engine)."""

import ast
from pathlib import Path

import pytest
import torch

from grpo_ao.rollout_config import PARITY_LOGPROB_TOL, RolloutConfig
from grpo_ao.vllm.requests import completion_row, prompt_request, request_seed, tensor_bytes

SRC = Path(__file__).resolve().parents[1] / "src" / "grpo_ao"


class OnGpu(torch.Tensor):
    """Stands in for a CUDA tensor: `.numpy()` raises as torch does off the CPU, until `.cpu()` / `.to("cpu")`
    returns a plain CPU tensor. Every other op keeps the subclass (the result stays "on the GPU")."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = super().__torch_function__(func, types, args, kwargs)
        to_cpu = func is torch.Tensor.cpu or (func is torch.Tensor.to and any(
            str(a).startswith("cpu") for a in [*args[1:], kwargs.get("device")] if isinstance(a, (str, torch.device))))
        return out.as_subclass(torch.Tensor) if to_cpu and isinstance(out, torch.Tensor) else out

    def numpy(self, *args, **kwargs):
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor "
                        "to host memory first.")


def _row(k=3, hidden=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    ids = torch.tensor([0, 0, 5, 6, 7, 7, 7, 8, 9])  # two left pads, then the prompt; placeholders at 4..6
    mask = torch.tensor([0, 0, 1, 1, 1, 1, 1, 1, 1])
    return ids, mask, [4, 5, 6][:k], (torch.randn(k, hidden, generator=g) * 3).to(dtype)


def test_the_cache_salt_never_calls_numpy_on_a_gpu_tensor():
    ids, mask, positions, vectors = _row()
    on_gpu = vectors.as_subclass(OnGpu)
    with pytest.raises(TypeError, match="cuda"):
        on_gpu.numpy()  # the stand-in raises where a CUDA tensor does
    prompt, injection = prompt_request(ids, mask, positions, on_gpu, layer=1, coef=1.0)
    same, same_injection = prompt_request(ids, mask, positions, vectors, layer=1, coef=1.0)
    assert prompt == same and injection == same_injection  # the salt depends on the values, not the device
    assert injection["positions"] == [2, 3, 4]  # unpadded coordinates
    units = torch.frombuffer(bytearray(injection["units"]), dtype=torch.float32).view(3, 8)
    torch.testing.assert_close(units, vectors / vectors.norm(dim=-1, keepdim=True), rtol=0, atol=1e-6)


def test_the_cache_salt_of_bfloat16_vectors_is_their_values_salt_and_differs_for_other_vectors():
    ids, mask, positions, vectors = _row(dtype=torch.bfloat16)
    bf16 = prompt_request(ids, mask, positions, vectors.as_subclass(OnGpu), layer=1, coef=1.0)[0]["cache_salt"]
    fp32 = prompt_request(ids, mask, positions, vectors.float(), layer=1, coef=1.0)[0]["cache_salt"]
    assert bf16 == fp32  # the same values: the units are computed in fp32 either way
    other = prompt_request(ids, mask, positions, _row(seed=1)[3], layer=1, coef=1.0)[0]["cache_salt"]
    layer2 = prompt_request(ids, mask, positions, vectors, layer=2, coef=1.0)[0]["cache_salt"]
    assert len({bf16, other, layer2}) == 3
    assert "cache_salt" not in prompt_request(ids, mask, [], vectors[:0], layer=1, coef=1.0)[0]  # no injection


def test_tensor_bytes_reads_any_dtype_from_any_device():
    x = torch.tensor([1.0, -2.0], dtype=torch.bfloat16)
    assert tensor_bytes(x.as_subclass(OnGpu)) == bytes([0x80, 0x3F, 0x00, 0xC0])  # bf16 1.0, -2.0, little-endian
    assert tensor_bytes(torch.tensor([[1.0], [2.0]]).T) == torch.tensor([1.0, 2.0]).numpy().tobytes()


def test_request_seeds_depend_on_the_call_seed_and_the_prompt_only():
    seeds = {request_seed(s, b) for s in range(4) for b in range(8)}
    assert len(seeds) == 32 and all(0 <= s < 2**63 for s in seeds)
    assert request_seed(123, 5) == request_seed(123, 5)


def test_a_completion_cut_by_the_model_length_is_truncated_even_when_the_pad_is_an_end_of_turn_id():
    pad = 2  # Qwen3: <|endoftext|> is the pad and an end-of-turn id
    # "length" with fewer than max_new_tokens ids: max_model_len cut it
    assert completion_row([7, 8, 9], "length", 6, pad) == ([7, 8, 9, pad, pad, pad], 3, True)
    assert completion_row([7, 8, 9, 4, 4, 4], "length", 6, pad) == ([7, 8, 9, 4, 4, 4], 6, True)  # max_tokens
    assert completion_row([7, 8, pad], "stop", 6, pad) == ([7, 8, pad, pad, pad, pad], 3, False)  # ended by pad
    assert completion_row([pad], "stop", 1, pad) == ([pad], 1, False)


def test_the_parity_tolerance_defaults_per_dtype_and_a_configured_one_wins():
    assert set(PARITY_LOGPROB_TOL) == {"float32", "bfloat16", "float16"}
    assert PARITY_LOGPROB_TOL["float32"] < PARITY_LOGPROB_TOL["bfloat16"]
    assert RolloutConfig().parity_tolerance("bfloat16") == PARITY_LOGPROB_TOL["bfloat16"]
    assert RolloutConfig(parity_logprob_tol=0.5).parity_tolerance("float32") == 0.5
    from grpo_ao.errors import GrpoAoError

    with pytest.raises(GrpoAoError, match="parity_logprob_tol"):
        RolloutConfig(parity_logprob_tol=0.0)


def test_the_hf_engine_samples_the_same_completions_for_the_same_seed(tiny):
    from grpo_ao.engine import HfEngine
    from grpo_ao.rollout import OracleInputs, OracleSpec, SamplingConfig

    model, tok = tiny
    spec = OracleSpec(system_prompt=None, mode="none", context_format="chat", injection_layer=1, coef=1.0)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    inputs = OracleInputs(ids, torch.ones_like(ids), [[2, 3]], [torch.randn(2, model.config.hidden_size)], [2])
    engine, sampling = HfEngine(model, tok, spec=spec), SamplingConfig(num_generations=4, max_new_tokens=8)
    first = engine.generate(inputs, sampling, seed=11).completion_ids
    torch.rand(100)  # whatever ran in between
    assert torch.equal(engine.generate(inputs, sampling, seed=11).completion_ids, first)
    assert not torch.equal(engine.generate(inputs, sampling, seed=12).completion_ids, first)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}


def test_the_rollout_config_sits_below_the_engine_choice_and_the_vllm_engine():
    vllm_files = sorted((SRC / "vllm").glob("*.py"))
    assert len(vllm_files) == 6, vllm_files
    for path in vllm_files:
        assert "grpo_ao.engine" not in _imports(path), f"{path.name} imports the engine choice back"
    assert not {"grpo_ao.engine", "grpo_ao.vllm", "grpo_ao.config"} & _imports(SRC / "rollout_config.py")
    from grpo_ao import config, engine, rollout_config

    assert engine.RolloutConfig is rollout_config.RolloutConfig is config.RolloutConfig


class _HfAsEngine:
    """A stand-in for the vLLM engine: its "greedy" path is the HF model's temperature-1 sample (so it parts from
    HF's greedy path), its logprobs the HF sampler's own plus `shift`."""

    def __init__(self, model, tok, tol, shift=0.0):
        from types import SimpleNamespace

        from grpo_ao.rollout import OracleSpec

        self.model, self.tok, self.shift = model, tok, shift
        self.settings = RolloutConfig(parity_prompts=3, parity_tokens=8, parity_logprob_tol=tol)
        self.spec = OracleSpec(system_prompt=None, mode="none", context_format="chat", injection_layer=1, coef=1.0)
        self.dtype, self.dtype_name = torch.float32, "float32"
        self.llm = SimpleNamespace(reset_prefix_cache=lambda: None)

    def generate(self, inputs, sampling, seed=None):
        from dataclasses import replace

        from grpo_ao.rollout import SamplingConfig, generate_rollouts

        torch.manual_seed(3)
        out = generate_rollouts(self.model, self.tok, inputs, SamplingConfig(
            num_generations=1, temperature=1.0, max_new_tokens=sampling.max_new_tokens), spec=self.spec)
        return replace(out, sampling_logprobs=(out.sampling_logprobs + self.shift) * out.completion_mask)


def _parity_inputs(model):
    from grpo_ao.rollout import OracleInputs

    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [0, 5, 6, 7, 11, 12], [0, 0, 5, 7, 8, 13]])
    mask = (torch.arange(6) >= torch.tensor([[0], [1], [2]])).long()
    vectors = [torch.randn(2, model.config.hidden_size, generator=g) * 3 for _ in range(3)]
    return OracleInputs(ids, mask, [[2, 3], [2, 3], [3, 4]], vectors, [2, 2, 2])


def test_parity_passes_when_greedy_paths_part_and_reports_only_the_splits_hf_was_sure_of(tiny):
    from grpo_ao.rollout import SamplingConfig, completion_logprobs, generate_rollouts
    from grpo_ao.vllm.parity import check_parity

    model, tok = tiny
    inputs = _parity_inputs(model)
    engine = _HfAsEngine(model, tok, tol=1e-4)
    report = check_parity(engine, model, tok, inputs)  # the old check (equal greedy ids) failed here
    assert report.max_abs_logprob_diff <= 1e-4 and report.tokens_compared > 0
    ours = engine.generate(inputs, SamplingConfig(num_generations=1, max_new_tokens=8))
    hf = generate_rollouts(model, tok, inputs, SamplingConfig(num_generations=1, max_new_tokens=8, greedy=True),
                           spec=engine.spec)
    parted = [r for r in range(3) if not torch.equal(ours.completion_ids[r], hf.completion_ids[r])]
    assert [s.row for s in report.splits] == parted and parted, "the sampled paths must part from greedy"
    for s in report.splits:
        assert s.token == int((ours.completion_ids[s.row] != hf.completion_ids[s.row]).nonzero()[0])
        hf_lp = completion_logprobs(model, hf, 1.0, spec=engine.spec)[s.row, s.token]
        ours_lp = completion_logprobs(model, ours, 1.0, spec=engine.spec)[s.row, s.token]
        assert abs(s.hf_margin - float(hf_lp - ours_lp)) < 1e-6 and s.hf_margin >= 0  # HF's greedy is its top-1
    # tolerance 1e-4, below every margin: every split is reported; one above them all: none is
    assert min(s.hf_margin for s in report.splits) > 1e-4 and report.confident_splits == report.splits
    assert "exceeds the tolerance: prompt" in report.summary()
    lenient = check_parity(_HfAsEngine(model, tok, tol=max(s.hf_margin for s in report.splits) + 1), model, tok, inputs)
    assert lenient.splits == report.splits and lenient.confident_splits == ()
    assert "part from HF's" in lenient.summary() and "exceeds" not in lenient.summary()


def test_parity_fails_when_the_engines_logprobs_are_off_by_more_than_the_tolerance(tiny):
    from grpo_ao.errors import GrpoAoError
    from grpo_ao.vllm.parity import check_parity

    model, tok = tiny
    with pytest.raises(GrpoAoError, match=r"differ by up to 0\.00[23].* > rollout.parity_logprob_tol=0\.001"):
        check_parity(_HfAsEngine(model, tok, tol=1e-3, shift=2e-3), model, tok, _parity_inputs(model))
