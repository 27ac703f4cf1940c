"""The static model artifact `pruned.pt`: graph spec + weights + metadata, loadable with weights_only=True.

    {"format": "deploymtl.static/1", "family", "tasks": [TaskSpec dicts], "graph": spec, "state_dict",
     "plan": plan, "plan_hash", "input": {"channels", "height", "width", "mean", "std"}, "recipe": resolved,
     "deploymtl_version"}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import DeploymtlError
from ..io import load_torch, save_torch, sha256_json
from ..tasks import TaskSpec
from .graph import StaticModel, build_static

STATIC_FORMAT = "deploymtl.static/1"


@dataclass
class StaticArtifact:
    model: StaticModel
    family: str
    tasks: list[TaskSpec]
    plan: dict[str, Any]
    input: dict[str, Any]
    recipe: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def plan_hash(self) -> str:
        return sha256_json(self.plan)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]


def save_static(path: str | Path, art: StaticArtifact) -> Path:
    return save_torch(path, {
        "format": STATIC_FORMAT, "family": art.family, "tasks": [t.model_dump() for t in art.tasks],
        "graph": art.model.spec, "state_dict": {k: v.detach().cpu() for k, v in art.model.state_dict().items()},
        "plan": art.plan, "plan_hash": art.plan_hash, "input": art.input, "recipe": art.recipe,
        "deploymtl_version": __version__, "extra": art.extra,
    })


def load_static(path: str | Path) -> StaticArtifact:
    data = load_torch(path, what="static model")
    if not isinstance(data, dict) or data.get("format") != STATIC_FORMAT:
        raise DeploymtlError(f"{path} is not a deploymtl static model",
                             hint=f"expected format {STATIC_FORMAT}, written by deploymtl prune")
    model = build_static(data["graph"], data["state_dict"])
    tasks = [TaskSpec.model_validate(t) for t in data["tasks"]]
    return StaticArtifact(model=model, family=data["family"], tasks=tasks, plan=data["plan"], input=data["input"],
                          recipe=data["recipe"], extra=data.get("extra", {}))


def example_input(art: StaticArtifact, batch: int = 1) -> torch.Tensor:
    i = art.input
    return torch.zeros(batch, i["channels"], i["height"], i["width"])
