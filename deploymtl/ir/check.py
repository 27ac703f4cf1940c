"""Validation of a static graph spec and its weights, before anything is built from them.

A `pruned.pt` may be edited or damaged, so everything `StaticModel` and `build_static` rely on is checked here first
and reported as a one-line `DeploymtlError` naming the node and the field (never a KeyError or a torch error later):

- structure: `nodes` is a list of mappings with unique plain names (not attributes of `nn.ModuleDict`), known ops,
  inputs that are earlier nodes or the image, `shares` naming an earlier owning node of the same op and attrs;
  `outputs` maps task names to nodes;
- attrs, per op (`ATTRS`): exact types and ranges (kernel, stride, channels, dilation, groups >= 1; padding >= 0),
  conv groups dividing both channel counts, max-pool padding at most half the kernel (torch's rule);
- shapes: ranks (feature maps N,C,H,W vs vectors N,C), channel counts and, given the input size, spatial sizes are
  propagated node by node, so each op gets inputs it can run on (a conv's `cin` is its input's channel count, a
  kernel fits its padded input, selected channels exist, added or concatenated tensors agree, ...);
- tasks: each task's output has the rank and channel count its kind implies, dense outputs at the input's size;
- weights: exactly the parameters of the owning nodes, each a finite floating-point tensor of the shape the node's
  attrs imply.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from ..errors import DeploymtlError

INPUT = "image"
_NAME = re.compile(r"[A-Za-z0-9_]+")
_RESERVED = frozenset(dir(nn.ModuleDict()))  # a layer of that name would clash with the container's attributes

Pos = Annotated[int, Field(ge=1)]
NonNeg = Annotated[int, Field(ge=0)]


class _Attrs(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class NoAttrs(_Attrs):
    pass


class ConvAttrs(_Attrs):
    cin: Pos
    cout: Pos
    k: Pos
    stride: Pos = 1
    padding: NonNeg = 0
    dilation: Pos = 1
    groups: Pos = 1
    bias: bool = True

    @model_validator(mode="after")
    def _groups_divide(self) -> ConvAttrs:
        if self.cin % self.groups or self.cout % self.groups:
            raise ValueError(f"groups {self.groups} must divide cin {self.cin} and cout {self.cout}")
        return self


class MaxPoolAttrs(_Attrs):
    k: Pos
    stride: Pos
    padding: NonNeg = 0
    ceil_mode: bool = False

    @model_validator(mode="after")
    def _half_kernel(self) -> MaxPoolAttrs:
        if self.padding > self.k // 2:
            raise ValueError(f"padding {self.padding} must be at most half the kernel {self.k}")
        return self


class SelectAttrs(_Attrs):
    index: list[NonNeg] = Field(min_length=1)


class NarrowAttrs(_Attrs):
    start: NonNeg
    length: Pos


class ScaleAttrs(_Attrs):
    channels: Pos


class WsumAttrs(_Attrs):
    inputs: Pos
    channels: Pos


class LinearAttrs(_Attrs):
    cin: Pos
    cout: Pos


@dataclass(frozen=True)
class Shape:
    """What flows along an edge: rank 4 (N, C, H, W) or rank 2 (N, C); None = not known without the input size."""

    rank: int
    c: int | None
    h: int | None = None
    w: int | None = None

    def __str__(self) -> str:
        dims = [self.c, self.h, self.w][: self.rank - 1]
        return "(N, " + ", ".join("?" if d is None else str(d) for d in dims) + ")"


class _Bad(Exception):
    """A shape rule failed; the caller adds the node's location."""


def _same(a: int | None, b: int | None) -> bool:
    return a is None or b is None or a == b


def _map(x: Shape, i: int = 0) -> Shape:
    if x.rank != 4:
        raise _Bad(f"input {i} is a vector {x}, expected a feature map (N, C, H, W)")
    return x


def _channels(x: Shape, want: int, field: str) -> None:
    if not _same(x.c, want):
        raise _Bad(f"attrs.{field} is {want} but its input has {x.c} channels")


