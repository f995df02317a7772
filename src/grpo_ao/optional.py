"""Stand-ins for packages that only some commands need, on machines that lack them.

The lent GPU machine (no network, no pip) has torch, transformers, peft and pyyaml but no `openai` and no
`python-dotenv`; everything that does not call an API judge must still import and run there
(`scripts/gpu_check.sh`). A module imports the real package and falls back to these (python-dotenv: `grpo_ao.envfile` imports it only
when a .env file exists); only a code path that needs
the package fails, with a GrpoAoError naming the install command.
"""

from __future__ import annotations

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
