"""scripts/gpu_check.sh --cpu-smoke: the GPU check's every part on the tiny config on the CPU, run the way the lent
GPU machine runs it: from the source tree, with the packages that machine lacks (openai, python-dotenv, datasets,
gguf, vllm) made unimportable."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ABSENT = ("openai", "dotenv", "datasets", "gguf", "vllm")
PARTS = ["env", "bandwidth", "bench_eager", "grpo_steps", "parity", "bench_compiled"]


def blocking_env(tmp_path: Path) -> dict[str, str]:
    """An environment whose python cannot import ABSENT (a sitecustomize that blocks them)."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(f"import sys\nfor name in {ABSENT!r}:\n    sys.modules[name] = None\n")
    return {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(shim), "OMP_NUM_THREADS": "1"}


def test_the_blocking_environment_blocks(tmp_path):
    env = blocking_env(tmp_path)
    for name in ABSENT:
        out = subprocess.run([sys.executable, "-c", f"import {name}"], env=env, capture_output=True, text=True)
        assert out.returncode != 0 and "ModuleNotFoundError" in out.stderr, name


def test_gpu_check_cpu_smoke_runs_every_part_without_the_absent_packages(tmp_path):
    out = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--cpu-smoke", "--out", str(tmp_path / "o")],
                         env=blocking_env(tmp_path), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    report = json.loads((tmp_path / "o" / "gpu_check.json").read_text())
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert list(report["parts"]) == PARTS and all(p["status"] == "ok" for p in report["parts"].values()), report
    parts = report["parts"]
    assert set(ABSENT) <= set(parts["env"]["missing_optional"])
    assert parts["bandwidth"]["copy_bandwidth_gb_s"] > 0
    for name in ("bench_eager", "bench_compiled"):
        bench = parts[name]["bench"]
        assert (bench["source"], bench["compiled"]) == ("random", name == "bench_compiled")
        assert bench["variants"]["hf"]["tokens"] == bench["N"] * bench["max_new_tokens"], "forced length"
        assert 0 < parts[name]["roofline"]["fraction_weights"] < parts[name]["roofline"]["fraction_weights_kv"]
    assert [s["step"] for s in parts["grpo_steps"]["steps"]] == [1, 2, 3]
    parity = parts["parity"]
    assert parity["logprob_gap_bf16_vs_fp32_injected"]["max"] < 0.1, "bf16 and fp32 of the same weights agree"
    assert parity["injection_effect_fp32"]["max"] > 0, "the injection changes the logprobs"
    md = (tmp_path / "o" / "gpu_check.md").read_text()
    assert md.startswith("### GPU check (cpu-smoke") and "| copy bandwidth" in md and "3 GRPO steps" in md
