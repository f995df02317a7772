"""The run-info file: resolved config with secrets redacted, git commit, seed, library versions."""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REDACTED = "<redacted>"
_SECRET_SUBSTRINGS = ("api_key", "apikey", "secret", "password", "passwd")
_ENV_VAR_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_SECRET_VALUE = re.compile(r"^(sk-|hf_)[A-Za-z0-9_\-]{16,}$")


def _is_secret_key(key: str) -> bool:
    """api_key/secret/password anywhere in the key; `token` only as a whole `_`-separated part,
    so `tokenizer` and `max_new_tokens` are not secrets but `hf_token` and `auth_token` are."""
    lowered = key.lower()
    parts = re.split(r"[_\-.]", lowered)
    return any(s in lowered for s in _SECRET_SUBSTRINGS) or "token" in parts


def redact_secrets(value: Any) -> Any:
    """A copy of `value` (nested dicts/lists) with secret strings replaced by "<redacted>".

    Redacted: a string under a secret-looking key (see `_is_secret_key`), and any string that looks
    like an API key (`sk-...`, `hf_...`). Kept: a key ending in `_env` whose value is an
    environment-variable NAME (`api_key_env: OPENROUTER_API_KEY`), since it names the secret
    without holding it; if such a field holds anything else, it is redacted too.
    """
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if isinstance(v, str) and _is_secret_key(str(k)):
                keep = str(k).lower().endswith("_env") and _ENV_VAR_NAME.match(v)
                out[k] = v if keep else REDACTED
            else:
                out[k] = redact_secrets(v)
        return out
    if isinstance(value, list | tuple):
        return [redact_secrets(v) for v in value]
    if isinstance(value, str) and _SECRET_VALUE.match(value):
        return REDACTED
    if isinstance(value, str) and "=" in value:  # a `key=value` override on the command line
        key = value.partition("=")[0]
        if _is_secret_key(key.rsplit(".", 1)[-1]) and not key.lower().endswith("_env"):
            return f"{key}={REDACTED}"
    return value


def write_run_info(run_dir: Path, config_dict: dict, seed: int) -> Path:
    """Write run_dir/run_info.json: resolved config (secrets redacted), git commit, seed, versions.

    The commit is that of the grpo_ao source tree (None when it is not a git checkout or git is
    missing), with `git_dirty` telling whether it had uncommitted changes.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain") if commit else None
    info = {
        "config": redact_secrets(config_dict),
        "seed": seed,
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
        "versions": _versions(),
        "command": redact_secrets(list(sys.argv)),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = run_dir / "run_info.json"
    path.write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("grpo-ao", "torch", "transformers", "peft"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions
