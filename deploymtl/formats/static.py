"""The static model artifact `pruned.pt`: graph spec + weights + metadata, loadable with weights_only=True.

    {"format": "deploymtl.static/1", "family", "tasks": [TaskSpec dicts], "graph": spec, "state_dict",
     "plan": plan, "plan_hash", "input": {"channels", "height", "width", "mean", "std", "channel_order", "scale",
     "dtype"}, "recipe": resolved, "deploymtl_version"}

The input spec (`InputInfo`) says what a caller feeds: with dtype float32, `(pixel * scale - mean) / std` per
channel, pixel the 0..255 value in `channel_order`; with dtype uint8 the pixels themselves, the graph applying the
same normalisation (its `preprocess` node). Files written before `channel_order`, `scale` and `dtype` existed read
as RGB, 1/255, float32: what deploymtl always fed them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .. import __version__
from ..config import PIXEL_SCALE
from ..errors import DeploymtlError, validation_message
from ..io import load_torch, save_torch, sha256_json
from ..ir import StaticModel, build_static
from ..tasks import TaskSpec

STATIC_FORMAT: Final = "deploymtl.static/1"
SectionT = TypeVar("SectionT", bound=BaseModel)


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

    @property
    def removed_prefixes(self) -> list[str]:
        """Module paths of the supernet the surgeon removed (`load_static` checked their type)."""
        return list(self.extra.get("removed_prefixes") or [])

    def recipe_section(self, key: str, cls: type[SectionT], where: str | Path) -> SectionT:
        """The embedded recipe's `key:` section validated as `cls` (defaults where it has none); a one-line
        DeploymtlError naming `where` (the file) and the field."""
        try:
            return cls.model_validate(self.recipe.get(key, {}))
        except ValidationError as exc:
            raise DeploymtlError(validation_message(exc, f"{where}: embedded recipe", prefix=(key,))) from None


def save_static(path: str | Path, art: StaticArtifact) -> Path:
    return save_torch(path, {
        "format": STATIC_FORMAT, "family": art.family, "tasks": [t.model_dump() for t in art.tasks],
        "graph": art.model.spec, "state_dict": {k: v.detach().cpu() for k, v in art.model.state_dict().items()},
        "plan": art.plan, "plan_hash": art.plan_hash, "input": art.input, "recipe": art.recipe,
        "deploymtl_version": __version__, "extra": art.extra,
    })


class InputInfo(BaseModel):
    """The image the model takes (N, channels, height, width) and its normalisation."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    channels: int = Field(ge=1)
    height: int = Field(ge=1)
    width: int = Field(ge=1)
    mean: list[float] | None = None
    std: list[Annotated[float, Field(gt=0)]] | None = None
    channel_order: Literal["RGB", "BGR"] = "RGB"
    scale: float = Field(default=PIXEL_SCALE, gt=0)
    dtype: Literal["float32", "uint8"] = "float32"

    @model_validator(mode="after")
    def _per_channel(self) -> InputInfo:
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values is not None and len(values) != self.channels:
                raise ValueError(f"{key} has {len(values)} values for {self.channels} channels")
        return self


class StaticFile(BaseModel):
    """The envelope of `pruned.pt` (module docstring); graph and weights are checked by `deploymtl.ir.check`."""

    model_config = ConfigDict(extra="ignore", arbitrary_types_allowed=True)

    format: Literal[STATIC_FORMAT]
    family: str = Field(min_length=1)
    tasks: list[TaskSpec] = Field(min_length=1)
    graph: dict[str, Any]
    state_dict: dict[str, Any]
    input: InputInfo
    plan: dict[str, Any] = {}
    recipe: dict[str, Any] = {}
    extra: dict[str, Any] = {}

    @field_validator("tasks")
    @classmethod
    def _unique(cls, tasks: list[TaskSpec]) -> list[TaskSpec]:
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names repeat: {names}")
        return tasks


def load_static(path: str | Path) -> StaticArtifact:
    """Read and validate `pruned.pt`: envelope, graph spec (against its input size and tasks) and weights, each a
    one-line DeploymtlError naming the file and the field."""
    data = load_torch(path, what="static model")
    if not isinstance(data, dict) or data.get("format") != STATIC_FORMAT:
        raise DeploymtlError(f"{path} is not a deploymtl static model",
                             hint=f"expected format {STATIC_FORMAT}, written by deploymtl prune")
    missing = [k for k, f in StaticFile.model_fields.items() if f.is_required() and k not in data]
    if missing:
        raise DeploymtlError(f"{path}: missing {', '.join(missing)}", hint="expected a pruned.pt written by "
                             "deploymtl prune")
    try:
        env = StaticFile.model_validate(data)
    except ValidationError as exc:
        raise DeploymtlError(validation_message(exc, path), hint="expected a pruned.pt written by deploymtl "
                             "prune") from None
    i = env.input
    try:
        model = build_static(env.graph, env.state_dict, image=(i.channels, i.height, i.width), tasks=env.tasks)
    except DeploymtlError as exc:
        raise DeploymtlError(f"{path}: {exc}", hint=exc.hint) from None
    removed = env.extra.get("removed_prefixes", [])
    if not isinstance(removed, list) or not all(isinstance(r, str) for r in removed):
        raise DeploymtlError(f"{path}: extra.removed_prefixes: expected a list of module paths, got {removed!r}")
    return StaticArtifact(model=model, family=env.family, tasks=env.tasks, plan=env.plan,
                          input=env.input.model_dump(mode="json"), recipe=env.recipe, extra=env.extra)


def example_input(art: StaticArtifact, batch: int = 1) -> torch.Tensor:
    i = art.input
    dtype = torch.uint8 if i.get("dtype") == "uint8" else torch.float32
    return torch.zeros(batch, i["channels"], i["height"], i["width"], dtype=dtype)
