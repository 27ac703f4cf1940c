"""Blocks shared by the families: conv-BN(-ReLU) units and the heads (light, DeepLab-v2 ASPP, classifier).

The surgeon knows each of these types through `deploymtl.surgery.registry`; a new block or head type needs one
registry entry there (its emission and its parameter count), which every family then uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..tasks import TaskSpec


class ConvBN(nn.Module):
    """Conv (no bias) -> BatchNorm -> optional ReLU."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1,
                 relu: bool = True) -> None:
        super().__init__()
        pad = dilation * (k - 1) // 2
        self.conv = nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x) if self.relu else x


class Stem(nn.Module):
    """Deeplab-ResNet stem: conv7x7/2 -> BN -> ReLU -> maxpool 3x3/2 (ceil_mode), always run."""

    def __init__(self, cin: int, width: int) -> None:
        super().__init__()
        self.conv = ConvBN(cin, width, k=7, stride=2)
        self.conv.conv.padding = (3, 3)
        self.pool = nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x))


def upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A dense head's output brought to the input size: bilinear, align_corners=False."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class LightHead(nn.Module):
    """Tiny dense head: conv3x3-BN-ReLU -> conv1x1 (bias), upsampled bilinearly to the input size (unless
    `upsample` is false: the raw output at feature resolution, `TaskSpec.resolution` "features")."""

    def __init__(self, cin: int, cout: int, hidden: int = 32, upsample: bool = True) -> None:
        super().__init__()
        self.conv = ConvBN(cin, hidden, k=3)
        self.out = nn.Conv2d(hidden, cout, 1)
        self.upsample = upsample

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        out = self.out(self.conv(x))
        return upsample(out, size) if self.upsample else out


class ASPPBranch(nn.Module):
    """DeepLab-v2 ASPP branch (AdaShare `task{t}_fc1_c{k}`): dilated conv3x3 -> ReLU -> conv1x1 -> ReLU
    -> conv1x1, dropout between them in training."""

    def __init__(self, cin: int, cout: int, rate: int, hidden: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, hidden, 3, padding=rate, dilation=rate)
        self.conv2 = nn.Conv2d(hidden, hidden, 1)
        self.conv3 = nn.Conv2d(hidden, cout, 1)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(F.relu(self.conv1(x)))
        x = self.drop(F.relu(self.conv2(x)))
        return self.conv3(x)


class ASPPHead(nn.Module):
    """Four ASPP branches (rates 6/12/18/24) summed, upsampled to the input size (unless `upsample` is false: the
    public AdaShare output, raw at feature resolution)."""

    def __init__(self, cin: int, cout: int, hidden: int = 1024, rates: tuple[int, ...] = (6, 12, 18, 24),
                 upsample: bool = True) -> None:
        super().__init__()
        self.branches = nn.ModuleList(ASPPBranch(cin, cout, r, hidden) for r in rates)
        self.upsample = upsample

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        out = sum(b(x) for b in self.branches)
        return upsample(out, size) if self.upsample else out


class ClassifierHead(nn.Module):
    """Image-level head: global average pool -> linear."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.fc = nn.Linear(cin, cout)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


def make_head(task: TaskSpec, cin: int, kind: str = "light", hidden: int = 32) -> nn.Module:
    """The head of one task: classification tasks always get the classifier head."""
    if task.kind == "classification":
        return ClassifierHead(cin, task.out_channels)
    up = task.resolution == "input"
    if kind == "aspp":
        return ASPPHead(cin, task.out_channels, hidden=hidden, upsample=up)
    return LightHead(cin, task.out_channels, hidden=hidden, upsample=up)
