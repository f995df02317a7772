"""The ./.env file: keys (WANDB_API_KEY, HF_TOKEN, the judge's key) for every command, with one rule.

Rule: a variable exported in the environment (non-empty) wins; otherwise a line `NAME=value` in ./.env (the
working directory's) sets it. `grpo-ao` loads the file once at start (`load_env_file`), so wandb, the Hub and
the judge all see the same values; `lookup` answers "where does NAME come from" for the judge and the doctor.
Values are never printed or logged, only names and where they came from. python-dotenv parses the file (it is
imported only when a .env file exists).
"""

from __future__ import annotations

import os
from pathlib import Path

from grpo_ao.errors import GrpoAoError

_from_file: dict[str, str] = {}
"""Variables this process took from .env (so `lookup` can say where a value came from)."""


def env_file_values(path: Path | None = None) -> dict[str, str]:
    """NAME → value of the lines of `path` (default ./.env) that set a non-empty value; {} when there is no file."""
    path = Path.cwd() / ".env" if path is None else Path(path)
    if not path.is_file():
        return {}
    try:
        from dotenv import dotenv_values
    except ImportError as e:
        raise GrpoAoError(f"{path} exists but python-dotenv, which reads it, is not installed: "
                          "pip install python-dotenv (or export the variables and remove the file).") from e
    return {k: v.strip() for k, v in dotenv_values(path).items() if v is not None and v.strip()}


def load_env_file(path: Path | None = None) -> list[str]:
    """Set each variable of `path` (default ./.env) that the environment does not already set (an exported,
    non-empty variable wins). Returns the names set, never the values."""
    loaded = []
    for name, value in env_file_values(path).items():
        if not os.environ.get(name, "").strip():
            os.environ[name] = value
            _from_file[name] = value
            loaded.append(name)
    return loaded


def lookup(name: str) -> tuple[str, str]:
    """(value, where) of variable `name` by the rule above: where is "environment", "./.env" or "" (unset)."""
    value = os.environ.get(name, "").strip()
    if value and _from_file.get(name) != value:
        return value, "environment"
    value = value or env_file_values().get(name, "")
    return (value, "./.env") if value else ("", "")
