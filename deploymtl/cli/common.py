"""Option aliases shared by the command groups."""

from __future__ import annotations

from pathlib import Path

import typer

OutDir = typer.Option(None, "-o", "--out", help="Output directory (default under artifacts/).")
Quiet = typer.Option(False, "-q", "--quiet", help="No progress bars.")


def default_out(kind: str, name: str) -> Path:
    return Path("artifacts") / kind / name
