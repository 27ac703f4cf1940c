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


SurgeonOption = typer.Option(
    [], "--option", metavar="KEY=VALUE",
    help="A surgeon option of the checkpoint's family, repeatable: adashare share_prefix=true|false; gated "
         "fold_blends=auto|always|never, merge_convs=true|false (overrides the plan and the recipe's prune.options).")


def parse_key_values(flag: str, items: list[str]) -> dict[str, str]:
    """`KEY=VALUE` strings -> {KEY: VALUE}; the values are checked by whoever owns the keys."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise DeploymtlError(f"{flag} {item!r} is not KEY=VALUE", hint=f"e.g. {flag} merge_convs=false")
        if key in out:
            raise DeploymtlError(f"{flag} {key} is given twice", hint="give each option once")
        out[key] = value
    return out
