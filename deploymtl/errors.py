"""One error type for the user, one for verification failures, everything else is our bug.

Exit codes (shared/DESIGN.md): 0 success, 1 verification failed, 2 bad input or usage.
The CLI maps these to one-line messages in one place (`deploymtl.cli.main`).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_VERIFICATION = 1
EXIT_USAGE = 2


class DeploymtlError(Exception):
    """Bad input or usage: a one-line message naming what, where, and what was expected."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def one_line(self) -> str:
        msg = " ".join(str(self).split())
        return f"{msg} ({self.hint})" if self.hint else msg


class VerificationError(DeploymtlError):
    """A numeric check failed (parity, accuracy gate); the artifact and its report are kept for inspection."""

    exit_code = EXIT_VERIFICATION


def where(path: object, field: str | None = None) -> str:
    """Format a location for error messages: `file.yaml: train.epochs`."""
    return f"{path}: {field}" if field else str(path)
