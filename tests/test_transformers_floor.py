"""The model-touching tests again, on the lowest transformers pyproject.toml allows.

`scripts/install.sh --with-test-envs` builds `.venv-floor`: transformers at the floor (and the versions of its own
dependencies it accepts) in front of `.venv`'s packages. Injection, checkpointing, rollouts and the
loss depend on transformers internals (hook order, what gradient checkpointing wraps, how
`output_hidden_states` is recorded), which have changed between 5.x releases.
"""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOOR_PYTHON = ROOT / ".venv-floor" / "bin" / "python"
MODEL_TESTS = ["tests/test_steering.py", "tests/test_rollout.py", "tests/test_loss.py", "tests/test_checkpointing.py",
               "tests/test_prefix_shared.py"]


def transformers_floor() -> str:
    found = re.findall(r'"transformers>=([0-9.]+),<\d+"', (ROOT / "pyproject.toml").read_text())
    assert len(found) == 1, f"expected one transformers>=X,<Y requirement in pyproject.toml, found {found}"
    return found[0]


def test_floor_environment_has_the_floor_transformers_and_the_main_torch():
    assert FLOOR_PYTHON.exists(), f"{FLOOR_PYTHON} is missing: run `bash scripts/install.sh --with-test-envs`, which builds it"
    probe = "import torch, transformers; print(transformers.__version__, torch.__version__)"
    floor = subprocess.run([str(FLOOR_PYTHON), "-c", probe], capture_output=True, text=True, check=True)
    main = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert floor.stdout.split()[0] == transformers_floor(), "rerun `bash scripts/install.sh --with-test-envs` after moving the floor"
    assert floor.stdout.split()[1] == main.stdout.split()[1], "the floor environment must use .venv's torch"


def test_model_tests_pass_on_the_transformers_floor():
    assert all((ROOT / t).exists() for t in MODEL_TESTS) and len(MODEL_TESTS) == 5
    done = subprocess.run([str(FLOOR_PYTHON), "-m", "pytest", *MODEL_TESTS, "-p", "no:cacheprovider"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, f"on transformers {transformers_floor()}:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"
    assert re.search(r"\d+ passed", summary) and "skipped" not in summary, summary
