"""supernet.pt -> the supernet it describes: the envelope and embedded recipe read by `deploymtl.formats.supernet`,
the model built by the family registry, its weights checked and loaded, its saved decisions fixed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DeploymtlError
from ..families import build_supernet
from ..formats.supernet import load_weights, read_supernet
from .base import Supernet


def load_supernet(path: str | Path) -> tuple[Supernet, dict[str, Any]]:
    """(supernet in eval mode with its saved decisions fixed, raw checkpoint dict)."""
    p = Path(path)
    env, recipe, ckpt = read_supernet(p)
    model = build_supernet(env.family, recipe.tasks, recipe.model, recipe.search)
    load_weights(model, env.state_dict, p, "the model of its embedded recipe")
    try:
        model.set_decisions(env.decisions)
    except DeploymtlError as exc:
        raise DeploymtlError(f"{p}: decisions: {exc}", hint=exc.hint) from None
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:  # a family without full checks
        raise DeploymtlError(f"{p}: decisions: malformed ({type(exc).__name__}: {str(exc)[:120]})",
                             hint="expected the decisions deploymtl train wrote") from None
    return model.eval(), ckpt
