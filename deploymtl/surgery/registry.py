"""Per-layer-type surgery functions: how each supernet block becomes static nodes.

`SURGERY[type](builder, module, x, prefix, **kw) -> output node name`. Families register their own block
types (e.g. AdaShare's residual block) with `@register(BlockType)`; a new block type is one function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..models.layers import ASPPHead, ClassifierHead, ConvBN, LightHead, Stem
from .builder import GraphBuilder

SurgeryFn = Callable[..., str]
SURGERY: dict[type[nn.Module], SurgeryFn] = {}


def register(cls: type[nn.Module]) -> Callable[[SurgeryFn], SurgeryFn]:
    def deco(fn: SurgeryFn) -> SurgeryFn:
        SURGERY[cls] = fn
        return fn

    return deco


def emit(builder: GraphBuilder, module: nn.Module, x: str, prefix: str, **kw: Any) -> str:
    """Emit `module` applied to node `x`; unknown block types are our bug, not the user's."""
    for cls in type(module).__mro__:
        if cls in SURGERY:
            return SURGERY[cls](builder, module, x, prefix, **kw)
    raise TypeError(f"no surgery function registered for {type(module).__name__}")


@register(ConvBN)
def _conv_bn(b: GraphBuilder, m: ConvBN, x: str, prefix: str, out_index=None, in_index=None) -> str:
    y = b.conv_module(f"{prefix}_conv", x, m.conv, m.bn, out_index=out_index, in_index=in_index)
    return b.relu(f"{prefix}_relu", y) if m.relu else y


@register(Stem)
def _stem(b: GraphBuilder, m: Stem, x: str, prefix: str) -> str:
    return b.maxpool(f"{prefix}_pool", _conv_bn(b, m.conv, x, prefix), m.pool)


@register(LightHead)
def _light_head(b: GraphBuilder, m: LightHead, x: str, prefix: str, in_index=None) -> str:
    h = _conv_bn(b, m.conv, x, prefix, in_index=in_index)
    return b.resize_to_input(f"{prefix}_up", b.conv_module(f"{prefix}_out", h, m.out))


@register(ASPPHead)
def _aspp_head(b: GraphBuilder, m: ASPPHead, x: str, prefix: str, in_index=None) -> str:
    outs = []
    for i, br in enumerate(m.branches):  # dropout is training-only: gone
        h = b.relu(f"{prefix}_b{i}_relu1", b.conv_module(f"{prefix}_b{i}_conv1", x, br.conv1, in_index=in_index))
        h = b.relu(f"{prefix}_b{i}_relu2", b.conv_module(f"{prefix}_b{i}_conv2", h, br.conv2))
        outs.append(b.conv_module(f"{prefix}_b{i}_conv3", h, br.conv3))
    return b.resize_to_input(f"{prefix}_up", b.add(f"{prefix}_sum", *outs))


@register(ClassifierHead)
def _classifier_head(b: GraphBuilder, m: ClassifierHead, x: str, prefix: str, in_index=None) -> str:
    if in_index is not None:
        x = b.select(f"{prefix}_sel", x, list(in_index))
    return b.linear(f"{prefix}_fc", b.gap(f"{prefix}_gap", x), m.fc)
