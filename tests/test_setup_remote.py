"""scripts/setup_remote.sh: `--dry-run` prints every command (host, port, user, the excludes, the venv that keeps
the box's torch, the doctor, the nohup and tail -f lines) and runs none; a real run, with ssh and rsync replaced by
stubs that record their arguments, runs exactly the printed commands; a bad argument list exits 2 with usage."""

import os
import shlex
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "setup_remote.sh"
EXCLUDES = ("runs/", ".venv*/", ".env", "__pycache__/", "*.egg-info/", ".cache/", ".pytest_cache/")
STUB = """#!/usr/bin/env bash
# records its name and arguments (unit-separated) and fails a doctor call with $STUB_DOCTOR_RC
{ printf '%s' "$(basename "$0")"; for a in "$@"; do printf '\\037%s' "$a"; done; printf '\\n'; } >> "$STUB_LOG"
case "${*: -1}" in *"grpo-ao doctor"*) exit "${STUB_DOCTOR_RC:-0}" ;; esac
"""


@pytest.fixture()
def stubs(tmp_path):
    """A PATH whose ssh and rsync only record their calls in tmp_path/calls.log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("ssh", "rsync"):
        (bin_dir / name).write_text(STUB)
        (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "STUB_LOG": str(tmp_path / "calls.log")}


def _script(*args, env=None):
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("GRPO_AO_")}
    env = {**inherited, **(env or {})}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60)


def _commands(stdout):
    """The dry run's command lines (everything before the blank line that starts the next steps), as argv."""
    return [shlex.split(line) for line in stdout.split("\n\n")[0].splitlines()]


def test_dry_run_prints_every_command_with_host_port_user_and_excludes(stubs):
    proc = _script("203.0.113.7", "22022", "alice", "--dry-run", env=stubs)
    assert proc.returncode == 0, proc.stderr
    commands = _commands(proc.stdout)
    assert [c[0] for c in commands] == ["ssh", "rsync", "ssh", "ssh"], proc.stdout
    for c in (commands[0], commands[2], commands[3]):
        assert c[:3] == ["ssh", "-p", "22022"] and "alice@203.0.113.7" in c, c
    rsync = commands[1]
    assert rsync[-2:] == ["./", "alice@203.0.113.7:grpo-ao/"] and "ssh -p 22022" in rsync[rsync.index("-e") + 1]
    assert {f"--exclude={e}" for e in EXCLUDES} <= set(rsync), rsync
    assert "--exclude=.git/" not in rsync  # kept: the run records its commit
    install = commands[2][-1]
    assert "-m venv --system-site-packages .venv" in install and "pip install -q -e ." in install
    assert commands[3][-1] == "cd grpo-ao && .venv/bin/grpo-ao doctor --config qwen3-8b"
    assert ("cd grpo-ao && mkdir -p runs && nohup .venv/bin/grpo-ao run --config qwen3-8b > runs/qwen3-8b.log 2>&1 &"
            in proc.stdout)
    assert "'tail -f grpo-ao/runs/qwen3-8b.log'" in proc.stdout
    assert not Path(stubs["STUB_LOG"]).exists()  # nothing ran


def test_dry_run_defaults_to_root_and_takes_the_flag_anywhere(stubs):
    proc = _script("--dry-run", "gpu.example.org", "2222", env={**stubs, "GRPO_AO_CONFIG": "tiny"})
    assert proc.returncode == 0, proc.stderr
    assert "root@gpu.example.org" in proc.stdout and "-p 2222" in proc.stdout
    assert "doctor --config tiny" in proc.stdout and "> runs/tiny.log 2>&1 &" in proc.stdout


def test_a_real_run_executes_exactly_the_dry_run_commands(stubs, tmp_path):
    printed = _commands(_script("203.0.113.7", "22022", "alice", "--dry-run", env=stubs).stdout)
    proc = _script("203.0.113.7", "22022", "alice", env={**stubs, "STUB_DOCTOR_RC": "1"})
    calls = [line.split("\x1f") for line in Path(stubs["STUB_LOG"]).read_text().splitlines()]
    assert calls == printed
    # the doctor's FAIL is the script's exit status, and the next steps are printed anyway
    assert proc.returncode == 1 and "grpo-ao doctor found a FAIL" in proc.stdout and "nohup" in proc.stdout


@pytest.mark.parametrize("args", [[], ["host"], ["host", "22", "root", "extra"], ["--dry-run"],
                                  ["host", "ssh-port", "--dry-run"], ["host", "22", "--force"]])
def test_bad_arguments_exit_2_with_usage(args, stubs):
    proc = _script(*args, env=stubs)
    assert proc.returncode == 2 and "usage: " in proc.stderr and "HOST PORT [USER] [--dry-run]" in proc.stderr
    assert proc.stdout == "" and not Path(stubs["STUB_LOG"]).exists()
