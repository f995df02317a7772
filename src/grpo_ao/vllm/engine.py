"""The vLLM rollout engine (`rollout.engine=vllm`): the HF path's `Rollouts`, sampled by vLLM in-process.

One engine lives beside the trainer (colocated; in-process, `VLLM_ENABLE_V1_MULTIPROCESSING=0`). It loads the
base checkpoint written by `save_for_vllm`, under an injecting model class (`grpo_ao.vllm.models`), and:

1. `generate`: one request per prompt with `SamplingParams(n=G)`; the prompt goes in as its unpadded token ids
   (never text), its placeholders (shifted by the left padding) and unit vectors in `extra_args`, and a
   `cache_salt` hashed from them: vLLM's prefix cache keys on token ids only, so without the salt a steered
   prompt would reuse the KV of the same prompt steered differently (or not at all). Sampled ids come back as
   they are (never re-tokenized), padded like the HF path, with their logprobs at the sampling temperature
   (`logprobs_mode="processed_logprobs"`: after temperature, top-k and top-p; equal to the trainer's
   `rollout.completion_logprobs` when top_p = 1 and top_k = 0). A call's seed (the GRPO chunk's) becomes one
   vLLM sampler seed per prompt (`request_seed`), so its completions do not depend on the rank, the engine's past
   requests or a restart. Whether a completion ended comes from vLLM's `finish_reason` ("stop" = an end-of-turn
   id), never from the ids: a cut by max_model_len is truncated even where the pad id is an end-of-turn id.
2. `sync_weights` after each optimizer step: `merge` loads W_base + ΔW for the adapted layers (no LoRA kernels
   while sampling, as TRL's colocate mode); `lora` saves the adapter and samples with a new `LoRARequest`.
   Both reset the prefix cache (its KV was computed with the old policy).
3. `parity_check`: the engine's logprobs of its own greedy tokens against the HF training forward's
   (`grpo_ao.vllm.parity`).

Not done: multi-GPU (tensor/pipeline parallel), the multi-process engine, speculative decoding.
"""

from __future__ import annotations

import gc
import json
import os
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from grpo_ao.errors import GrpoAoError
from grpo_ao.models import DTYPES
from grpo_ao.rollout import (
    OracleInputs,
    OracleSpec,
    Rollouts,
    SamplingConfig,
    end_of_turn_ids,
)
from grpo_ao.rollout_config import RolloutConfig
from grpo_ao.vllm.requests import completion_row, prompt_request, request_seed
from grpo_ao.vllm.weights import merged_weights, save_adapter

INSTALL_HINT = "bash scripts/install_vllm.sh (then use .venv-vllm/bin/python)"
CPU_KV_CACHE_GIB = 2
"""KV cache on CPU when VLLM_CPU_KVCACHE_SPACE is unset (vLLM would otherwise reserve 90 % of the RAM)."""


def import_vllm() -> Any:
    """`import vllm`, or a GrpoAoError that says how to install it."""
    try:
        import vllm
    except ImportError as e:
        raise GrpoAoError(f"rollout.engine=vllm needs vLLM, which is not importable here ({e}). "
                          f"Install it with `{INSTALL_HINT}`.") from e
    if getattr(vllm, "__file__", None) is None:  # a folder named vllm on sys.path, not vLLM
        raise GrpoAoError(f"rollout.engine=vllm needs vLLM, which is not installed here. Install it with "
                          f"`{INSTALL_HINT}`.")
    return vllm


