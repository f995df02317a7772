"""What every recipe does first: run directory, seeds, the oracle model, data, optimizer, progress."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from grpo_ao.config import RunConfig, to_dict
from grpo_ao.data import DataConfig, Example, TaskSampler, load_examples
from grpo_ao.distributed import all_reduce_gradients, barrier, global_sum, place, print0
from grpo_ao.metrics import MetricSink, NullSink, build_sinks
from grpo_ao.models import attach_lora, load_model, resolve_adapter, resolve_device
from grpo_ao.oracle_layout import OracleLayout, attach_layout
from grpo_ao.rollout import OracleSpec
from grpo_ao.run_info import redact_secrets, write_run_info


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def start_run(cfg: RunConfig, stage: str) -> Path:
    """Make the run directory and save the resolved config (secrets redacted), git commit and seed (rank 0)."""
    resolve_device(cfg.model.device)  # a missing GPU is a user error before anything is written
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if place().is_main:
        config = redact_secrets(to_dict(cfg))
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        write_run_info(run_dir, {"stage": stage, **config}, cfg.seed)
    return run_dir


RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "samples.jsonl", "summary.json", "tensorboard")


def archive_previous_run(run_dir: Path) -> Path | None:
    """Move an earlier run's outputs into run_dir/replaced-<time>/ so a fresh run never mixes with it
    (its metrics would interleave, its later checkpoints would look newer). Caches stay in place.
    Every rank calls it: rank 0 moves, the others wait for it, so none sees a half-moved directory."""
    target = _archive(run_dir) if place().is_main else None
    barrier()
    return target


def _archive(run_dir: Path) -> Path | None:
    found = [run_dir / name for name in RUN_OUTPUTS if (run_dir / name).exists()]
    if not found:
        return None
    target = run_dir / time.strftime("replaced-%Y%m%d-%H%M%S")
    target.mkdir(parents=True, exist_ok=True)
    for path in found:
        path.rename(target / path.name)
    print(f"{run_dir} held an earlier run; moved its outputs to {target} (use --resume to continue it instead).")
    return target


def judge_cache_path(cfg: RunConfig) -> Path:
    """The judge's SQLite cache: `judge.cache_path`, else run_dir/judge_cache.sqlite."""
    return Path(cfg.judge.cache_path) if cfg.judge.cache_path else cfg.run_dir / "judge_cache.sqlite"


def oracle_spec(cfg: RunConfig, data: DataConfig | None = None) -> OracleSpec:
    """How the oracle is prompted and steered, from `cfg.oracle` and the context format of `data`
    (default `cfg.data`; the eval passes `cfg.eval.data`)."""
    data = cfg.data if data is None else data
    return OracleSpec(system_prompt=cfg.oracle.prompt_text, mode=cfg.oracle.system_prompt_mode,
                      context_format=data.context_format, injection_layer=cfg.oracle.injection_layer,
                      coef=cfg.oracle.steering_coef, vector_preprocessing=cfg.oracle.vector_preprocessing)


def load_oracle(cfg: RunConfig, adapter: str | None = None, trainable: bool = True,
                gradient_checkpointing: bool = False, fresh: bool = False,
                layout: OracleLayout | None = None) -> tuple[Any, Any]:
    """The base model with a LoRA adapter: `adapter` if given, else `cfg.model.adapter`, else a fresh one
    (`fresh=True`: a fresh one (lora.*) whatever model.adapter says, as AO pretraining starts). `layout` is
    the layout the stage trains in: every checkpoint of this model writes it beside the adapter.
    With several processes on GPUs, each rank loads onto its own GPU (cuda:local_rank)."""
    model_cfg = cfg.model
    if place().world_size > 1 and resolve_device(model_cfg.device).type == "cuda":
        model_cfg = replace(model_cfg, device=f"cuda:{place().local_rank}")
    if fresh and cfg.model.adapter:
        print0(f"Starting a fresh LoRA adapter (lora.*) on the base model; model.adapter={cfg.model.adapter!r} is "
               "not used by this stage.")
    model, tokenizer = load_model(model_cfg)
    model = attach_lora(model, cfg.lora, None if fresh else adapter or cfg.model.adapter, trainable=trainable)
    attach_layout(model, layout)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.eval()
    return model, tokenizer


def task_sampler(data_cfg: DataConfig, tokenizer: Any, examples: Sequence[Example] | None = None) -> TaskSampler:
    """Seeded task stream over `examples` (default: all of `data_cfg.source`); contexts shorter than K subject
    tokens are capped or skipped, never a crash."""
    examples = load_examples(data_cfg) if examples is None else examples

    def count_tokens(text: str) -> int:  # the context's own tokens: K must never reach into the chat header
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return TaskSampler(examples, data_cfg, count_tokens=count_tokens)


