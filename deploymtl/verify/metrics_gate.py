"""Accuracy gate for reduced precision: each task's metric on the validation set, fp16/int8 against fp32.

Rule (documented threshold): for every task, its primary metric (`deploymtl.tasks.PRIMARY_METRIC`: mIoU, depth
abs error, normals mean angle, accuracy) is computed over the whole validation split with the reduced-precision
artifact and with the fp32 reference (the PyTorch static model). The *drop* is the relative change in the worse
direction,

    drop = (fp32 - reduced) / |fp32|   (higher is better: mIoU, accuracy)
    drop = (reduced - fp32) / |fp32|   (lower is better: errors, angles)

(absolute change when |fp32| < 1e-12). Each task has its own budget (`deploymtl.budgets`: the recipe's
`export.max_metric_drop`, default 5% relative for every task; `deploymtl export --max-metric-drop
seg=0.5%,depth=abs:0.002` overrides), relative (on the drop) or absolute (on the change in the metric's unit); a task
fails when its loss exceeds it. An improvement is a negative loss and always passes. Every metric of every task is
reported with its delta; only the primary one gates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import torch

from ..budgets import Budget, Budgets, parse_budgets
from ..metrics import TaskMeter
from ..tasks import TaskSpec


class _Infer(Protocol):
    def infer(self, image: np.ndarray) -> dict[str, np.ndarray]: ...


def evaluate(runner: _Infer, images: torch.Tensor, targets: dict[str, torch.Tensor], tasks: list[TaskSpec],
             batch_size: int) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} of `runner` over (images (N, C, H, W), targets per task) in batches."""
    meters = {t.name: TaskMeter(t) for t in tasks}
    for i in range(0, images.shape[0], batch_size):
        x = np.ascontiguousarray(images[i:i + batch_size].numpy())  # float32, or raw uint8 pixels
        out = runner.infer(x)
        for t in tasks:
            meters[t.name].update(torch.from_numpy(np.asarray(out[t.name], dtype=np.float32)),
                                  targets[t.name][i:i + batch_size])
    return {name: m.compute() for name, m in meters.items()}


def relative_drop(reference: float, candidate: float, lower_is_better: bool) -> float:
    """Relative loss in the worse direction (negative = improvement); see the module docstring."""
    return Budget(value=0.0).loss(reference, candidate, lower_is_better)  # the one loss rule, relative


@dataclass
class TaskGate:
    metric: str
    fp32: float
    candidate: float
    drop: float  # relative, whatever the budget's kind
    passed: bool
    deltas: dict[str, dict[str, float]]
    budget: dict[str, Any]  # `Budget.to_dict()`: value, kind, text
    loss: float  # in the budget's terms (relative drop or absolute change); passed = loss <= budget value
    ratio: float  # loss / budget: <= 1 fits


@dataclass
class GateReport:
    """Per-task metric deltas; truthy when every task kept its budget. `max_drop` is the one relative budget
    all tasks share, None when the budgets differ per task (`budgets`)."""

    precision: str
    max_drop: float | None
    tasks: dict[str, TaskGate]

    def __bool__(self) -> bool:
        return all(t.passed for t in self.tasks.values())

    @property
    def passed(self) -> bool:
        return bool(self)

    @property
    def worst_ratio(self) -> float:
        return max((t.ratio for t in self.tasks.values()), default=0.0)

    def to_dict(self) -> dict:
        return {"precision": self.precision, "max_drop": self.max_drop, "passed": self.passed,
                "budgets": {k: v.budget for k, v in self.tasks.items()},
                "tasks": {k: asdict(v) for k, v in self.tasks.items()}}

    def summary(self) -> str:
        lines = []
        for name, t in self.tasks.items():
            verdict = "ok" if t.passed else "FAILED"
            lines.append(f"{name}: {t.metric} fp32 {t.fp32:.4f} {self.precision} {t.candidate:.4f} "
                         f"drop {t.drop:+.2%} (budget {t.budget['text']}) {verdict}")
        return "\n".join(lines)


def metric_gate(tasks: list[TaskSpec], fp32: dict[str, dict[str, float]], candidate: dict[str, dict[str, float]],
                *, precision: str, budgets: Budgets | float) -> GateReport:
    """Compare metrics already computed by `evaluate` for the fp32 reference and the reduced-precision artifact,
    each task against its budget."""
    budgets = parse_budgets(budgets)
    gates = {}
    for t in tasks:
        deltas = {m: {"fp32": fp32[t.name][m], "candidate": candidate[t.name][m],
                      "drop": relative_drop(fp32[t.name][m], candidate[t.name][m], lower)}
                  for m, lower in t.metrics.items()}
        primary = deltas[t.primary_metric]
        budget = budgets.for_task(t.name)
        loss = budget.loss(primary["fp32"], primary["candidate"], t.metrics[t.primary_metric])
        gates[t.name] = TaskGate(t.primary_metric, primary["fp32"], primary["candidate"], primary["drop"],
                                 bool(budget.fits(loss)), deltas, budget.to_dict(), loss, budget.ratio(loss))
    return GateReport(precision, budgets.uniform_relative(), gates)