def set_vllm_env(work_dir: Path) -> None:
    """In-process engine, no usage stats, vLLM's caches and sockets under `work_dir` unless the user chose."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine reads the runner in this process
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("VLLM_CACHE_ROOT", str(work_dir / "vllm-cache"))
    os.environ.setdefault("VLLM_RPC_BASE_PATH", str(work_dir / "vllm-rpc"))


class VllmEngine:
    """Samples `Rollouts` with vLLM; see the module docstring. Call `sync_weights(model)` before the first
    `generate` when the policy's adapter is not zero, and after every optimizer step."""

    def __init__(self, model_dir: str | Path, tokenizer: Any, *, spec: OracleSpec, settings: RolloutConfig,
                 dtype: str, device: str, seed: int, work_dir: Path, max_lora_rank: int = 64,
                 engine_kwargs: dict[str, Any] | None = None):
        """Start the engine on the base checkpoint `model_dir` (from `save_for_vllm`).

        Args:
            max_lora_rank: largest adapter rank the `lora` sync accepts (vLLM sizes its LoRA buffers from it).
            engine_kwargs: extra `vllm.LLM` arguments (e.g. max_num_batched_tokens); they win over ours.
        """
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        set_vllm_env(self.work_dir)
        vllm = import_vllm()
        from vllm.platforms import current_platform

        from grpo_ao.vllm import models

        self.spec, self.settings, self.tokenizer = spec, settings, tokenizer
        self.dtype, self.dtype_name = DTYPES[dtype], dtype
        on_cpu = current_platform.is_cpu()
        if device != "auto" and on_cpu != str(device).startswith("cpu"):
            raise GrpoAoError(f"model.device={device!r} but the installed vLLM runs on "
                              f"{'the CPU' if on_cpu else 'a GPU'}; install the matching build with `{INSTALL_HINT}`.")
        config = json.loads((Path(model_dir) / "config.json").read_text())
        arch = (config.get("architectures") or ["?"])[0]
        if arch not in models.ARCHITECTURES:
            raise GrpoAoError(f"rollout.engine=vllm supports {', '.join(models.ARCHITECTURES)}; the model is {arch}. "
                              "Use rollout.engine=hf.")
        if on_cpu:
            _check_cpu_head_size(config)
        models.register()
        generation = SimpleNamespace(generation_config=_generation_config(model_dir))
        self.eos_ids = end_of_turn_ids(generation, tokenizer)
        kwargs: dict[str, Any] = dict(
            model=str(model_dir), skip_tokenizer_init=True, dtype=dtype, seed=seed,
            max_model_len=settings.vllm_max_model_len, enforce_eager=settings.vllm_enforce_eager,
            enable_prefix_caching=True, logprobs_mode="processed_logprobs", generation_config="vllm",
            hf_overrides={"architectures": [models.ARCHITECTURES[arch]],
                          "grpo_ao_injection_layer": spec.injection_layer, "grpo_ao_coef": spec.coef},
        )
        if settings.vllm_weight_sync == "lora":
            kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=max_lora_rank)
        if on_cpu:
            if not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
                kwargs["kv_cache_memory_bytes"] = CPU_KV_CACHE_GIB * 2**30
            # vLLM rewinds a seeded request's generator after a partial prefill, which CPU generators cannot do
            # ("CPU Generator does not use offset"): whole prefills only, so seeded sampling works on CPU too
            kwargs["enable_chunked_prefill"] = False
        else:
            kwargs.update(gpu_memory_utilization=settings.vllm_gpu_memory_utilization,
                          enable_sleep_mode=settings.vllm_sleep_mode)
        kwargs.update(engine_kwargs or {})
        self.llm = vllm.LLM(**kwargs)
        # seeded sampling on CPU breaks on partial prefills (above); engine_kwargs may have turned them back on
        self.seeds_supported = not (on_cpu and self.llm.llm_engine.vllm_config.scheduler_config.enable_chunked_prefill)
        self.llm.collective_rpc(models.attach_runner)
        self.on_cpu = on_cpu
        self.syncs = 0
        self.lora_request: Any = None
        self.asleep = False

    # ---------------------------------------------------------------- sampling

    def sampling_params(self, sampling: SamplingConfig, injection: dict[str, Any] | None, n: int,
                        seed: int | None = None) -> Any:
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        from grpo_ao.vllm.models import INJECTION_KEY

        params: dict[str, Any] = {"temperature": 0.0} if sampling.greedy else {
            "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k, "seed": seed}
        return SamplingParams(
            n=n, max_tokens=sampling.max_new_tokens, min_tokens=sampling.min_new_tokens,
            stop_token_ids=list(self.eos_ids),
            logprobs=0, detokenize=False, output_kind=RequestOutputKind.FINAL_ONLY,
            extra_args=None if injection is None else {INJECTION_KEY: injection}, **params,
        )

    def generate(self, inputs: OracleInputs, sampling: SamplingConfig, seed: int | None = None) -> Rollouts:
        """G completions per prompt with injection: `rollout.generate_rollouts`'s `Rollouts` (row i belongs to
        prompt i // G) plus `sampling_logprobs` [N, T].

        Args:
            seed: the call's sampling seed (the GRPO chunk's): prompt b samples with `request_seed(seed, b)`, so
                the same completions come out on any rank, in any engine, after a resume. None: vLLM's own
                generator (the engine's start-up seed, advanced by every request before).
        """
        assert not self.asleep, "wake_up() the engine before generate()"
        if seed is not None and not sampling.greedy and not self.seeds_supported:
            raise GrpoAoError("seeded vLLM sampling on the CPU needs whole prefills: drop enable_chunked_prefill "
                              "from the engine's arguments (vLLM cannot rewind a CPU generator).")
        g, t = sampling.num_generations, sampling.max_new_tokens
        # vLLM refuses n > 1 for greedy requests: send G copies of a greedy prompt, one request n=G otherwise
        copies = g if sampling.greedy else 1
        prompts, params = [], []
        for b in range(inputs.prompt_ids.shape[0]):
            prompt, injection = prompt_request(inputs.prompt_ids[b], inputs.prompt_mask[b], inputs.positions[b],
                                               inputs.vectors[b], self.spec.injection_layer, self.spec.coef)
            row_seed = None if seed is None else request_seed(seed, b)
            prompts += [prompt] * copies
            params += [self.sampling_params(sampling, injection, n=g // copies, seed=row_seed)] * copies
        outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self.lora_request)
        completions = [c for out in outputs for c in sorted(out.outputs, key=lambda c: c.index)]
        n = inputs.prompt_ids.shape[0] * g
        assert len(completions) == n, f"{len(completions)} completions, expected {n}"
        pad = self.tokenizer.pad_token_id
        completion_ids = torch.full((n, t), pad, dtype=torch.long)  # [N, T]
        completion_mask = torch.zeros((n, t), dtype=torch.long)  # [N, T]
        truncated = torch.zeros(n, dtype=torch.bool)  # [N]
        logprobs = torch.zeros((n, t), dtype=torch.float32)  # [N, T]
        for i, completion in enumerate(completions):
            ids, length, truncated[i] = completion_row(completion.token_ids, completion.finish_reason, t, pad)
            completion_ids[i] = torch.tensor(ids, dtype=torch.long)
            completion_mask[i, :length] = 1
            logprobs[i, :length] = torch.tensor([step[tok].logprob for step, tok in zip(completion.logprobs, ids)],
                                                dtype=torch.float32)[:length]
        texts = self.tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        return Rollouts(
            prompt_ids=inputs.prompt_ids.repeat_interleave(g, dim=0), prompt_mask=inputs.prompt_mask.repeat_interleave(
                g, dim=0), positions=[p for p in inputs.positions for _ in range(g)],
            vectors=[v for v in inputs.vectors for _ in range(g)], completion_ids=completion_ids,
            completion_mask=completion_mask, truncated=truncated, texts=texts, num_generations=g,
            sampling_logprobs=logprobs,
        )

    # ---------------------------------------------------------------- policy sync

    def sync_weights(self, model: Any) -> None:
        """Make the engine sample from `model`'s current adapter (`settings.vllm_weight_sync`)."""
        self.syncs += 1
        if self.settings.vllm_weight_sync == "merge":
            # in-process: the generator reaches the worker as it is, one layer's merged weights at a time
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": merged_weights(model, self.dtype)})
        else:
            from vllm.lora.request import LoRARequest

            path = save_adapter(model, self.work_dir / "lora" / f"sync-{self.syncs}")
            previous, self.lora_request = self.lora_request, LoRARequest(f"policy-{self.syncs}", self.syncs, str(path))
            if previous is not None:
                self.llm.llm_engine.remove_lora(previous.lora_int_id)
        self.llm.reset_prefix_cache()  # cached KV belongs to the old weights

    # ---------------------------------------------------------------- parity

    def parity_check(self, model: Any, tokenizer: Any, inputs: OracleInputs) -> Any:
        """The engine's greedy `settings.parity_tokens` tokens on the first `settings.parity_prompts` prompts,
        scored by the HF training forward (`grpo_ao.vllm.parity`): a `ParityReport`, or GrpoAoError naming the
        likely cause when the logprobs differ by more than the dtype's tolerance."""
        from grpo_ao.vllm.parity import check_parity

        return check_parity(self, model, tokenizer, inputs)

    # ---------------------------------------------------------------- lifecycle

    def sleep(self) -> None:
        """Free the engine's GPU memory while the trainer updates (GPU and `vllm_sleep_mode` only; else a no-op)."""
        if not self.on_cpu and self.settings.vllm_sleep_mode and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake_up(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def close(self) -> None:
        """Shut the engine down and free its memory; a new engine may start in this process afterwards."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        llm.llm_engine.engine_core.shutdown()
        del llm
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

        destroy_model_parallel()
        destroy_distributed_environment()
        gc.collect()


def _check_cpu_head_size(config: dict[str, Any]) -> None:
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    head = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    sizes = CPUAttentionBackend.get_supported_head_sizes()
    if head not in sizes:
        raise GrpoAoError(f"vLLM's CPU attention supports head sizes {sizes}; this model's is {head} (the `tiny` "
                          "config's random Qwen3 has 16). Use rollout.engine=hf for it.")


def _generation_config(model_dir: str | Path) -> Any:
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(str(model_dir))
    except OSError:
        return GenerationConfig()


def subset(inputs: OracleInputs, n: int) -> OracleInputs:
    """The first n prompts of `inputs`."""
    return replace(inputs, prompt_ids=inputs.prompt_ids[:n], prompt_mask=inputs.prompt_mask[:n],
                   positions=inputs.positions[:n], vectors=inputs.vectors[:n], layers=inputs.layers[:n])
