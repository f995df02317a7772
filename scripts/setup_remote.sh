#!/usr/bin/env bash
# Set up grpo-ao on a rented GPU box over ssh, check it with `grpo-ao doctor`, and print how to start a run.
#
#   scripts/setup_remote.sh HOST PORT [USER] [--dry-run]
#
#   1. rsync this project to USER@HOST:grpo-ao/ (USER defaults to root). Left out: run directories, caches,
#      virtual environments and .env (the API key stays on this machine unless you copy it; the script
#      prints how). .git is kept (a few MB) so a run records its commit. Nothing on the box is deleted.
#   2. Make grpo-ao/.venv with --system-site-packages from the box's Python that imports torch, so the image's
#      CUDA build of torch is used as it is (pip sees it satisfies torch>=2.4 and leaves it; a box without
#      torch gets PyPI's, which is a CUDA build on Linux). Then `pip install -e .` into it.
#   3. Run `grpo-ao doctor --config CONFIG` there (exit 1 if it finds a FAIL; the next steps print anyway).
#   4. Print the nohup command that starts the run and the tail -f that watches it.
#
# --dry-run prints every command instead of running it.
# Environment: GRPO_AO_CONFIG (default qwen3-8b), GRPO_AO_REMOTE_DIR (default grpo-ao, relative to the
# remote home), GRPO_AO_REMOTE_PYTHON (the box's interpreter; default: the first of python3, python that
# imports torch).
set -euo pipefail

usage() {
  echo "usage: $0 HOST PORT [USER] [--dry-run]" >&2
  echo "  e.g. $0 203.0.113.7 22022 root --dry-run" >&2
  exit 2
}

DRY_RUN=0
ARGS=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage ;;
    -*) echo "$0: unknown option $arg" >&2; usage ;;
    *) ARGS+=("$arg") ;;
  esac
done
[ "${#ARGS[@]}" -eq 2 ] || [ "${#ARGS[@]}" -eq 3 ] || usage
HOST=${ARGS[0]}
PORT=${ARGS[1]}
USER_NAME=${ARGS[2]:-root}
[[ "$PORT" =~ ^[0-9]+$ ]] || { echo "$0: PORT must be a number, got '$PORT'" >&2; usage; }

CONFIG=${GRPO_AO_CONFIG:-qwen3-8b}
DIR=${GRPO_AO_REMOTE_DIR:-grpo-ao}
TARGET="$USER_NAME@$HOST"
# accept-new: a fresh rented box has a host key we have never seen; a changed key still stops ssh
SSH=(ssh -p "$PORT" -o StrictHostKeyChecking=accept-new -o ServerAliveInterval=30)
EXCLUDES=(--exclude=runs/ --exclude='.venv*/' --exclude=.env --exclude=__pycache__/ --exclude='*.pyc'
  --exclude='*.egg-info/' --exclude=.cache/ --exclude=.pytest_cache/ --exclude=.ruff_cache/
  --exclude=.hypothesis/ --exclude=build/ --exclude=dist/)

# A command as one line a shell reads back the same: words with shell-special characters in single quotes.
shown() {
  local out="" word
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_./:@=,+%-]+$ ]]; then
      out+="$word "
    else
      out+="'${word//\'/\'\\\'\'}' "
    fi
  done
  printf '%s\n' "${out% }"
}

run() {
  if [ "$DRY_RUN" -eq 1 ]; then
    shown "$@"
  else
    echo "+ $(shown "$@")" >&2
    "$@"
  fi
}

cd "$(dirname "$0")/.."
if [ "$DRY_RUN" -eq 0 ] && ! command -v rsync >/dev/null; then
  echo "$0: rsync is not installed here (apt-get install rsync / brew install rsync)." >&2
  exit 1
fi

# The box's Python: GRPO_AO_REMOTE_PYTHON, else the first that imports torch (the image's CUDA build), else python3.
# The single-quoted part expands on the box, not here.
# shellcheck disable=SC2016
PICK_PYTHON="PY=${GRPO_AO_REMOTE_PYTHON:-}; "'for c in python3 python; do [ -n "$PY" ] && break; '\
'$c -c "import torch" 2>/dev/null && PY=$c; done; PY=${PY:-python3}'
INSTALL="set -e; cd $DIR; $PICK_PYTHON; [ -x .venv/bin/python ] || \$PY -m venv --system-site-packages .venv"
INSTALL+="; .venv/bin/python -m pip install -q --upgrade pip; .venv/bin/python -m pip install -q -e ."

run "${SSH[@]}" "$TARGET" "mkdir -p $DIR"
run rsync -az "${EXCLUDES[@]}" -e "${SSH[*]}" ./ "$TARGET:$DIR/" || {
  echo "$0: rsync failed; if the box lacks rsync: ${SSH[*]} $TARGET 'apt-get install -y rsync'" >&2
  exit 1
}
run "${SSH[@]}" "$TARGET" "$INSTALL"
doctor=0
run "${SSH[@]}" "$TARGET" "cd $DIR && .venv/bin/grpo-ao doctor --config $CONFIG" || doctor=$?

LOG="runs/$CONFIG.log"
echo
[ "$doctor" -eq 0 ] || echo "grpo-ao doctor found a FAIL (exit $doctor): fix it before starting the run."
if [ -f .env ]; then
  echo "The judge's API key is in ./.env here and was not copied. To copy it:"
  echo "  $(shown "${SSH[@]}" "$TARGET" "cat > $DIR/.env") < .env"
fi
echo "Start the run on the box (it keeps running after you log out):"
echo "  $(shown "${SSH[@]}" "$TARGET")"
echo "  cd $DIR && mkdir -p runs && nohup .venv/bin/grpo-ao run --config $CONFIG > $LOG 2>&1 &"
echo "Watch it:"
echo "  $(shown "${SSH[@]}" "$TARGET" "tail -f $DIR/$LOG")"
exit "$doctor"
