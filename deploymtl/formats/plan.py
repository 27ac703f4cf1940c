"""plan.json: a search's decisions frozen into a small JSON document a person can read and edit.

    {"format": "deploymtl.plan/1", "family": "adashare", "tasks": ["seg", "depth"],   # deployed tasks
     "rule": "argmax", "options": {"round_channels": 1},
     "decisions": {...family decisions, as Supernet.decisions() writes them...},
     "source": {"checkpoint": "runs/x/supernet.pt", "sha256": "..."}}

The envelope is validated here (pydantic, one-line errors naming the field), `options` through the family's
options model (`Surgeon.options_model`: `round_channels` for every family, plus e.g. GatedMTL's `fold_blends`);
`decisions` is opaque here: the family's surgeon checks it against the supernet when it prepares the plan
(`deploymtl.surgery.plan.check_plan`). A plan file holds `round_channels` and the options that were set; the
others take the family's defaults (so a plan of default options reads as it always did).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
)

from ..config import Family
from ..errors import DeploymtlError, validation_message
from ..families import family_spec
from ..io import read_json, write_json

PLAN_FORMAT: Final = "deploymtl.plan/1"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PlanOptions(_Strict):
    """The surgeon options every family has; a family's options model extends it (`Surgeon.options_model`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    round_channels: int = Field(default=1, ge=1, description="round kept channel counts up to a multiple")

    def to_plan(self) -> dict[str, Any]:
        """What a plan file records: round_channels and every option that was set."""
        return {"round_channels": self.round_channels} | self.model_dump(mode="json", exclude_unset=True)


class PlanSource(_Strict):
    checkpoint: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Plan(_Strict):
    """A validated plan envelope. `decisions` is opaque here; the family's surgeon checks it."""

    format: Literal[PLAN_FORMAT] = PLAN_FORMAT
    family: Family
    tasks: list[str] = Field(min_length=1, description="deployed tasks, in output order")
    rule: str = Field(min_length=1, description="the rule that turned the search's soft decisions into these")
    options: SerializeAsAny[PlanOptions] = Field(default_factory=PlanOptions, validate_default=True)
    decisions: dict[str, Any]
    source: PlanSource | None = None

    @field_validator("options", mode="wrap")
    @classmethod
    def _family_options(cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
                        ) -> PlanOptions:
        """Validate through the family's options model (`family` is validated first; unset options stay unset)."""
        family = info.data.get("family")
        if family is None:  # the family failed its own validation, which is the error reported
            return handler(value)
        model = family_spec(family).surgeon.options_model
        if isinstance(value, model):
            return value
        return model.model_validate(value.model_dump(exclude_unset=True) if isinstance(value, BaseModel) else value)

    @field_validator("tasks")
    @classmethod
    def _unique(cls, tasks: list[str]) -> list[str]:
        dup = sorted({t for t in tasks if tasks.count(t) > 1})
        if dup:
            raise ValueError(f"tasks repeated: {dup}")
        return tasks

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True) | {"options": self.options.to_plan()}


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
