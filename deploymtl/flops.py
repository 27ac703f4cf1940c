"""FLOPs and parameter counts of a multi-task computation, per task and in total.

FLOPs are those of `torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix products, 2 per
multiply-add; element-wise ops, pooling and resizing count 0), for one forward call at a given input shape.

Per-task figures need to know which part of one multi-task forward call each output depends on. While the call runs
under the FlopCounterMode, a dispatch mode above it records the aten-level dataflow (each op, the ops that produced
its tensor inputs, the parameters it reads, and the FLOPs the counter attributed to it). A task's FLOPs are those of
the ops its output transitively depends on, its parameters those read by these ops. This works on any module,
including supernets with data-dependent Python control flow, because it observes the executed computation:

- `before`: the supernet's `public_forward` (what the family's public code runs for all tasks);
- `masked`: the supernet's deployed `forward` (hard decisions, removed parts still computed);
- `after`: the static model.

`total` FLOPs are everything the call computes; `total` params are every parameter the model holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode


@dataclass
class _Op:
    flops: int
    parents: list[int]
    params: list[int]  # ids of parameters read directly


class _DataflowRecorder(TorchDispatchMode):
    """Records the executed aten ops as a DAG; FLOPs per op are read off the FlopCounterMode below it."""

    def __init__(self, counter: FlopCounterMode, param_ids: set[int]) -> None:
        super().__init__()
        self.counter = counter
        self.param_ids = param_ids
        self.ops: list[_Op] = []
        self.producer: dict[int, int] = {}  # id(tensor) -> index of the op that last wrote it
        self.keep: list[Any] = []  # holds outputs alive so that ids are never reused during the trace

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's signature
        kwargs = kwargs or {}
        inputs = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        before = self.counter.get_total_flops()
        out = func(*args, **kwargs)
        op = _Op(self.counter.get_total_flops() - before,
                 sorted({self.producer[id(t)] for t in inputs if id(t) in self.producer}),
                 sorted({id(t) for t in inputs if id(t) in self.param_ids}))
        index = len(self.ops)
        self.ops.append(op)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.producer[id(t)] = index  # in-place ops re-point the tensor to its newest writer
                self.keep.append(t)
        return out

    def ancestors(self, tensor: torch.Tensor) -> set[int]:
        start = self.producer.get(id(tensor))
        if start is None:
            return set()
        seen, stack = {start}, [start]
        while stack:
            for parent in self.ops[stack.pop()].parents:
                if parent not in seen:
                    seen.add(parent)
                    stack.append(parent)
        return seen


@dataclass
class Cost:
    """FLOPs and parameters of one forward call: per task and `total`."""

    flops: dict[str, int] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)


def measure(fn: Callable[[torch.Tensor], dict[str, torch.Tensor]], module: nn.Module, image: torch.Tensor,
            tasks: list[str]) -> Cost:
    """Cost of `fn(image)` (a forward of `module`) for the outputs named in `tasks`."""
    params = {id(p): p.numel() for p in module.parameters()}
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        recorder = _DataflowRecorder(counter, set(params))
        with recorder:
            outputs = fn(image)
        total = counter.get_total_flops()
    cost = Cost(params={"total": sum(params.values())})
    for task in tasks:
        ops = recorder.ancestors(outputs[task])
        cost.flops[task] = sum(recorder.ops[i].flops for i in ops)
        used = {p for i in ops for p in recorder.ops[i].params}
        cost.params[task] = sum(params[p] for p in used)
    cost.flops["total"] = total
    recorder.keep.clear()
    return cost


def measure_stages(supernet: Any, static: nn.Module, tasks: list[str], image: torch.Tensor) -> dict[str, Any]:
    """{"params": {stage: {task..., "total"}}, "flops": {...}} for stages before / masked / after.

    `supernet` must be in deployed mode with the plan applied; `image` is one example input (N,C,H,W)."""
    was_deployed = supernet.deployed
    supernet.eval()
    try:
        supernet.set_deployed(True)
        costs = {
            "before": measure(supernet.public_forward, supernet, image, tasks),
            "masked": measure(supernet.forward, supernet, image, tasks),
            "after": measure(static.forward, static, image, tasks),
        }
    finally:
        supernet.set_deployed(was_deployed)
    return {
        "params": {stage: c.params for stage, c in costs.items()},
        "flops": {stage: c.flops for stage, c in costs.items()},
    }


def ratio(after: float, before: float) -> float | None:
    return round(after / before, 6) if before else None
