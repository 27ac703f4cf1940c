"""The torch files `deploymtl train` writes, validated where they enter (weights only, one-line errors).

- `supernet.pt` (`deploymtl.supernet/1`): family, resolved recipe, tasks, state dict, hard decisions, metrics,
  and for a model imported from a method's public code `imported` (the source files and what deploying saves
  against the public inference, written by `deploymtl import`; absent for trained models);
- `train_state.pt` (`deploymtl.train_state/1`, or a supernet.pt to continue from): family, recipe, state dict,
  optimizer states, the (stage, epoch) pairs done, per-stage records.

Each envelope is a pydantic model and its embedded recipe is validated as a recipe (`read_supernet`); the weights
are checked against the model that recipe builds (`load_weights`). Building that model and fixing its decisions is
the family's (`deploymtl.models.checkpoint.load_supernet`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from .. import __version__
from ..config import Family, Recipe, parse_recipe
from ..errors import DeploymtlError, validation_message
from ..families import FAMILY_NAMES
from ..io import load_torch, save_torch

SUPERNET_FORMAT: Final = "deploymtl.supernet/1"
STATE_FORMAT: Final = "deploymtl.train_state/1"


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="ignore")

    family: Family
    recipe: dict[str, Any]
    state_dict: dict[str, Any]


class SupernetFile(_Envelope):
    format: Literal[SUPERNET_FORMAT]
    decisions: dict[str, Any]
    metrics: dict[str, Any] = {}
    imported: dict[str, Any] | None = None


class TrainStateFile(_Envelope):
    format: Literal[STATE_FORMAT, SUPERNET_FORMAT]
    optimizers: dict[str, dict[str, Any]] = {}
    done: list[tuple[str, int]] = []
    stages: list[dict[str, Any]] = []


def _envelope(cls: type[_Envelope], data: Any, path: Path, what: str, hint: str) -> Any:
    fmt = data.get("format") if isinstance(data, dict) else None
    allowed = cls.model_fields["format"].annotation.__args__  # type: ignore[union-attr]
    if fmt not in allowed:
        raise DeploymtlError(f"{path} is not a deploymtl {what}", hint=hint)
    if data.get("family") not in FAMILY_NAMES:
        raise DeploymtlError(f"{path}: unknown family '{data.get('family')}'",
                             hint=f"expected one of {', '.join(FAMILY_NAMES)}")
    missing = [k for k, f in cls.model_fields.items() if f.is_required() and k not in data]
    if missing:
        raise DeploymtlError(f"{path}: missing {', '.join(missing)}", hint=hint)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise DeploymtlError(validation_message(exc, path), hint=hint) from None


def load_weights(model: torch.nn.Module, state: dict[str, Any], path: Path, what: str) -> None:
    """Load `state` strictly into `model`; a missing, extra, non-tensor or wrongly shaped weight is a one-line
    DeploymtlError naming it."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise DeploymtlError(f"{path}: state_dict does not match {what}: missing {missing[:3]}, unexpected "
                             f"{unexpected[:3]}", hint="use the recipe that wrote it")
    for key, ref in expected.items():
        value = state[key]
        if not isinstance(value, torch.Tensor) or value.layout != torch.strided:
            raise DeploymtlError(f"{path}: state_dict['{key}']: {type(value).__name__} is not a dense tensor")
        if value.shape != ref.shape:
            raise DeploymtlError(f"{path}: state_dict['{key}']: shape {list(value.shape)}, {what} needs "
                                 f"{list(ref.shape)}", hint="use the recipe that wrote it")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise DeploymtlError(f"{path}: state_dict['{key}']: holds NaN or Inf values",
                                 hint="expected finite weights")
    model.load_state_dict(state, strict=True)


def read_supernet(path: str | Path) -> tuple[SupernetFile, Recipe, dict[str, Any]]:
    """The validated envelope of `supernet.pt`, its embedded recipe (validated as a recipe) and the raw dict."""
    p = Path(path)
    ckpt = load_torch(p, what="supernet checkpoint")
    env = _envelope(SupernetFile, ckpt, p, "supernet checkpoint",
                    hint=f"expected format {SUPERNET_FORMAT}, written by deploymtl train")
    recipe = parse_recipe(env.recipe, f"{p} (embedded recipe)")
    if recipe.family != env.family:
        raise DeploymtlError(f"{p}: family is '{env.family}' but its embedded recipe is for '{recipe.family}'")
    return env, recipe, ckpt


def write_supernet(path: str | Path, recipe: Recipe, state_dict: dict[str, torch.Tensor], decisions: dict[str, Any],
                   metrics: dict[str, Any], imported: dict[str, Any] | None = None) -> Path:
    """Write `supernet.pt` (module docstring) for a model trained from `recipe` (or imported: `imported`)."""
    data = {
        "format": SUPERNET_FORMAT, "family": recipe.family, "deploymtl_version": __version__,
        "recipe": recipe.resolved(), "tasks": [t.model_dump() for t in recipe.tasks],
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, "decisions": decisions,
        "metrics": metrics,
    }
    return save_torch(path, data | ({"imported": imported} if imported is not None else {}))


def load_train_state(path: str | Path, family: str) -> TrainStateFile:
    """The validated envelope of a resume checkpoint for a recipe of `family` (weights loaded by the caller with
    `load_weights`)."""
    p = Path(path)
    state = load_torch(p, what="resume checkpoint")
    hint = "expected train_state.pt written by deploymtl train"
    if not isinstance(state, dict) or state.get("format") not in (STATE_FORMAT, SUPERNET_FORMAT):
        raise DeploymtlError(f"resume checkpoint {p} is not a deploymtl training state", hint=hint)
    if state.get("family") != family:
        raise DeploymtlError(f"resume checkpoint {p} belongs to family '{state.get('family')}', the recipe is "
                             f"'{family}'", hint="resume with the same recipe")
    return _envelope(TrainStateFile, state, p, "training state", hint=hint)

