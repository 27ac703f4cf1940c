"""Task metrics (NYUv2 conventions, docs/methods.md) and Delta_MTL (Maninis et al. 2019).

Metrics accumulate over a whole set (a confusion matrix for segmentation, sums over valid pixels for depth,
all valid angles for normals) and are computed once at the end, as the NYUv2 papers do.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .tasks import TaskSpec, to_target_size


class TaskMeter:
    """Accumulates one task's predictions over a data set; `compute()` returns {metric: value}."""

    def __init__(self, task: TaskSpec) -> None:
        self.task = task
        self.count = 0
        self._confusion = torch.zeros(task.out_channels, task.out_channels, dtype=torch.int64) \
            if task.kind == "segmentation" else None
        self._abs = 0.0
        self._rel = 0.0
        self._angles: list[torch.Tensor] = []
        self._correct = 0

    @torch.no_grad()
    def update(self, out: torch.Tensor, target: torch.Tensor) -> None:
        """`out` is the model's raw output for the batch, `target` the batch's label for this task."""
        out = out.detach().float().cpu()
        target = target.detach().cpu()
        out = to_target_size(self.task, out, target)
        kind = self.task.kind
        if kind == "segmentation":
            self._confusion += confusion_matrix(out.argmax(dim=1), target, self.task.out_channels)
        elif kind == "depth":
            valid = target > 0
            n = int(valid.sum())
            if n:
                err = (out - target)[valid].abs()
                self._abs += float(err.sum())
                self._rel += float((err / target[valid]).sum())
                self.count += n
        elif kind == "normals":
            self._angles.append(normal_angles(out, target))
        elif kind == "classification":
            valid = target >= 0
            self._correct += int((out.argmax(dim=1)[valid] == target[valid]).sum())
            self.count += int(valid.sum())

    def compute(self) -> dict[str, float]:
        kind = self.task.kind
        if kind == "segmentation":
            assert self._confusion is not None
            return segmentation_scores(self._confusion)
        if kind == "depth":
            n = max(self.count, 1)
            return {"abs_err": self._abs / n, "rel_err": self._rel / n}
        if kind == "normals":
            angles = torch.cat(self._angles) if self._angles else torch.zeros(0)
            return normal_scores(angles)
        return {"accuracy": self._correct / max(self.count, 1)}


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) counts, rows = ground truth, columns = prediction; target -1 (ignore) is skipped."""
    valid = (target >= 0) & (target < num_classes)
    idx = target[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_scores(confusion: torch.Tensor) -> dict[str, float]:
    """mIoU over classes present in the ground truth or the prediction, and pixel accuracy."""
    conf = confusion.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    miou = float((tp[present] / union[present]).mean()) if present.any() else 0.0
    total = conf.sum()
    acc = float(tp.sum() / total) if total > 0 else 0.0
    return {"miou": miou, "pixel_acc": acc}


def normal_angles(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Angles in degrees between predicted and true normals at valid pixels (target not all zero)."""
    pred = F.normalize(out.float(), dim=1, eps=1e-6)
    valid = target.abs().sum(dim=1) > 0
    cos = (pred * F.normalize(target.float(), dim=1, eps=1e-6)).sum(dim=1).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cos[valid]))


def normal_scores(angles: torch.Tensor) -> dict[str, float]:
    if angles.numel() == 0:
        nan = float("nan")
        return {"mean_angle": nan, "median_angle": nan, "within_11.25": nan, "within_22.5": nan,
                "within_30": nan}
    return {
        "mean_angle": float(angles.mean()),
        # np.median as in MTAN's evaluation (torch.median returns the lower middle value)
        "median_angle": float(np.median(angles.numpy())),
        "within_11.25": float((angles < 11.25).double().mean()),
        "within_22.5": float((angles < 22.5).double().mean()),
        "within_30": float((angles < 30).double().mean()),
    }


def delta_mtl(
    tasks: list[TaskSpec], multi: dict[str, dict[str, float]], single: dict[str, dict[str, float]]
) -> float:
    """Delta_MTL in percent: mean over every metric of every task of the signed relative change against
    the single-task reference, sign flipped where lower is better (Maninis et al. 2019)."""
    terms: list[float] = []
    for task in tasks:
        for metric, lower_better in task.metrics.items():
            m, s = multi[task.name][metric], single[task.name][metric]
            if not (math.isfinite(m) and math.isfinite(s)) or s == 0:
                continue
            sign = -1.0 if lower_better else 1.0
            terms.append(sign * (m - s) / abs(s) * 100.0)
    return sum(terms) / len(terms) if terms else float("nan")
