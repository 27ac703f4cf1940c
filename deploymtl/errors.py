"""One error type for the user, one for verification failures, one for bugs we catch ourselves.

Exit codes: 0 success, 1 verification failed, 2 bad input or usage, 3 a deploymtl bug (an `InternalError` we
detect, or any other exception). The CLI maps these to one-line messages in one place (`deploymtl.cli.main`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError

EXIT_OK = 0
EXIT_VERIFICATION = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3


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


class InternalError(DeploymtlError):
    """A check of our own output failed (the exporter produced a malformed graph, a surgeon emitted a node twice):
    a deploymtl bug, never the user's input. Exit 3; the message says to report it."""

    exit_code = EXIT_INTERNAL


def where(path: object, field: str | None = None) -> str:
    """Format a location for error messages: `file.yaml: train.epochs`."""
    return f"{path}: {field}" if field else str(path)


def validation_message(exc: ValidationError, where: object, prefix: tuple[str, ...] = ()) -> str:
    """pydantic's report as one line: `where: field.path: what was wrong (+N more)`, naming the first error's
    field (under `prefix`, e.g. the recipe section a nested model was read from)."""
    errs = exc.errors()
    loc = ".".join(str(p) for p in (*prefix, *errs[0]["loc"])) or "(top level)"
    msg = errs[0]["msg"].removeprefix("Value error, ")
    extra = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
    return f"{where}: {loc}: {msg}{extra}"