def trainable_parameters(model: Any) -> list[torch.nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    assert params, "the oracle has no trainable (LoRA) parameters"
    return params


def optimizer_and_scheduler(model: Any, lr: float, weight_decay: float, warmup_steps: int,
                            schedule: str, total_steps: int) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW on the LoRA parameters; linear warm-up, then constant, linear decay or cosine decay."""
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=lr, weight_decay=weight_decay)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def teacher_forced_step(model: Any, batch: Any | None, spec: Any, optimizer: torch.optim.Optimizer, scheduler: Any,
                        max_grad_norm: float) -> tuple[float, float, float]:
    """One SFT / AO-pretraining optimizer step: cross-entropy on `batch`'s completion tokens (injection on, the
    backward inside `injected_logprobs` so a checkpointed block is recomputed with its hook), clip, AdamW.

    Data parallel: `batch` is this rank's share of the step's batch (None when it got no rows). Its loss is
    divided by the GLOBAL target-token count and the gradients are summed over ranks before clipping, so

        L = -sum_{ranks, rows, t} m * logprobs / sum_{ranks, rows, t} m

    and the update equal the one-process step on the whole batch. Returns (L, grad norm before clipping, lr).
    """
    from grpo_ao.loss import sft_loss
    from grpo_ao.rollout import injected_logprobs

    optimizer.zero_grad(set_to_none=True)
    params = trainable_parameters(model)
    local_tokens = int(batch.completion_mask.sum()) if batch is not None else 0
    global_tokens = max(1, global_sum(local_tokens))
    loss_value = 0.0
    if batch is not None:
        with injected_logprobs(model, batch, 1.0, spec=spec) as logprobs:
            # sft_loss divides by the local count; rescaled to the global one (factor 1.0 with one process)
            loss = sft_loss(logprobs, batch.completion_mask.to(logprobs.device)) * (local_tokens / global_tokens)
            loss.backward()
        loss_value = loss.item()
    all_reduce_gradients(params)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    return global_sum(loss_value), grad_norm, lr


def progress_bar(total: int, desc: str, enabled: bool, initial: int = 0):
    """A tqdm bar on rank 0; disabled on the other ranks, by `enabled=False` and by GRPO_AO_NO_PROGRESS."""
    from tqdm.auto import tqdm

    disable = not enabled or not place().is_main or bool(os.environ.get("GRPO_AO_NO_PROGRESS"))
    return tqdm(total=total, desc=desc, initial=initial, disable=disable, dynamic_ncols=True)


def run_sinks(cfg: RunConfig, run_dir: Path) -> MetricSink:
    """The metric sinks of `cfg.logging` on rank 0; a null sink on the other ranks (metrics are written once)."""
    if not place().is_main:
        return NullSink()
    return build_sinks(run_dir, cfg.logging.tensorboard, cfg.logging.wandb_project, cfg.name, to_dict(cfg))


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Write JSON atomically (temp file, then rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)
    return path


def window_mean(values: Sequence[float], start: float, end: float) -> float | None:
    """Mean of the finite values in the [start, end) fraction of the sequence (e.g. first 20 %)."""
    n = len(values)
    lo, hi = int(n * start), max(int(n * start) + 1, int(round(n * end)))
    window = [v for v in values[lo:hi] if v is not None and math.isfinite(v)]
    return sum(window) / len(window) if window else None


# ---------------------------------------------------------------------------- cache keys

EXTRACTION_CODE = ("grpo_ao.models", "grpo_ao.steering", "grpo_ao.rollout", "grpo_ao.format")
"""Modules whose source decides cached activations and answers; their text is part of every cache key, so an
edited extraction never reuses vectors made by the old code."""


def fingerprint(*parts: Any) -> str:
    """A short sha256 of JSON-serialisable `parts` (cache directory names)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def code_fingerprint(modules: Sequence[str] = EXTRACTION_CODE) -> str:
    """Hash of the source text of `modules`: the code version of what a cache holds."""
    return fingerprint([inspect.getsource(importlib.import_module(m)) for m in modules])


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of how `tokenizer` splits text: its full serialization (vocabulary, merges, normalizer, added tokens)
    when it is a fast tokenizer, else its vocabulary; plus the chat template and the padding side. The
    serialization's padding/truncation state is left out: a padded call sets it, and it splits no text."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        table = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("padding", "truncation")}
    else:
        table = tokenizer.get_vocab()
    return fingerprint(table, getattr(tokenizer, "chat_template", None), tokenizer.padding_side)


def adapter_fingerprint(adapter: str | None) -> str | None:
    """Hash of a local adapter's files (weights and config), so a retrained adapter at the same path is a new
    key; a hub id as it is (None: no adapter)."""
    path = Path(resolve_adapter(adapter)).expanduser() if adapter else None
    if path is None or not path.is_dir():
        return adapter
    digest = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        if (path / name).is_file():
            with open(path / name, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]
