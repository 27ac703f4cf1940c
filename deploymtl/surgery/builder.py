"""Building a static graph while a surgeon walks a supernet: `GraphBuilder` (nodes + folded weights) and `fold_bn`.

Each method emits one node of the IR (`deploymtl.ir.ops`) and stores its weights under `layers.<node>.<param>`;
`build()` validates the result and returns the `StaticModel`. Emitting the same supernet layer with the same
channel slicing twice stores it once (`shares`), as the supernet does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import DeploymtlError, InternalError
from ..ir import INPUT, StaticModel, check_weights, validate_spec


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
