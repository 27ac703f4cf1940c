"""The static model: a list of plain-layer nodes rebuilt from JSON + weights (never a pickled module).

A graph spec is JSON:
    {"input": "image", "nodes": [{"name", "op", "inputs": [...], "attrs": {...}}, ...],
     "outputs": {task_name: node_name}}
Nodes are in execution order; a node's inputs are earlier nodes or "image". Parameters live in the state dict
under `layers.<node>.<param>`. A node with `"shares": "<earlier node>"` reuses that node's layer and weights: the
same supernet layer applied on two branches of a tree (AdaShare task groups) is stored once, as in the supernet.
`StaticModel.forward` walks the fixed node list: no data-dependent control flow, so torch.export / ONNX tracing
see a plain static graph.

Ops are a registry keyed by op name (`ops.OPS`: attrs, input count, output shape, weights, layer); adding one is one
entry there. A spec is validated (`check.py`) before any layer is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .check import check_spec, check_weights
from .ops import INPUT, OPS
from .schedule import Schedule


class StaticModel(nn.Module):
    """Plain-layer model rebuilt from a graph spec; `forward(image) -> {task: output}`."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        validate_spec(spec)
        self.spec = spec
        self.layers = nn.ModuleDict()
        self._order: list[tuple[str, str, list[str]]] = []  # (node, layer it runs, inputs)
        for node in spec["nodes"]:
            owner = node.get("shares")
            if owner is None:
                rule = OPS[node["op"]]
                self.layers[node["name"]] = rule.build(rule.attrs.model_validate(node.get("attrs", {})))
            self._order.append((node["name"], owner or node["name"], list(node["inputs"])))
        self.outputs = dict(spec["outputs"])
        self._schedule: Schedule | None = None  # compiled on first `infer`: plain Python, holds no tensors

    @property
    def task_names(self) -> list[str]:
        return list(self.outputs)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """The node-by-node interpreter: one module call per node, so autograd, tracing and export (ONNX node
        scopes come from the module calls) and forward hooks see every node. For inference call `infer`."""
        env = {INPUT: image}
        for name, layer, inputs in self._order:
            env[name] = self.layers[layer](*[env[i] for i in inputs])
        return {task: env[node] for task, node in self.outputs.items()}

    def infer(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """The values of `forward` (bit-identical but for the batch-1 dilated convolutions, `schedule.py`), computed
        by the compiled eager schedule under `torch.inference_mode`
        (`schedule.Schedule`: no Module.__call__, in-place ReLU and accumulation into dead tensors, freed
        intermediates). What runners, parity checks, the profiler and the benchmarks call. Forward hooks do not
        fire and nothing can be differentiated or traced through it: use `forward` for those."""
        if self._schedule is None:
            self._schedule = Schedule(self)
        with torch.inference_mode():
            return self._schedule.run(image)

    def __getstate__(self) -> dict[str, Any]:
        # The schedule's closures hold this instance's layers: a copy (deepcopy, pickle) compiles its own.
        return {**self.__dict__, "_schedule": None}


def validate_spec(spec: Any, image: tuple[int, int, int] | None = None,
                  tasks: Sequence[Any] | None = None) -> dict[str, tuple[str, str, tuple[int, ...]]]:
    """Reject a malformed graph spec with a one-line reason (it may come from an edited file): structure, each op's
    attrs, shapes through the graph (spatial ones given `image` = (C, H, W)), outputs against `tasks`. Returns the
    weights the spec needs (`check.check_spec`)."""
    return check_spec(spec, image, tasks)


def build_static(spec: Any, state: Any, *, image: tuple[int, int, int] | None = None,
                 tasks: Sequence[Any] | None = None) -> StaticModel:
    """Rebuild a static model from its spec and weights. Both are validated before any layer is built (a weight
    missing, extra, of the wrong shape or not finite is a one-line error), so loading cannot fail later."""
    check_weights(validate_spec(spec, image, tasks), state)
    model = StaticModel(spec)
    model.load_state_dict(dict(state), strict=True)
    return model.eval()


def static_nodes(model: nn.Module) -> list[tuple[str, str]]:
    """(node, layer it runs) in execution order, from the static model's spec (`shares` = layer of another
    node); a plain module (no spec) has none."""
    spec = getattr(model, "spec", None)
    if not isinstance(spec, dict):
        return []
    return [(n["name"], n.get("shares") or n["name"]) for n in spec["nodes"]]
