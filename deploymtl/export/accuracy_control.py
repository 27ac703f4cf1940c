"""Accuracy control: revert quantised groups to float until every task keeps its budget.

The loop follows OpenVINO NNCF's `quantize_with_accuracy_control` (rank the quantised groups by what reverting
each one alone recovers, on a subset of the validation items that suffer most; revert the best one; validate on
the whole split; re-rank when a step made things worse; stop when the budget holds or nothing is left), with the
ranking ours: one int8 graph serves several tasks, each with its own budget, so a group's score is the *worst
task's* loss over its budget (`GateReport.worst_ratio`) once the group is float, not one metric.

Pure over two callbacks so it can be tested on a constructed case: `full(float_groups)` and
`subset(float_groups)` return the metric gate of the graph with those groups in float, on the whole validation
split and on the ranking subset.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..verify.metrics_gate import GateReport

Evaluate = Callable[[frozenset[str]], GateReport]


@dataclass
class Step:
    reverted: str  # the group turned float
    worst_task: str
    worst_ratio: float  # on the whole split, after the step
    passed: bool
    reranked: bool = False  # the step made the worst task worse: the remaining groups were ranked again

    def to_dict(self) -> dict[str, Any]:
        return {"reverted": self.reverted, "worst_task": self.worst_task, "worst_ratio": round(self.worst_ratio, 4),
                "passed": self.passed, "reranked": self.reranked}


@dataclass
class ControlResult:
    float_groups: list[str]  # every float group: the `start` ones, then those reverted, in order
    gate: GateReport  # on the whole split, at the end
    steps: list[Step] = field(default_factory=list)
    rankings: list[list[dict[str, Any]]] = field(default_factory=list)  # each ranking: group, worst ratio on subset

    @property
    def passed(self) -> bool:
        return self.gate.passed

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reverted": [s.reverted for s in self.steps],
                "steps": [s.to_dict() for s in self.steps],
                "rankings": self.rankings, "final": self.gate.to_dict()}


def worst_task(gate: GateReport) -> str:
    return max(gate.tasks, key=lambda k: gate.tasks[k].ratio) if gate.tasks else ""


def rank(groups: Sequence[str], reverted: frozenset[str], subset: Evaluate) -> list[tuple[str, float, Any]]:
    """The groups not yet float, best first: by the worst task's loss/budget on the subset once the group is float,
    then by the sum over tasks (which breaks ties between groups that leave the same task worst)."""
    scored = []
    for name in groups:
        if name in reverted:
            continue
        gate = subset(reverted | {name})
        # a zero budget makes every ratio of a loss infinite: the largest loss then orders them
        total = (sum(max(t.ratio, 0.0) for t in gate.tasks.values()), max(t.loss for t in gate.tasks.values()))
        scored.append((name, gate.worst_ratio, total))
    return sorted(scored, key=lambda s: (s[1], s[2]))


def accuracy_control(groups: Sequence[str], full: Evaluate, subset: Evaluate, *,
                     start: frozenset[str] = frozenset(), max_reranks: int = 3,
                     log: Callable[[str], None] | None = None) -> ControlResult:
    """Revert groups (names from `groups`, in graph order) to float, starting from `start` already float, until
    `full` passes; see the module docstring. Ends with every group float at worst."""
    reverted = list(start)
    gate = full(frozenset(reverted))
    result = ControlResult(list(reverted), gate)
    if gate.passed:
        return result
    reranks = 0
    order = rank(groups, frozenset(reverted), subset)
    result.rankings.append(_ranking(order))
    while order and not gate.passed:
        name = order.pop(0)[0]
        reverted.append(name)
        new = full(frozenset(reverted))
        worse = new.worst_ratio > gate.worst_ratio
        step = Step(name, worst_task(new), new.worst_ratio, new.passed)
        result.steps.append(step)
        if log:
            log(f"accuracy control: {name} -> float: worst task {step.worst_task} at {new.worst_ratio:.2f} of its "
                f"budget{'' if new.passed else ' (still over)'}")
        gate = new
        if worse and not new.passed and order and reranks < max_reranks:
            reranks += 1
            step.reranked = True
            order = rank(groups, frozenset(reverted), subset)
            result.rankings.append(_ranking(order))
    result.float_groups, result.gate = reverted, gate
    return result


def _ranking(order: list[tuple[str, float, Any]]) -> list[dict[str, Any]]:
    return [{"group": n, "worst_ratio_on_subset": round(w, 4)} for n, w, _ in order]
