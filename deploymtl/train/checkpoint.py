"""Loading supernet checkpoints written by `deploymtl train` (weights only, validated)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import parse_recipe
from ..errors import DeploymtlError
from ..io import load_torch
from ..models.base import Supernet
from ..models.registry import FAMILY_MODULES, build_supernet
from .trainer import SUPERNET_FORMAT


def load_supernet(path: str | Path) -> tuple[Supernet, dict[str, Any]]:
    """(supernet in eval mode with its saved decisions fixed, raw checkpoint dict)."""
    ckpt = load_torch(path, what="supernet checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != SUPERNET_FORMAT:
        raise DeploymtlError(f"{path} is not a deploymtl supernet checkpoint",
                             hint=f"expected format {SUPERNET_FORMAT}, written by deploymtl train")
    family = ckpt.get("family")
    if family not in FAMILY_MODULES:
        raise DeploymtlError(f"{path}: unknown family '{family}'", hint=f"expected one of {', '.join(FAMILY_MODULES)}")
    recipe = parse_recipe(ckpt["recipe"], f"{path} (embedded recipe)")
    model = build_supernet(family, recipe.tasks, recipe.model, recipe.search)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, KeyError) as exc:
        raise DeploymtlError(f"{path}: weights do not match the embedded recipe ({str(exc).splitlines()[0][:120]})"
                             ) from None
    model.set_decisions(ckpt["decisions"])
    return model.eval(), ckpt
