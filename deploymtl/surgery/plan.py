"""The plan: a search's decisions frozen into a small JSON document a person can read and edit.

    {"format": "deploymtl.plan/1", "family": "adashare", "tasks": ["seg", "depth"],   # deployed tasks
     "rule": "argmax", "options": {"round_channels": 1},
     "decisions": {...family decisions, as Supernet.decisions() writes them...},
     "source": {"checkpoint": "runs/x/supernet.pt", "sha256": "..."}}

The envelope is validated here (pydantic, one-line errors naming the field); the family's surgeon validates the
`decisions` against the supernet (`families.Surgeon.validate_plan`). `deploymtl prune CKPT --plan edited.json`
rebuilds the static model from an edited plan; the surgeon rejects a plan that does not fit the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..config import Family
from ..errors import DeploymtlError, validation_message
from ..io import read_json, write_json
from .families import default_tasks, surgeon

PLAN_FORMAT = "deploymtl.plan/1"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PlanOptions(_Strict):
    round_channels: int = Field(default=1, ge=1, description="round kept channel counts up to a multiple")


class PlanSource(_Strict):
    checkpoint: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Plan(_Strict):
    """A validated plan envelope. `decisions` is opaque here; the family's surgeon checks it."""

    format: Literal["deploymtl.plan/1"] = PLAN_FORMAT
    family: Family
    tasks: list[str] = Field(min_length=1, description="deployed tasks, in output order")
    rule: str = Field(min_length=1, description="the rule that turned the search's soft decisions into these")
    options: PlanOptions = PlanOptions()
    decisions: dict[str, Any]
    source: PlanSource | None = None

    @field_validator("tasks")
    @classmethod
    def _unique(cls, tasks: list[str]) -> list[str]:
        dup = sorted({t for t in tasks if tasks.count(t) > 1})
        if dup:
            raise ValueError(f"tasks repeated: {dup}")
        return tasks

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def parse_plan(data: Any, where: str | Path = "<plan>") -> Plan:
    """Validate a plan envelope (e.g. read from an edited file); one-line DeploymtlError naming the field."""
    if not isinstance(data, dict):
        raise DeploymtlError(f"{where}: a plan must be a JSON object, got {type(data).__name__}",
                             hint=f"expected a {PLAN_FORMAT} document written by deploymtl prune/inspect")
    if data.get("format") != PLAN_FORMAT:  # checked first: a foreign document fails on every other field too
        raise DeploymtlError(f"{where}: format: {data.get('format')!r} is not a deploymtl plan",
                             hint=f"expected format {PLAN_FORMAT!r}, written by deploymtl prune/inspect")
    try:
        return Plan.model_validate(data)
    except ValidationError as exc:
        raise DeploymtlError(validation_message(exc, where)) from None


def load_plan(path: str | Path) -> Plan:
    return parse_plan(read_json(path, what="plan"), path)


def save_plan(path: str | Path, plan: Plan) -> Path:
    return write_json(path, plan.to_dict())


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