def _window(size: int | None, k: int, stride: int, pad: int, dilation: int, ceil: bool) -> int | None:
    """Output size of a conv/pool window along one axis (torch's formula, ceil mode included)."""
    if size is None:
        return None
    span = size + 2 * pad - dilation * (k - 1) - 1
    if span < 0:
        raise _Bad(f"kernel {k} (dilation {dilation}) does not fit its input of size {size} padded by {pad}")
    out = (span + (stride - 1 if ceil else 0)) // stride + 1
    if ceil and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _conv(a: ConvAttrs, xs: list[Shape]) -> Shape:
    x = _map(xs[0])
    _channels(x, a.cin, "cin")
    return Shape(4, a.cout, _window(x.h, a.k, a.stride, a.padding, a.dilation, False),
                 _window(x.w, a.k, a.stride, a.padding, a.dilation, False))


def _maxpool(a: MaxPoolAttrs, xs: list[Shape]) -> Shape:
    x = _map(xs[0])
    return Shape(4, x.c, _window(x.h, a.k, a.stride, a.padding, 1, a.ceil_mode),
                 _window(x.w, a.k, a.stride, a.padding, 1, a.ceil_mode))


def _agree(xs: list[Shape]) -> Shape:
    """Inputs of an elementwise op: one rank, equal channels and sizes where known."""
    first = xs[0]
    for i, x in enumerate(xs[1:], start=1):
        if x.rank != first.rank or not (_same(x.c, first.c) and _same(x.h, first.h) and _same(x.w, first.w)):
            raise _Bad(f"input {i} is {x} but input 0 is {first}; elementwise inputs must have one shape")
    def known(field: str) -> int | None:
        return next((getattr(x, field) for x in xs if getattr(x, field) is not None), None)

    return Shape(first.rank, known("c"), known("h"), known("w"))


def _concat(_a: NoAttrs, xs: list[Shape]) -> Shape:
    """Along channels, of feature maps or of vectors (dim 1 either way)."""
    sizes = _agree([Shape(x.rank, None, x.h, x.w) for x in xs])
    channels = None if any(x.c is None for x in xs) else sum(x.c for x in xs)  # type: ignore[misc]
    return Shape(sizes.rank, channels, sizes.h, sizes.w)


def _select(a: SelectAttrs, xs: list[Shape]) -> Shape:
    x = xs[0]  # channels of a feature map or entries of a vector (dim 1 either way)
    if x.c is not None and max(a.index) >= x.c:
        raise _Bad(f"attrs.index selects channel {max(a.index)} but its input has {x.c} channels")
    return Shape(x.rank, len(a.index), x.h, x.w)


def _narrow(a: NarrowAttrs, xs: list[Shape]) -> Shape:
    x = xs[0]
    if x.c is not None and a.start + a.length > x.c:
        raise _Bad(f"attrs.start + attrs.length = {a.start + a.length} exceeds its input's {x.c} channels")
    return Shape(x.rank, a.length, x.h, x.w)


def _scale(a: ScaleAttrs, xs: list[Shape]) -> Shape:
    x = _map(xs[0])
    _channels(x, a.channels, "channels")
    return Shape(4, a.channels, x.h, x.w)


def _wsum(a: WsumAttrs, xs: list[Shape]) -> Shape:
    if len(xs) != a.inputs:
        raise _Bad(f"attrs.inputs is {a.inputs} but the node has {len(xs)} inputs")
    for i, x in enumerate(xs):
        _map(x, i)
    out = _agree(xs)
    _channels(out, a.channels, "channels")
    return Shape(4, a.channels, out.h, out.w)


def _resize_to(_a: NoAttrs, xs: list[Shape]) -> Shape:
    x, ref = _map(xs[0], 0), _map(xs[1], 1)
    return Shape(4, x.c, ref.h, ref.w)


def _gap(_a: NoAttrs, xs: list[Shape]) -> Shape:
    return Shape(2, _map(xs[0]).c)


def _linear(a: LinearAttrs, xs: list[Shape]) -> Shape:
    x = xs[0]
    if x.rank != 2:
        raise _Bad(f"input 0 is a feature map {x}, expected a vector (N, C) (global-pool it first)")
    _channels(x, a.cin, "cin")
    return Shape(2, a.cout)


@dataclass(frozen=True)
class OpRule:
    """What an op accepts: its attrs model, how many inputs (max None = any), its output shape, its weights."""

    attrs: type[_Attrs]
    inputs: tuple[int, int | None]
    shape: Callable[[Any, list[Shape]], Shape]
    params: Callable[[Any], dict[str, tuple[int, ...]]] = lambda a: {}


