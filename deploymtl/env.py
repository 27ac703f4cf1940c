"""Environment switches, parsed in one tested place ("0", "false", "" mean off)."""

from __future__ import annotations

import os

_OFF = {"", "0", "false", "no", "off"}


def env_flag(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() not in _OFF


def debug_enabled() -> bool:
    return env_flag("DEPLOYMTL_DEBUG")
