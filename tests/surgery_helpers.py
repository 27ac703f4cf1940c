"""Plans for the surgeon tests: a family's Cut of hand-set decisions, the way `deploymtl prune` prepares one."""

from __future__ import annotations

from typing import Any

from deploymtl.families import family_spec
from deploymtl.surgery.base import Cut
from deploymtl.surgery.plan import make_plan


def cut_of(model: Any, decisions: dict[str, Any], tasks: list[str], options: dict[str, Any] | None = None) -> Cut:
    """`decisions` (possibly edited) for `tasks` with surgeon `options` (incl. round_channels), prepared against
    `model` by its family's surgeon: validated once, as `deploymtl prune` does."""
    plan = make_plan(model, model.family, tasks=tasks, options=options, decisions=decisions)
    return family_spec(model.family).surgeon.prepare(model, plan)
