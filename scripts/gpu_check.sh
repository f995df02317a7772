#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py): runs as it is on a lent GPU machine, no network and no pip, from the source
# tree (PYTHONPATH=src, nothing installed), with that machine's own torch / transformers / peft / accelerate.
#   bash scripts/gpu_check.sh               # on the GPU: Qwen3-8B shape, random bf16 weights, ≤ 8 minutes
#   bash scripts/gpu_check.sh --cpu-smoke   # the same parts on the tiny config on the CPU (CI), seconds
# Results: gpu_check.json and gpu_check.md in $OUT when set, else runs/gpu_check/.
# The python: $PYTHON, else the project's .venv, else python3 (the GPU machine's, which holds torch).
set -uo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-}"
if [ -z "$py" ]; then
    if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 GRPO_AO_NO_PROGRESS=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$py" scripts/gpu_check.py "$@"
