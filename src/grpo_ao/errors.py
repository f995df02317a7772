"""The one exception type for user mistakes.

The CLI prints a `GrpoAoError` as a short paragraph and exits with status 2, no traceback.
Bugs are any other exception and keep their traceback.
"""


class GrpoAoError(Exception):
    """A user mistake (bad config, missing file, unreachable judge) with a message saying what to do."""


def require(ok: bool, message: str) -> None:
    """Raise `GrpoAoError(message)` unless `ok`: the one-line form of a config check."""
    if not ok:
        raise GrpoAoError(message)