ATTRS: dict[str, OpRule] = {
    "conv": OpRule(ConvAttrs, (1, 1), _conv, lambda a: {"weight": (a.cout, a.cin // a.groups, a.k, a.k)}
                   | ({"bias": (a.cout,)} if a.bias else {})),
    "relu": OpRule(NoAttrs, (1, 1), lambda a, xs: xs[0]),
    "add": OpRule(NoAttrs, (1, None), lambda a, xs: _agree(xs)),
    "concat": OpRule(NoAttrs, (1, None), _concat),
    "maxpool": OpRule(MaxPoolAttrs, (1, 1), _maxpool),
    "select": OpRule(SelectAttrs, (1, 1), _select),
    "narrow": OpRule(NarrowAttrs, (1, 1), _narrow),
    "scale": OpRule(ScaleAttrs, (1, 1), _scale, lambda a: {"scale": (a.channels,)}),
    "wsum": OpRule(WsumAttrs, (1, None), _wsum, lambda a: {"weight": (a.inputs, a.channels)}),
    "resize_to": OpRule(NoAttrs, (2, 2), _resize_to),
    "gap": OpRule(NoAttrs, (1, 1), _gap),
    "linear": OpRule(LinearAttrs, (1, 1), _linear, lambda a: {"weight": (a.cout, a.cin), "bias": (a.cout,)}),
}


def _fail(where: str, message: str, hint: str | None = None) -> DeploymtlError:
    return DeploymtlError(f"{where}: {message}", hint=hint)


def _attrs(rule: OpRule, raw: Any, where: str) -> _Attrs:
    if not isinstance(raw, Mapping):
        raise _fail(where, f"attrs is a {type(raw).__name__}, expected a mapping")
    try:
        return rule.attrs.model_validate(dict(raw))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        field = f"attrs.{loc}" if loc else "attrs"
        got = f", got {err['input']!r}" if loc and not isinstance(err["input"], Mapping) else ""
        raise _fail(where, f"{field}: {err['msg'].removeprefix('Value error, ')}{got}") from None


def _structure(spec: Any) -> tuple[list[Mapping[str, Any]], Mapping[str, Any]]:
    if not isinstance(spec, Mapping):
        raise DeploymtlError(f"graph: a static graph spec is a mapping, got {type(spec).__name__}")
    nodes, outputs = spec.get("nodes"), spec.get("outputs")
    if not isinstance(nodes, list) or not nodes:
        raise DeploymtlError(f"graph: nodes is {_kind(nodes)}, expected a non-empty list of nodes")
    if not isinstance(outputs, Mapping) or not outputs:
        raise DeploymtlError(f"graph: outputs is {_kind(outputs)}, expected a mapping of task name to node")
    if spec.get("input", INPUT) != INPUT:
        raise DeploymtlError(f"graph: input is {spec.get('input')!r}, expected {INPUT!r}")
    for i, node in enumerate(nodes):
        if not isinstance(node, Mapping):
            raise DeploymtlError(f"graph: nodes[{i}] is {_kind(node)}, expected a mapping with name, op, inputs")
    return nodes, outputs


def _kind(value: Any) -> str:
    return "missing" if value is None else f"a {type(value).__name__}" + (" (empty)" if value == [] or value == {}
                                                                            else "")


def check_spec(spec: Any, image: tuple[int, int, int] | None = None,
               tasks: Sequence[Any] | None = None) -> dict[str, tuple[str, str, tuple[int, ...]]]:
    """Validate `spec` (see the module docstring); `image` = the input's (C, H, W) when known, `tasks` the
    TaskSpecs its outputs must serve. Returns the weights it needs: state-dict key -> (node, op, shape)."""
    nodes, outputs = _structure(spec)
    shapes: dict[str, Shape] = {INPUT: Shape(4, *image) if image else Shape(4, None)}
    owners: dict[str, tuple[str, _Attrs]] = {}  # owning node -> (op, attrs)
    weights: dict[str, tuple[str, str, tuple[int, ...]]] = {}
    for i, node in enumerate(nodes):
        name, op = node.get("name"), node.get("op")
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name in _RESERVED or name in shapes:
            raise DeploymtlError(f"graph: nodes[{i}]: name {name!r} is missing, repeated, reserved or not made of "
                                 "letters, digits and _")
        where = f"graph: node '{name}'"
        if op not in ATTRS:
            raise _fail(where, f"unknown op {op!r}", hint=f"expected one of {', '.join(sorted(ATTRS))}")
        rule = ATTRS[op]
        where = f"graph: node '{name}' ({op})"
        attrs = _node_attrs(node, rule, owners, where)
        inputs = node.get("inputs", [])
        if not isinstance(inputs, list) or not all(isinstance(x, str) for x in inputs):
            raise _fail(where, f"inputs is {_kind(inputs)}, expected a list of node names")
        lo, hi = rule.inputs
        if len(inputs) < lo or (hi is not None and len(inputs) > hi):
            raise _fail(where, f"has {len(inputs)} inputs, expected {lo if lo == hi else f'at least {lo}'}")
        for x in inputs:
            if x not in shapes:
                raise _fail(where, f"input '{x}' is not defined before it")
        try:
            shapes[name] = rule.shape(attrs, [shapes[x] for x in inputs])
        except _Bad as exc:
            raise _fail(where, str(exc)) from None
        if node.get("shares") is None:
            owners[name] = (op, attrs)
            for param, shape in rule.params(attrs).items():
                weights[f"layers.{name}.{param}"] = (name, op, shape)
    _check_outputs(outputs, shapes, image, tasks)
    return weights


def _node_attrs(node: Mapping[str, Any], rule: OpRule, owners: dict[str, tuple[str, _Attrs]],
                where: str) -> _Attrs:
    """The node's attrs; a node that `shares` an earlier owner's layer runs the owner's attrs (its own must agree)."""
    owner, raw = node.get("shares"), node.get("attrs", {})
    if owner is None:
        return _attrs(rule, raw, where)
    op = node.get("op")
    if not isinstance(owner, str) or owner not in owners or owners[owner][0] != op:
        raise _fail(where, f"shares {owner!r}, which is not an earlier owning '{op}' node")
    owned = owners[owner][1]
    if raw and _attrs(rule, raw, where) != owned:
        raise _fail(where, f"attrs differ from those of '{owner}', whose layer it shares")
    return owned


def _check_outputs(outputs: Mapping[str, Any], shapes: dict[str, Shape], image: tuple[int, int, int] | None,
                   tasks: Sequence[Any] | None) -> None:
    for task, node in outputs.items():
        if not isinstance(node, str) or node not in shapes or node == INPUT:
            raise DeploymtlError(f"graph: outputs.{task}: refers to unknown node {node!r}")
    if tasks is None:
        return
    names = [t.name for t in tasks]
    if list(outputs) != names:
        raise DeploymtlError(f"graph: outputs are {list(outputs)} but the artifact's tasks are {names}",
                             hint="expected one output per task, in task order")
    for t in tasks:
        got = shapes[outputs[t.name]]
        want = Shape(4, t.out_channels, *(image[1:] if image else (None, None))) if t.dense \
            else Shape(2, t.out_channels)
        if got.rank != want.rank or not all(_same(g, w) for g, w in ((got.c, want.c), (got.h, want.h),
                                                                     (got.w, want.w))):
            raise DeploymtlError(f"graph: outputs.{t.name}: node '{outputs[t.name]}' gives {got} but a {t.kind} "
                                 f"task needs {want}")


def check_weights(weights: Mapping[str, tuple[str, str, tuple[int, ...]]], state: Any) -> None:
    """`state` holds exactly the weights `check_spec` listed: finite floating tensors of the implied shapes."""
    if not isinstance(state, Mapping):
        raise DeploymtlError(f"state_dict is {_kind(state)}, expected a mapping of weight name to tensor")
    missing = [k for k in weights if k not in state]
    unexpected = [k for k in state if k not in weights]
    if missing or unexpected:
        raise DeploymtlError(f"state_dict does not match the graph: missing {missing[:3]}, unexpected "
                             f"{unexpected[:3]}", hint="expected one weight per parameter of each owning node")
    for key, (node, op, shape) in weights.items():
        value = state[key]
        where = f"state_dict['{key}']"
        if not isinstance(value, torch.Tensor) or value.layout != torch.strided:
            raise DeploymtlError(f"{where}: {type(value).__name__} is not a dense tensor")
        if not value.is_floating_point():
            raise DeploymtlError(f"{where}: dtype {value.dtype}, expected a floating-point tensor")
        if tuple(value.shape) != shape:
            raise DeploymtlError(f"{where}: shape {list(value.shape)}, but node '{node}' ({op}) needs {list(shape)} "
                                 "from its attrs")
        if not bool(torch.isfinite(value).all()):
            raise DeploymtlError(f"{where}: holds NaN or Inf values", hint="expected finite weights")
