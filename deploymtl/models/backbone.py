"""Deeplab-ResNet pieces shared by the families (docs/methods.md, Deeplab-ResNet and AdaShare).

Stem conv7x7/2 -> BN -> ReLU -> maxpool 3x3/2 (ceil_mode); BasicBlock segments with strides [1,2,1,1],
dilations [1,1,2,4], widths [w,2w,4w,8w]: output stride 8. ResNet-18 = [2,2,2,2], ResNet-34 = [3,4,6,3].
A block's *body* is conv-bn-relu-conv-bn; the residual add and ReLU are applied outside it, and a segment's
first block has a shortcut `ds` (1x1 conv + BN) when stride, width or dilation changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..tasks import TaskSpec
from .layers import ConvBN, Stem, make_head

STRIDES = (1, 2, 1, 1)
DILATIONS = (1, 1, 2, 4)
DEPTHS = {"resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3]}


class BackboneConfig(BaseModel):
    """The `model:` fields every family shares; families extend it."""

    model_config = ConfigDict(extra="forbid")

    blocks: list[int] | Literal["resnet18", "resnet34"] = Field(default=[1, 1, 1, 1])
    width: int = Field(default=16, ge=1, description="channels of the first segment (64 in the paper)")
    head: Literal["light", "aspp"] = "light"
    head_hidden: int = Field(default=32, ge=1)
    in_channels: int = Field(default=3, ge=1)

    def block_counts(self) -> list[int]:
        counts = DEPTHS[self.blocks] if isinstance(self.blocks, str) else list(self.blocks)
        if len(counts) != 4 or min(counts) < 1:
            raise ValueError("blocks must list 4 segment depths >= 1 (or resnet18/resnet34)")
        return counts


@dataclass(frozen=True)
class BlockSlot:
    """Where a residual block sits: its index, segment, and shape."""

    index: int
    segment: int
    cin: int
    cout: int
    stride: int
    dilation: int
    has_ds: bool


def block_slots(cfg: BackboneConfig) -> list[BlockSlot]:
    slots, cin, index = [], cfg.width, 0
    for seg, n in enumerate(cfg.block_counts()):
        cout = cfg.width * 2**seg
        for b in range(n):
            stride = STRIDES[seg] if b == 0 else 1
            dil = DILATIONS[seg]
            # AdaShare's Deeplab-ResNet gives a segment's first block `ds` when the stride or width changes
            # or the segment is dilated (2 or 4).
            has_ds = b == 0 and (stride != 1 or cin != cout or dil in (2, 4))
            slots.append(BlockSlot(index, seg, cin, cout, stride, dil, has_ds))
            cin, index = cout, index + 1
    return slots


class BlockBody(nn.Module):
    """conv3x3(stride, dilation)-BN-ReLU-conv3x3(dilation)-BN; the residual add lives outside."""

    def __init__(self, slot: BlockSlot) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(slot.cin, slot.cout, 3, slot.stride, slot.dilation, dilation=slot.dilation,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(slot.cout)
        self.conv2 = nn.Conv2d(slot.cout, slot.cout, 3, 1, slot.dilation, dilation=slot.dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(slot.cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))


def make_ds(slot: BlockSlot) -> nn.Module | None:
    return ConvBN(slot.cin, slot.cout, k=1, stride=slot.stride, relu=False) if slot.has_ds else None


class SingleTaskNet(nn.Module):
    """Plain Deeplab-ResNet + one head: the single-task reference for Delta_MTL."""

    def __init__(self, task: TaskSpec, cfg: BackboneConfig) -> None:
        super().__init__()
        self.task = task
        self.stem = Stem(cfg.in_channels, cfg.width)
        self.slots = block_slots(cfg)
        self.bodies = nn.ModuleList(BlockBody(s) for s in self.slots)
        self.ds = nn.ModuleList(make_ds(s) or nn.Identity() for s in self.slots)
        self.head = make_head(task, self.slots[-1].cout, cfg.head, cfg.head_hidden)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(image)
        for body, ds in zip(self.bodies, self.ds, strict=True):
            x = F.relu(ds(x) + body(x))
        return {self.task.name: self.head(x, image.shape[-2:])}
