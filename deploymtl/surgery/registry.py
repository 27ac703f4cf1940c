"""The layer registry: for each supernet layer type, how it becomes static nodes and how many parameters those hold.

`LAYERS[type] = LayerType(emit, params)`:
- `emit(builder, module, x, prefix, **kw) -> output node`: the nodes computing `module` applied to node `x`;
- `params(module, **kw) -> int`: the parameters those nodes hold, from the module's layer shapes and the kept
  channel counts alone. Every family's `Cut.expected_params` sums these, and the proof of removal compares the
  sum with the built graph, so a count must never be derived by running `emit`.

Every family uses the same entries (a head is emitted by this code whichever surgeon walks the supernet), so a new
layer type is one `@register(cls, params=...)` emission function plus its count, in any module the family's
surgeon imports. Families register their own blocks beside their surgeon (AdaShare's selectable block, the
GatedMTL branch, Aux-NAS's residual block and fusion).

The heads take an input transform: `in_map` A (C, |X|) float64 says the head reads V = A X instead of X itself
(GatedMTL folds its channel blends into the layers that read them: a conv reading V becomes a conv over X with
weight W A, `conv_reading`); the head's count then takes `cin` = |X|. Conventions of the counts: every emitted
conv has a bias (BatchNorm folds into one), dropout and BatchNorm hold nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import InternalError
from ..models.layers import ASPPHead, ClassifierHead, ConvBN, LightHead, Stem
from .builder import GraphBuilder, fold_bn

EmitFn = Callable[..., str]
ParamsFn = Callable[..., int]


@dataclass(frozen=True)
class LayerType:
    emit: EmitFn  # (builder, module, x, prefix, **kw) -> output node name
    params: ParamsFn  # (module, **kw) -> parameters of the emitted nodes


LAYERS: dict[type[nn.Module], LayerType] = {}


def register(cls: type[nn.Module], *, params: ParamsFn) -> Callable[[EmitFn], EmitFn]:
    """Decorator registering the decorated emission function and `params` as `cls`'s layer type."""

    def deco(fn: EmitFn) -> EmitFn:
        LAYERS[cls] = LayerType(emit=fn, params=params)
        return fn

    return deco


def layer_type(module: nn.Module) -> LayerType:
    """The entry of `module`'s class (or its nearest registered base); a missing one is our bug, not the user's."""
    for cls in type(module).__mro__:
        if cls in LAYERS:
            return LAYERS[cls]
    raise InternalError(f"no layer type registered for {type(module).__name__} (deploymtl.surgery.registry)")


def emit(builder: GraphBuilder, module: nn.Module, x: str, prefix: str, **kw: Any) -> str:
    """Emit `module` applied to node `x`."""
    return layer_type(module).emit(builder, module, x, prefix, **kw)


def count(module: nn.Module, **kw: Any) -> int:
    """Parameters the nodes `emit(module, ..., **kw')` holds; `kw` are the count's shape arguments."""
    return int(layer_type(module).params(module, **kw))


