"""The plan of a supernet: made from its decisions (`make_plan`) or read from an edited plan.json
(`deploymtl.formats.plan`), then checked against the checkpoint (`check_plan`): the family surgeon prepares it
(same family, known tasks, its own checks of the decisions, once) and returns the `Cut`. `deploymtl prune CKPT
--plan edited.json` rebuilds the static model from an edited plan; the surgeon rejects a plan that does not fit the
checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DeploymtlError
from ..families import family_spec
from ..formats.plan import PLAN_FORMAT, Plan, PlanSource, parse_plan

if TYPE_CHECKING:
    from .base import Cut


def make_plan(model: Any, family: str, *, tasks: list[str] | None = None, round_channels: int = 1,
              options: Mapping[str, Any] | None = None, decisions: dict[str, Any] | None = None,
              source: PlanSource | None = None) -> Plan:
    """The plan of a loaded supernet's decisions (`decisions`, default `model.decisions()`); `tasks` defaults to
    the family's default deployment (every task, or Aux-NAS's primary tasks); `options` are the family's options
    besides `round_channels` (validated by the family: a bad one is a one-line error naming it)."""
    decisions = model.decisions() if decisions is None else decisions
    chosen = list(tasks) if tasks is not None else family_spec(family).surgeon.default_tasks(model)
    return parse_plan({"format": PLAN_FORMAT, "family": family, "tasks": chosen,
                       "rule": str(decisions.get("rule", "unknown")),
                       "options": {"round_channels": round_channels, **(options or {})}, "decisions": decisions,
                       "source": source}, "plan")


def check_plan(plan: Plan, model: Any, family: str, where: str | Path = "plan") -> Cut:
    """Check that `plan` fits the loaded supernet of `family` (same family, known tasks, the family's checks of
    the decisions) and return the prepared Cut; errors name `where` and the plan field."""
    try:
        return family_spec(family).surgeon.prepare(model, plan)
    except DeploymtlError as exc:
        if exc.exit_code != DeploymtlError.exit_code:  # our bugs keep their own exit code and message
            raise
        raise DeploymtlError(f"{where}: {exc}", hint=exc.hint) from None
