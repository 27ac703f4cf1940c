"""The plan of a supernet: made from its own decisions (`make_plan`) or read from an edited plan.json
(`deploymtl.formats.plan`), then checked against the checkpoint (`check_plan`): same family, known tasks, then the
family surgeon's own checks of the decisions. `deploymtl prune CKPT --plan edited.json` rebuilds the static model
from an edited plan; the surgeon rejects a plan that does not fit the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DeploymtlError
from ..formats.plan import Plan, PlanOptions, PlanSource
from .families import default_tasks, surgeon


def make_plan(model: Any, family: str, *, tasks: list[str] | None = None, round_channels: int = 1,
              source: PlanSource | None = None) -> Plan:
    """The plan of a loaded supernet's own decisions (`model.decisions()`); `tasks` defaults to the family's
    default deployment (every task, or Aux-NAS's primary tasks)."""
    decisions = model.decisions()
    return Plan(family=family, tasks=list(tasks) if tasks else default_tasks(model, decisions),
                rule=str(decisions.get("rule", "unknown")), options=PlanOptions(round_channels=round_channels),
                decisions=decisions, source=source)


def check_plan(plan: Plan, model: Any, family: str, where: str | Path = "plan") -> None:
    """Check that `plan` fits the loaded supernet: same family, known tasks, then the family's own checks."""
    if plan.family != family:
        raise DeploymtlError(f"{where}: family: plan is for '{plan.family}' but the checkpoint is '{family}'",
                             hint="make the plan from this checkpoint with deploymtl inspect")
    names = list(model.task_names)
    for task in plan.tasks:
        if task not in names:
            raise DeploymtlError(f"{where}: tasks: unknown task '{task}'", hint=f"expected some of {', '.join(names)}")
    try:
        surgeon(family).validate_plan(model, plan.decisions, list(plan.tasks))
    except DeploymtlError as exc:
        raise DeploymtlError(f"{where}: decisions: {exc}", hint=exc.hint) from None