# -- helpers for emissions and counts --------------------------------------------------------------------------
def conv_params(conv: nn.Conv2d, cin: int | None = None, cout: int | None = None) -> int:
    """A static conv over `cin` inputs with `cout` filters (default: the module's), always with a bias."""
    cin = conv.in_channels if cin is None else cin
    cout = conv.out_channels if cout is None else cout
    kh, kw = conv.kernel_size
    return cout * (cin // conv.groups) * kh * kw + cout


def linear_params(fc: nn.Linear) -> int:
    return fc.out_features * fc.in_features + fc.out_features


def fold_input(weight: torch.Tensor, in_map: torch.Tensor) -> torch.Tensor:
    """Conv/linear weight (O, C, ...) reading V = A X -> weight (O, |X|, ...) reading X."""
    return torch.einsum("oc...,cx->ox...", weight.double(), in_map).float()


def conv_reading(b: GraphBuilder, name: str, x: str, conv: nn.Conv2d, bn: nn.BatchNorm2d | None,
                 in_map: torch.Tensor | None) -> str:
    """`conv` (+ folded `bn`) applied to node `x` (in_map None) or to V = in_map X (a conv over X, weight W A)."""
    if in_map is None:
        return b.conv_module(name, x, conv, bn)
    w, bias = fold_bn(conv, bn)
    return b.conv(name, x, fold_input(w, in_map), bias, stride=conv.stride[0], padding=conv.padding[0],
                  dilation=conv.dilation[0])


def selected(b: GraphBuilder, name: str, x: str, in_map: torch.Tensor) -> str:
    """Node holding V = A X for a selection A (one 1 per row): `x` itself when A is the identity, else a `select`."""
    if not bool(((in_map != 0).sum(dim=1) == 1).all()) or not bool((in_map.max(dim=1).values == 1).all()):
        raise InternalError(f"{name}: the input transform is not a channel selection")
    index = in_map.argmax(dim=1).tolist()
    if index == list(range(in_map.shape[1])):
        return x
    return b.select(f"{name}_sel", x, index)


# -- the shared layer types ----------------------------------------------------------------------------------------
def _conv_bn_params(m: ConvBN, cin: int | None = None, cout: int | None = None) -> int:
    return conv_params(m.conv, cin, cout)


@register(ConvBN, params=_conv_bn_params)
def _conv_bn(b: GraphBuilder, m: ConvBN, x: str, prefix: str, out_index=None, in_index=None) -> str:
    y = b.conv_module(f"{prefix}_conv", x, m.conv, m.bn, out_index=out_index, in_index=in_index)
    return b.relu(f"{prefix}_relu", y) if m.relu else y


@register(Stem, params=lambda m: conv_params(m.conv.conv))
def _stem(b: GraphBuilder, m: Stem, x: str, prefix: str) -> str:
    return b.maxpool(f"{prefix}_pool", _conv_bn(b, m.conv, x, prefix), m.pool)


def _light_head_params(m: LightHead, cin: int | None = None) -> int:
    return conv_params(m.conv.conv, cin) + conv_params(m.out)


@register(LightHead, params=_light_head_params)
def _light_head(b: GraphBuilder, m: LightHead, x: str, prefix: str, in_map: torch.Tensor | None = None) -> str:
    h = conv_reading(b, f"{prefix}_conv", x, m.conv.conv, m.conv.bn, in_map)
    h = b.relu(f"{prefix}_relu", h) if m.conv.relu else h
    out = b.conv_module(f"{prefix}_out", h, m.out)
    return b.resize_to_input(f"{prefix}_up", out) if m.upsample else out


def _aspp_head_params(m: ASPPHead, cin: int | None = None) -> int:
    return sum(conv_params(br.conv1, cin) + conv_params(br.conv2) + conv_params(br.conv3) for br in m.branches)


@register(ASPPHead, params=_aspp_head_params)
def _aspp_head(b: GraphBuilder, m: ASPPHead, x: str, prefix: str, in_map: torch.Tensor | None = None) -> str:
    outs = []
    for i, br in enumerate(m.branches):  # dropout is training-only: gone
        h = b.relu(f"{prefix}_b{i}_relu1", conv_reading(b, f"{prefix}_b{i}_conv1", x, br.conv1, None, in_map))
        h = b.relu(f"{prefix}_b{i}_relu2", b.conv_module(f"{prefix}_b{i}_conv2", h, br.conv2))
        outs.append(b.conv_module(f"{prefix}_b{i}_conv3", h, br.conv3))
    out = b.add(f"{prefix}_sum", *outs)
    return b.resize_to_input(f"{prefix}_up", out) if m.upsample else out


@register(ClassifierHead, params=lambda m, cin=None: linear_params(m.fc))
def _classifier_head(b: GraphBuilder, m: ClassifierHead, x: str, prefix: str,
                     in_map: torch.Tensor | None = None) -> str:
    """Pooling commutes with a channel selection, so a selected input is selected after pooling (fewer copies);
    the linear layer keeps its own input width whatever X is."""
    pooled = b.gap(f"{prefix}_gap", x)
    if in_map is not None:
        pooled = selected(b, f"{prefix}_in", pooled, in_map)
    return b.linear(f"{prefix}_fc", pooled, m.fc)
