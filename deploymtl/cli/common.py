"""Option aliases shared by the command groups."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from ..errors import DeploymtlError

OutDir = typer.Option(None, "-o", "--out", help="Output directory (default under artifacts/).")
Quiet = typer.Option(False, "-q", "--quiet", help="No progress bars.")


def default_out(kind: str, name: str) -> Path:
    return Path("artifacts") / kind / name


def check_finite(flag: str, value: float | None, *, positive: bool = False) -> None:
    """A numeric option must be finite and >= 0 (> 0 with `positive`): NaN passes every comparison otherwise."""
    if value is None:
        return
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise DeploymtlError(f"{flag} {value} must be a finite number {'> 0' if positive else '>= 0'}")
