"""Family -> surgeon module registry. Every surgeon module `deploymtl/surgery/<family>.py` implements `Surgeon`.

Imports are lazy so that `deploymtl --help` stays fast and a family whose surgeon is not part of this build fails
with a one-line error instead of an import traceback.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol, cast

from ..errors import DeploymtlError
from .builder import GraphBuilder

SURGEON_MODULES = {
    "adashare": "deploymtl.surgery.adashare",
    "gated": "deploymtl.surgery.gated",
    "auxnas": "deploymtl.surgery.auxnas",
}


class Surgeon(Protocol):
    """What a family's surgeon module provides. `decisions` is the dict of `Supernet.decisions()` (possibly edited
    in a plan); `tasks` the deployed task names; `options` the plan's options ({"round_channels": int})."""

    def validate_plan(self, model: Any, decisions: dict, tasks: list[str]) -> None:
        """One-line DeploymtlError on a plan that does not fit `model`."""

    def apply_plan(self, model: Any, decisions: dict) -> None:
        """Make the supernet's deployed mode follow the plan."""

    def build_graph(self, model: Any, decisions: dict, tasks: list[str], options: dict) -> GraphBuilder:
        """The static graph (nodes + folded weights) computing the deployed tasks."""

    def expected_params(self, model: Any, decisions: dict, tasks: list[str], options: dict) -> int:
        """Parameters the static model must hold, derived from the plan alone (not from the graph builder)."""

    def summary(self, model: Any, decisions: dict, tasks: list[str]) -> dict:
        """A short JSON-able summary of the decisions for reports and `deploymtl inspect`."""

    def draw(self, model: Any, decisions: dict, tasks: list[str], ax: Any) -> None:
        """A matplotlib picture of the decisions on `ax`."""


def surgeon(family: str) -> Surgeon:
    """The surgeon module of `family`; unknown families and missing surgeons are one-line user errors."""
    if family not in SURGEON_MODULES:
        raise DeploymtlError(f"unknown family '{family}'", hint=f"expected one of {', '.join(SURGEON_MODULES)}")
    name = SURGEON_MODULES[family]
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        raise DeploymtlError(f"family '{family}' has no surgeon in this build ({name} is missing)",
                             hint="install a complete deploymtl") from None
    return cast(Surgeon, module)


def approximation_links(family: str, model: Any, decisions: dict) -> dict[str, float]:
    """Removed links whose trained weight is not exactly zero (Aux-NAS); {} for families without such links."""
    fn = getattr(surgeon(family), "approximation_links", None)
    return dict(fn(model, decisions)) if callable(fn) else {}


def default_tasks(model: Any, decisions: dict) -> list[str]:
    """Tasks deployed when neither the user nor the recipe names them: the decisions' `primary` tasks where the
    family has such a notion (Aux-NAS deploys only its primary tasks), else every task of the supernet."""
    primary = decisions.get("primary") if isinstance(decisions, dict) else None
    if isinstance(primary, list) and primary and all(isinstance(t, str) for t in primary):
        return list(primary)
    return list(model.task_names)
