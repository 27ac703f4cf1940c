"""The static model: a list of plain-layer nodes rebuilt from JSON + weights (never a pickled module).

A graph spec is JSON:
    {"input": "image", "nodes": [{"name", "op", "inputs": [...], "attrs": {...}}, ...],
     "outputs": {task_name: node_name}}
Nodes are in execution order; a node's inputs are earlier nodes or "image". Parameters live in the state dict
under `layers.<node>.<param>`. A node with `"shares": "<earlier node>"` reuses that node's layer and weights: the
same supernet layer applied on two branches of a tree (AdaShare task groups) is stored once, as in the supernet.
`StaticModel.forward` walks the fixed node list: no data-dependent control
flow, so torch.export / ONNX tracing see a plain static graph.

Ops are a registry keyed by op name (`OPS`); adding one is one builder function plus its validation rule
(`graph_check.ATTRS`: attrs, input count, output shape, weights).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DeploymtlError, InternalError
from .check import ATTRS, INPUT, check_spec, check_weights
from .schedule import Plan, global_hooks


class Relu(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)


class Add(nn.Module):
    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class Concat(nn.Module):
    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=1)


class Select(nn.Module):
    """Fixed channel selection (a permutation/subset of channels)."""

    def __init__(self, index: list[int]) -> None:
        super().__init__()
        self.register_buffer("index", torch.tensor(index, dtype=torch.int64), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.index)


class Narrow(nn.Module):
    """Channels [start, start + length) of the input, as a view (one branch's part of a merged convolution)."""

    def __init__(self, start: int, length: int) -> None:
        super().__init__()
        self.start, self.length = start, length

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.narrow(1, self.start, self.length)


class ChannelScale(nn.Module):
    """Constant per-channel scale (folded mixing weights that could not go into a conv)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, -1, 1, 1)


class WeightedSum(nn.Module):
    """sum_i w_i * x_i with constant per-input, per-channel weights (GatedMTL's beta mixing)."""

    def __init__(self, inputs: int, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(inputs, channels), requires_grad=False)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = xs[0] * self.weight[0].view(1, -1, 1, 1)
        for i, x in enumerate(xs[1:], start=1):
            out = out + x * self.weight[i].view(1, -1, 1, 1)
        return out


class ResizeTo(nn.Module):
    """Bilinear upsampling of input 0 to the spatial size of input 1 (the image)."""

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


class GlobalAvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def _conv(a: dict[str, Any]) -> nn.Module:
    return nn.Conv2d(a["cin"], a["cout"], a["k"], a.get("stride", 1), a.get("padding", 0),
                     dilation=a.get("dilation", 1), groups=a.get("groups", 1), bias=a.get("bias", True))


OPS: dict[str, Callable[[dict[str, Any]], nn.Module]] = {
    "conv": _conv,
    "relu": lambda a: Relu(),
    "add": lambda a: Add(),
    "concat": lambda a: Concat(),
    "maxpool": lambda a: nn.MaxPool2d(a["k"], a["stride"], a.get("padding", 0), ceil_mode=a.get("ceil_mode", False)),
    "select": lambda a: Select(a["index"]),
    "narrow": lambda a: Narrow(a["start"], a["length"]),
    "scale": lambda a: ChannelScale(a["channels"]),
    "wsum": lambda a: WeightedSum(a["inputs"], a["channels"]),
    "resize_to": lambda a: ResizeTo(),
    "gap": lambda a: GlobalAvgPool(),
    "linear": lambda a: nn.Linear(a["cin"], a["cout"]),
}
assert set(OPS) == set(ATTRS), "every op needs its validation rule in graph_check.ATTRS"


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
                self.layers[node["name"]] = OPS[node["op"]](node.get("attrs", {}))
            self._order.append((node["name"], owner or node["name"], list(node["inputs"])))
        self.outputs = dict(spec["outputs"])
        self._plan: Plan | None = None  # built on first use: plain Python, holds no tensors of its own

    @property
    def task_names(self) -> list[str]:
        return list(self.outputs)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Runs the node list. Without autograd, tracing or hooks, an equivalent lower-overhead plan runs instead
        (`fastpath.Plan`: no Module.__call__, in-place ReLU/accumulation into dead tensors, freed
        intermediates); tracing and export always see one module call per node (ONNX node scopes come from it)."""
        if self._plan_usable():
            if self._plan is None:
                self._plan = Plan(self)
            return self._plan.run(image)
        env = {INPUT: image}
        for name, layer, inputs in self._order:
            env[name] = self.layers[layer](*[env[i] for i in inputs])
        return {task: env[node] for task, node in self.outputs.items()}

    def __getstate__(self) -> dict[str, Any]:
        # The plan's closures hold this instance's layers: a copy (deepcopy, pickle) builds its own on first use.
        return {**self.__dict__, "_plan": None}

    def _plan_usable(self) -> bool:
        if torch.is_grad_enabled() or torch.compiler.is_compiling() or torch.jit.is_tracing():
            return False  # autograd needs the un-mutated intermediates; tracers need module calls
        if global_hooks():
            return False
        return not any(m._forward_hooks or m._forward_pre_hooks for m in self.layers.values())


def validate_spec(spec: Any, image: tuple[int, int, int] | None = None,
                  tasks: Sequence[Any] | None = None) -> dict[str, tuple[str, str, tuple[int, ...]]]:
    """Reject a malformed graph spec with a one-line reason (it may come from an edited file): structure, each op's
    attrs, shapes through the graph (spatial ones given `image` = (C, H, W)), outputs against `tasks`. Returns the
    weights the spec needs (`graph_check.check_spec`)."""
    return check_spec(spec, image, tasks)


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv weight and bias with an eval-mode BatchNorm folded in: w' = w*g/s, b' = (b-mu)*g/s + beta."""
    w = conv.weight.detach().clone()
    b = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(w.shape[0])
    if bn is None:
        return w, b
    std = torch.sqrt(bn.running_var.detach() + bn.eps)
    gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias.detach() if bn.bias is not None else torch.zeros_like(std)
    factor = gamma / std
    return w * factor.view(-1, 1, 1, 1), (b - bn.running_mean.detach()) * factor + beta


class GraphBuilder:
    """Accumulates nodes and weights while a surgeon walks a supernet with fixed decisions."""

    def __init__(self) -> None:
        self.nodes: list[dict[str, Any]] = []
        self.state: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, str] = {}
        self._names: set[str] = {INPUT}
        self._emitted: dict[tuple, str] = {}  # source layer (+ channel slicing) -> owning node
        self._sources: list[nn.Module | None] = []  # keeps keyed layers alive: ids in `_emitted` stay unique

    def _add(self, name: str, op: str, inputs: list[str], attrs: dict[str, Any] | None = None,
             shares: str | None = None, **params: torch.Tensor) -> str:
        name = name.replace(".", "_")
        if name in self._names:
            raise InternalError(f"surgeon emitted the static node name {name} twice")  # not user input
        self._names.add(name)
        node: dict[str, Any] = {"name": name, "op": op, "inputs": list(inputs), "attrs": attrs or {}}
        if shares is not None:
            node["shares"] = shares
        self.nodes.append(node)
        for key, value in params.items():
            self.state[f"layers.{name}.{key}"] = value.detach().clone().contiguous()
        return name

    def conv(self, name: str, x: str, weight: torch.Tensor, bias: torch.Tensor | None, *, stride: int = 1,
             padding: int = 0, dilation: int = 1, groups: int = 1) -> str:
        """A conv node; with `groups` > 1, group i reads input channels [i cin/groups, (i+1) cin/groups) and writes
        output channels [i cout/groups, (i+1) cout/groups) (weight rows in that order, as in nn.Conv2d)."""
        cout, cin_per_group, k, _ = weight.shape
        attrs = {"cin": cin_per_group * groups, "cout": cout, "k": k, "stride": stride, "padding": padding,
                 "dilation": dilation, "bias": bias is not None}
        if groups != 1:
            attrs["groups"] = groups
        params = {"weight": weight} | ({"bias": bias} if bias is not None else {})
        return self._add(name, "conv", [x], attrs, **params)

    def conv_module(self, name: str, x: str, conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None,
                    out_index: torch.Tensor | None = None, in_index: torch.Tensor | None = None) -> str:
        """Emit `conv` (+ folded `bn`), optionally keeping only some output/input channels. Emitting the same
        supernet layer with the same slicing again reuses the first node's weights (`shares`)."""
        key = (id(conv), id(bn), None if out_index is None else tuple(int(i) for i in out_index),
               None if in_index is None else tuple(int(i) for i in in_index))
        if key in self._emitted:
            owner = self._emitted[key]
            attrs = next(n["attrs"] for n in self.nodes if n["name"] == owner)
            return self._add(name, "conv", [x], dict(attrs), shares=owner)
        w, b = fold_bn(conv, bn)
        if out_index is not None:
            w, b = w[out_index], b[out_index]
        if in_index is not None:
            w = w[:, in_index]
        node = self.conv(name, x, w, b, stride=conv.stride[0], padding=conv.padding[0], dilation=conv.dilation[0])
        self._emitted[key] = node
        self._sources += [conv, bn]
        return node

    def relu(self, name: str, x: str) -> str:
        return self._add(name, "relu", [x])

    def add(self, name: str, *xs: str) -> str:
        return self._add(name, "add", list(xs))

    def concat(self, name: str, *xs: str) -> str:
        return self._add(name, "concat", list(xs))

    def select(self, name: str, x: str, index: list[int]) -> str:
        return self._add(name, "select", [x], {"index": [int(i) for i in index]})

    def narrow(self, name: str, x: str, start: int, length: int) -> str:
        return self._add(name, "narrow", [x], {"start": int(start), "length": int(length)})

    def scale(self, name: str, x: str, scale: torch.Tensor) -> str:
        return self._add(name, "scale", [x], {"channels": int(scale.numel())}, scale=scale.float())

    def wsum(self, name: str, xs: list[str], weight: torch.Tensor) -> str:
        n, c = weight.shape
        return self._add(name, "wsum", xs, {"inputs": n, "channels": c}, weight=weight.float())

    def maxpool(self, name: str, x: str, pool: nn.MaxPool2d) -> str:
        def one(v: Any) -> int:
            return int(v[0] if isinstance(v, (tuple, list)) else v)

        attrs = {"k": one(pool.kernel_size), "stride": one(pool.stride), "padding": one(pool.padding),
                 "ceil_mode": bool(pool.ceil_mode)}
        return self._add(name, "maxpool", [x], attrs)

    def resize_to_input(self, name: str, x: str) -> str:
        return self._add(name, "resize_to", [x, INPUT])

    def gap(self, name: str, x: str) -> str:
        return self._add(name, "gap", [x])

    def linear(self, name: str, x: str, fc: nn.Linear) -> str:
        return self._add(name, "linear", [x], {"cin": fc.in_features, "cout": fc.out_features},
                         weight=fc.weight, bias=fc.bias)

    def output(self, task: str, node: str) -> None:
        self.outputs[task] = node

    def spec(self) -> dict[str, Any]:
        return {"input": INPUT, "nodes": self.nodes, "outputs": dict(self.outputs)}

    def build(self) -> StaticModel:
        """The static model with the accumulated weights loaded (strictly: every parameter accounted for). A graph
        the surgeon built that fails validation is our bug, not the user's input."""
        try:
            check_weights(validate_spec(self.spec()), self.state)
        except DeploymtlError as exc:
            raise InternalError(f"the surgeon built a malformed static graph: {exc.one_line()}") from None
        model = StaticModel(self.spec())
        model.load_state_dict(self.state, strict=True)
        return model.eval()


def build_static(spec: Any, state: Any, *, image: tuple[int, int, int] | None = None,
                 tasks: Sequence[Any] | None = None) -> StaticModel:
    """Rebuild a static model from its spec and weights. Both are validated before any layer is built (a weight
    missing, extra, of the wrong shape or not finite is a one-line error), so loading cannot fail later."""
    check_weights(validate_spec(spec, image, tasks), state)
    model = StaticModel(spec)
    model.load_state_dict(dict(state), strict=True)
    return model.eval()
