"""Stand-ins for packages that only some commands need, on machines that lack them.

The lent GPU machine (no network, no pip) has torch, transformers, peft and pyyaml but no `openai` and no
`python-dotenv`; everything that does not call an API judge must still import and run there
(`scripts/gpu_check.sh`). A module imports the real package and falls back to these; only a code path that needs
the package fails, with a GrpoAoError naming the install command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from grpo_ao.errors import GrpoAoError


class MissingModule:
    """Stands for an uninstalled module: any attribute access raises a GrpoAoError saying what to install."""

    def __init__(self, package: str, needed_for: str) -> None:
        self._package, self._needed_for = package, needed_for

    def error(self) -> GrpoAoError:
        return GrpoAoError(f"{self._needed_for} needs the `{self._package}` package, which is not installed: "
                           f"pip install {self._package}")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # hasattr/copy/inspect probes get the ordinary answer
            raise AttributeError(name)
        raise self.error()


def require_installed(module: Any) -> None:
    """Raise the MissingModule's GrpoAoError when `module` is a stand-in (to fail when a component is built,
    not inside a call whose errors are counted as failures)."""
    if isinstance(module, MissingModule):
        raise module.error()


def dotenv_values(path: str | Path) -> dict[str, str | None]:
    """python-dotenv's `dotenv_values` where it is missing: no .env file reads as empty; an existing one is an error."""
    _no_dotenv(path)
    return {}


def load_dotenv(path: str | Path, override: bool = False) -> bool:
    """python-dotenv's `load_dotenv` where it is missing: no .env file loads nothing; an existing one is an error."""
    _no_dotenv(path)
    return False


def _no_dotenv(path: str | Path) -> None:
    if Path(path).is_file():
        raise GrpoAoError(f"Reading {path} needs the `python-dotenv` package, which is not installed: "
                          "pip install python-dotenv (or export the variables instead of using a .env file).")
