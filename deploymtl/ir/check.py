"""Validation of a static graph spec and its weights, before anything is built from them.

A `pruned.pt` may be edited or damaged, so everything `StaticModel` and `build_static` rely on is checked here first
and reported as a one-line `DeploymtlError` naming the node and the field (never a KeyError or a torch error later):

- structure: `nodes` is a list of mappings with unique plain names (not attributes of `nn.ModuleDict`), known ops,
  inputs that are earlier nodes or the image, `shares` naming an earlier owning node of the same op and attrs;
  `outputs` maps task names to nodes;
- attrs, per op (`OPS`): exact types and ranges (kernel, stride, channels, dilation, groups >= 1; padding >= 0),
  conv groups dividing both channel counts, max-pool padding at most half the kernel (torch's rule);
- shapes: ranks (feature maps N,C,H,W, token sequences N,L,C, vectors N,C), channel counts and, given the input
  size, spatial sizes are propagated node by node, so each op gets inputs it can run on (a conv's `cin` is its
  input's channel count, a kernel fits its padded input, selected channels exist, added or concatenated tensors
  agree, ...);
- tasks: each task's output has the rank and channel count its kind implies, dense outputs at the input's size
  (or, for a task at `resolution` "features", no larger than the input);
- weights: exactly the parameters of the owning nodes, each a finite floating-point tensor of the shape the node's
  attrs imply.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from ..errors import DeploymtlError
from .ops import INPUT, OPS, Attrs, OpRule, Shape, ShapeError, dims_agree

_NAME = re.compile(r"[A-Za-z0-9_]+")
_RESERVED = frozenset(dir(nn.ModuleDict()))  # a layer of that name would clash with the container's attributes


def _fail(where: str, message: str, hint: str | None = None) -> DeploymtlError:
    return DeploymtlError(f"{where}: {message}", hint=hint)


def _attrs(rule: OpRule, raw: Any, where: str) -> Attrs:
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
    return _walk(spec, image, tasks)[1]


def spec_shapes(spec: Any, image: tuple[int, int, int] | None = None) -> dict[str, Shape]:
    """The shape of every node's output (and of the image), after the same validation as `check_spec`."""
    return _walk(spec, image, None)[0]


def _walk(spec: Any, image: tuple[int, int, int] | None, tasks: Sequence[Any] | None
          ) -> tuple[dict[str, Shape], dict[str, tuple[str, str, tuple[int, ...]]]]:
    nodes, outputs = _structure(spec)
    shapes: dict[str, Shape] = {INPUT: Shape(4, *image) if image else Shape(4, None)}
    owners: dict[str, tuple[str, Attrs]] = {}  # owning node -> (op, attrs)
    weights: dict[str, tuple[str, str, tuple[int, ...]]] = {}
    for i, node in enumerate(nodes):
        name, op = node.get("name"), node.get("op")
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name in _RESERVED or name in shapes:
            raise DeploymtlError(f"graph: nodes[{i}]: name {name!r} is missing, repeated, reserved or not made of "
                                 "letters, digits and _")
        where = f"graph: node '{name}'"
        if op not in OPS:
            raise _fail(where, f"unknown op {op!r}", hint=f"expected one of {', '.join(sorted(OPS))}")
        rule = OPS[op]
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
        except ShapeError as exc:
            raise _fail(where, str(exc)) from None
        if node.get("shares") is None:
            owners[name] = (op, attrs)
            for param, shape in rule.params(attrs).items():
                weights[f"layers.{name}.{param}"] = (name, op, shape)
    _check_outputs(outputs, shapes, image, tasks)
    return shapes, weights


def _node_attrs(node: Mapping[str, Any], rule: OpRule, owners: dict[str, tuple[str, Attrs]],
                where: str) -> Attrs:
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
        features = t.dense and t.resolution == "features"
        size = image[1:] if image and not features else (None, None)
        want = Shape(4, t.out_channels, *size) if t.dense else Shape(2, t.out_channels)
        if features and image and got.rank == 4 and any(g is not None and g > i for g, i in
                                                         ((got.h, image[1]), (got.w, image[2]))):
            raise DeploymtlError(f"graph: outputs.{t.name}: node '{outputs[t.name]}' gives {got}, larger than the "
                                 f"input {image[1]}x{image[2]}; a task at feature resolution is not upsampled")
        if got.rank != want.rank or not all(dims_agree(g, w) for g, w in ((got.c, want.c), (got.h, want.h),
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
