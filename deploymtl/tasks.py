"""Task specifications: what a task predicts, how it is trained and how it is scored.

Everything downstream (heads, ONNX outputs, reports) is keyed by the task's name. A task's kind fixes its
output layout, loss and metrics (docs/methods.md, evaluation conventions):

- segmentation:   logits (N, C, H, W); target (N, H, W) int64 with -1 = ignore; CE loss; mIoU, pixel acc.
- depth:          (N, 1, H, W);        target (N, 1, H, W) with 0 = invalid;     L1 loss;  abs/rel error.
- normals:        (N, 3, H, W);        target unit vectors, 0 = invalid;         1-cos;    angle stats.
- classification: logits (N, C);       target (N,) int64;                         CE loss;  accuracy.

A dense task's `resolution` says where its output lives: "input" (deploymtl's heads upsample bilinearly to the
input size) or "features" (the head's raw output at the backbone's feature resolution, output stride 8, as the
public AdaShare code returns it; imported models keep it, docs/methods.md). Losses and metrics bring a "features"
output to its target's size with nearest-neighbour resizing, the public evaluation's rule (`to_target_size`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

TaskKind = Literal["segmentation", "depth", "normals", "classification"]
Resolution = Literal["input", "features"]

# metric name -> lower is better, per kind (the order is the report order).
METRICS: dict[str, dict[str, bool]] = {
    "segmentation": {"miou": False, "pixel_acc": False},
    "depth": {"abs_err": True, "rel_err": True},
    "normals": {"mean_angle": True, "median_angle": True, "within_11.25": False, "within_22.5": False,
                "within_30": False},
    "classification": {"accuracy": False},
}
# The metric each kind is judged by when one number is needed (accuracy gates, summaries).
PRIMARY_METRIC = {"segmentation": "miou", "depth": "abs_err", "normals": "mean_angle",
                  "classification": "accuracy"}
DENSE_KINDS = ("segmentation", "depth", "normals")


class TaskSpec(BaseModel):
    """One task of a multi-task model, as named in a recipe."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    kind: TaskKind
    channels: int | None = Field(default=None, ge=1, description="classes for segmentation/classification")
    loss_weight: float = Field(default=1.0, gt=0)
    resolution: Resolution = Field(default="input", description="dense outputs: 'input' (upsampled to the input "
                                                                "size) or 'features' (raw, at output stride 8)")

    @model_validator(mode="after")
    def _channels(self) -> TaskSpec:
        if self.kind == "classification" and self.resolution != "input":
            raise ValueError(f"task '{self.name}': resolution applies to dense tasks, not {self.kind}")
        fixed = {"depth": 1, "normals": 3}
        if self.kind in fixed:
            if self.channels not in (None, fixed[self.kind]):
                raise ValueError(f"task '{self.name}': kind {self.kind} has {fixed[self.kind]} channels, "
                                 f"got {self.channels}")
            object.__setattr__(self, "channels", fixed[self.kind])
        elif self.channels is None or self.channels < 2:
            raise ValueError(f"task '{self.name}': kind {self.kind} needs channels >= 2 (number of classes)")
        return self

    @property
    def dense(self) -> bool:
        return self.kind in DENSE_KINDS

    @property
    def out_channels(self) -> int:
        assert self.channels is not None  # set by the validator
        return self.channels

    @property
    def metrics(self) -> dict[str, bool]:
        return METRICS[self.kind]

    @property
    def primary_metric(self) -> str:
        return PRIMARY_METRIC[self.kind]


def postprocess(task: TaskSpec, out: torch.Tensor) -> torch.Tensor:
    """Map a head's raw output to the task's prediction space (normals are unit vectors)."""
    if task.kind == "normals":
        return F.normalize(out, dim=1, eps=1e-6)
    return out


def to_target_size(task: TaskSpec, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A "features"-resolution dense output resized (nearest) to its target's spatial size; others unchanged."""
    if task.resolution != "features" or not task.dense or out.shape[-2:] == target.shape[-2:]:
        return out
    return F.interpolate(out, size=tuple(target.shape[-2:]), mode="nearest")


def task_loss(task: TaskSpec, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The training loss of one task on a batch; invalid pixels do not count."""
    out = to_target_size(task, out, target)
    if task.kind in ("segmentation", "classification"):
        if not (target >= 0).any():  # all ignored: cross_entropy would return NaN
            return out.sum() * 0.0
        return F.cross_entropy(out, target.long(), ignore_index=-1)
    if task.kind == "depth":
        valid = target > 0
        if not valid.any():
            return out.sum() * 0.0
        return (out - target).abs()[valid].mean()
    if task.kind == "normals":
        pred = F.normalize(out, dim=1, eps=1e-6)
        valid = target.abs().sum(dim=1) > 0
        if not valid.any():
            return out.sum() * 0.0
        cos = (pred * target).sum(dim=1)
        return (1.0 - cos)[valid].mean()
    raise ValueError(f"unknown task kind {task.kind}")
