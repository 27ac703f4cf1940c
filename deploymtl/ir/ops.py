"""The static graph's ops: one registry entry per op holds everything the IR knows about it.

An entry (`OpRule`) gives the op's attrs (a strict pydantic model: exact types and ranges), how many inputs it
takes, the shape of its output given its inputs' shapes, the weights it owns (name -> shape, from its attrs) and the
layer that runs it (`build(attrs) -> nn.Module`). `check.py` walks a spec with these rules before anything is
built, `model.py` builds the layers; adding an op is one entry here.

Shapes (`Shape`) are what flows along an edge: rank 4 (N, C, H, W) feature maps, rank 3 (N, L, C) token sequences
(a vision transformer's: L tokens of C channels; linear, layernorm, attention and the token ops work on them) or
rank 2 (N, C) vectors, with sizes left unknown (None) where they depend on an input size not given. A rule that
cannot hold raises `ShapeError`; the caller adds the node's location.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

INPUT = "image"  # the graph's one input

Pos = Annotated[int, Field(ge=1)]
NonNeg = Annotated[int, Field(ge=0)]


class Attrs(BaseModel):
    """Base of every op's attrs: exact types, no unknown keys."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class NoAttrs(Attrs):
    pass


class ConvAttrs(Attrs):
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


class MaxPoolAttrs(Attrs):
    k: Pos
    stride: Pos
    padding: NonNeg = 0
    ceil_mode: bool = False

    @model_validator(mode="after")
    def _half_kernel(self) -> MaxPoolAttrs:
        if self.padding > self.k // 2:
            raise ValueError(f"padding {self.padding} must be at most half the kernel {self.k}")
        return self


class SelectAttrs(Attrs):
    index: list[NonNeg] = Field(min_length=1)


class NarrowAttrs(Attrs):
    start: NonNeg
    length: Pos


class ScaleAttrs(Attrs):
    channels: Pos


class WsumAttrs(Attrs):
    inputs: Pos
    channels: Pos


class LinearAttrs(Attrs):
    """On vectors (N, cin) or on each token of (N, L, cin); `bias` False for a projection without one."""

    cin: Pos
    cout: Pos
    bias: bool = True


class ConvTransposeAttrs(Attrs):
    cin: Pos
    cout: Pos
    k: Pos
    stride: Pos = 1
    padding: NonNeg = 0
    bias: bool = True


class UpsampleAttrs(Attrs):
    """Bilinear upsampling by an integer factor (`align_corners` as torch's `F.interpolate`)."""

    scale: Annotated[int, Field(ge=2)]
    align_corners: bool


class LayerNormAttrs(Attrs):
    """Over the channels of each token (the last axis); `eps` as torch's (timm's ViT: 1e-6)."""

    channels: Pos
    eps: Annotated[float, Field(gt=0.0, lt=1.0)]


class PatchEmbedAttrs(Attrs):
    """A ViT's patch embedding: conv `patch`x`patch`, stride `patch`, then the (H/p)(W/p) positions as tokens."""

    cin: Pos
    cout: Pos
    patch: Pos


class ClsPosAttrs(Attrs):
    """A class token in front of the `tokens - 1` patch tokens, then the learned position embedding added."""

    channels: Pos
    tokens: Annotated[int, Field(ge=2)]


class AttentionAttrs(Attrs):
    """Multi-head self-attention between the projections: input the qkv tokens (N, L, 3*channels) laid out as
    timm's (3, heads, head_dim), output (N, L, channels) = softmax(q k^T * head_dim^-0.5) v, heads concatenated."""

    channels: Pos
    heads: Pos

    @model_validator(mode="after")
    def _heads_divide(self) -> AttentionAttrs:
        if self.channels % self.heads:
            raise ValueError(f"heads {self.heads} must divide channels {self.channels}")
        return self


class TokensToMapAttrs(Attrs):
    """Drop the first `start` tokens (a ViT's class token) and lay the rest out as a (channels, height, width) map."""

    start: NonNeg
    height: Pos
    width: Pos


class PreprocessAttrs(Attrs):
    """The input normalisation baked into the graph (`preprocess.py`); its weights `mul`, `add` are per channel."""

    channels: Pos


# -- shapes ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    """What flows along an edge: rank 4 (N, C, H, W) or rank 2 (N, C); None = not known without the input size."""

    rank: int
    c: int | None
    h: int | None = None
    w: int | None = None

    def __str__(self) -> str:
        dims = [self.h, self.c] if self.rank == 3 else [self.c, self.h, self.w][: self.rank - 1]
        return "(N, " + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def tokens(length: int | None, channels: int | None) -> Shape:
    """A token sequence (N, L, C): `c` holds the channels, `h` the number of tokens."""
    return Shape(3, channels, length)


class ShapeError(Exception):
    """A shape rule failed; the caller adds the node's location."""


def dims_agree(a: int | None, b: int | None) -> bool:
    """Two sizes agree when equal or when either is unknown."""
    return a is None or b is None or a == b


def _map(x: Shape, i: int = 0) -> Shape:
    if x.rank != 4:
        kind = "token sequence" if x.rank == 3 else "vector"
        raise ShapeError(f"input {i} is a {kind} {x}, expected a feature map (N, C, H, W)")
    return x


def _tokens(x: Shape, i: int = 0) -> Shape:
    if x.rank != 3:
        raise ShapeError(f"input {i} is {x}, expected a token sequence (N, L, C)")
    return x


def _channels(x: Shape, want: int, field: str) -> None:
    if not dims_agree(x.c, want):
        raise ShapeError(f"attrs.{field} is {want} but its input has {x.c} channels")


def _window(size: int | None, k: int, stride: int, pad: int, dilation: int, ceil: bool) -> int | None:
    """Output size of a conv/pool window along one axis (torch's formula, ceil mode included)."""
    if size is None:
        return None
    span = size + 2 * pad - dilation * (k - 1) - 1
    if span < 0:
        raise ShapeError(f"kernel {k} (dilation {dilation}) does not fit its input of size {size} padded by {pad}")
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
        if x.rank != first.rank or not all(dims_agree(a, b) for a, b in ((x.c, first.c), (x.h, first.h),
                                                                         (x.w, first.w))):
            raise ShapeError(f"input {i} is {x} but input 0 is {first}; elementwise inputs must have one shape")
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
        raise ShapeError(f"attrs.index selects channel {max(a.index)} but its input has {x.c} channels")
    return Shape(x.rank, len(a.index), x.h, x.w)


def _narrow(a: NarrowAttrs, xs: list[Shape]) -> Shape:
    x = xs[0]
    if x.c is not None and a.start + a.length > x.c:
        raise ShapeError(f"attrs.start + attrs.length = {a.start + a.length} exceeds its input's {x.c} channels")
    return Shape(x.rank, a.length, x.h, x.w)


def _scale(a: ScaleAttrs, xs: list[Shape]) -> Shape:
    x = _map(xs[0])
    _channels(x, a.channels, "channels")
    return Shape(4, a.channels, x.h, x.w)


def _wsum(a: WsumAttrs, xs: list[Shape]) -> Shape:
    if len(xs) != a.inputs:
        raise ShapeError(f"attrs.inputs is {a.inputs} but the node has {len(xs)} inputs")
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


def _preprocess(a: PreprocessAttrs, xs: list[Shape]) -> Shape:
    x = _map(xs[0])
    _channels(x, a.channels, "channels")
    return Shape(4, a.channels, x.h, x.w)


def _linear(a: LinearAttrs, xs: list[Shape]) -> Shape:
    x = xs[0]
    if x.rank == 4:
        raise ShapeError(f"input 0 is a feature map {x}, expected a vector (N, C) (global-pool it first) or tokens "
                         "(N, L, C)")
    _channels(x, a.cin, "cin")
    return Shape(x.rank, a.cout, x.h)


def _conv_transpose(a: ConvTransposeAttrs, xs: list[Shape]) -> Shape:
    x = _map(xs[0])
    _channels(x, a.cin, "cin")

    def size(n: int | None) -> int | None:
        if n is None:
            return None
        out = (n - 1) * a.stride - 2 * a.padding + a.k
        if out < 1:
            raise ShapeError(f"padding {a.padding} leaves no output from its input of size {n}")
        return out

    return Shape(4, a.cout, size(x.h), size(x.w))


def _upsample(a: UpsampleAttrs, xs: list[Shape]) -> Shape:
    x = _map(xs[0])
    return Shape(4, x.c, None if x.h is None else x.h * a.scale, None if x.w is None else x.w * a.scale)


def _layernorm(a: LayerNormAttrs, xs: list[Shape]) -> Shape:
    x = xs[0]
    if x.rank == 4:
        raise ShapeError(f"input 0 is a feature map {x}, expected tokens (N, L, C) or a vector (N, C)")
    _channels(x, a.channels, "channels")
    return x


def _patch_embed(a: PatchEmbedAttrs, xs: list[Shape]) -> Shape:
    x = _map(xs[0])
    _channels(x, a.cin, "cin")
    for axis, n in (("height", x.h), ("width", x.w)):
        if n is not None and n % a.patch:
            raise ShapeError(f"input {axis} {n} is not a multiple of attrs.patch {a.patch}")
    n_tokens = None if x.h is None or x.w is None else (x.h // a.patch) * (x.w // a.patch)
    return tokens(n_tokens, a.cout)


def _cls_pos(a: ClsPosAttrs, xs: list[Shape]) -> Shape:
    x = _tokens(xs[0])
    _channels(x, a.channels, "channels")
    if not dims_agree(x.h, a.tokens - 1):
        raise ShapeError(f"attrs.tokens is {a.tokens} (class token + {a.tokens - 1} patches) but its input has "
                         f"{x.h} tokens")
    return tokens(a.tokens, a.channels)


def _attention(a: AttentionAttrs, xs: list[Shape]) -> Shape:
    x = _tokens(xs[0])
    _channels(x, 3 * a.channels, "channels x 3 (q, k, v)")
    return tokens(x.h, a.channels)


def _tokens_to_map(a: TokensToMapAttrs, xs: list[Shape]) -> Shape:
    x = _tokens(xs[0])
    if not dims_agree(x.h, a.start + a.height * a.width):
        raise ShapeError(f"attrs.start + attrs.height x attrs.width = {a.start + a.height * a.width} tokens but "
                         f"its input has {x.h}")
    return Shape(4, x.c, a.height, a.width)



# -- layers ---------------------------------------------------------------------------------------------------
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
    """Along channels: dim 1 of feature maps and vectors, the last dim of tokens (N, L, C)."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=2 if xs[0].dim() == 3 else 1)


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


class Upsample(nn.Module):
    def __init__(self, scale: int, align_corners: bool) -> None:
        super().__init__()
        self.scale, self.align_corners = scale, align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # an output size, not a scale factor: the same sampling positions (with align_corners they depend on the
        # sizes only; without, a size of exactly scale x input uses the same 1/scale step), and the ONNX Resize
        # gets integer sizes that constant folding keeps (float scales come out as doubles it rejects)
        size = (x.shape[-2] * self.scale, x.shape[-1] * self.scale)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)


class Gelu(nn.Module):
    """The exact GELU, x * Phi(x) (erf form; timm's ViT MLP)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x)


class PatchEmbed(nn.Module):
    def __init__(self, cin: int, cout: int, patch: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(cout, cin, patch, patch), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(cout), requires_grad=False)
        self.patch = patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, stride=self.patch).flatten(2).transpose(1, 2)


class ClsPos(nn.Module):
    def __init__(self, channels: int, tokens: int) -> None:
        super().__init__()
        self.cls = nn.Parameter(torch.zeros(1, 1, channels), requires_grad=False)
        self.pos = nn.Parameter(torch.zeros(1, tokens, channels), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.cls.expand_as(x[:, :1]), x], dim=1) + self.pos


class SelfAttention(nn.Module):
    """q, k, v from the qkv tokens, per head softmax(q * scale @ k^T) @ v: explicit MatMul and Softmax, so that an
    int8 export can keep exactly these in float (docs/methods.md, Aux-NAS ViT)."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.channels, self.heads = channels, heads
        self.scale = (channels // heads) ** -0.5

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        # no batch or length sizes read from the tensor: the exported graph has no Shape ops outside this node
        q, k, v = qkv.unflatten(-1, (3, self.heads, self.channels // self.heads)).permute(2, 0, 3, 1, 4).unbind(0)
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        return (attn @ v).transpose(1, 2).flatten(2)


class TokensToMap(nn.Module):
    def __init__(self, start: int, height: int, width: int) -> None:
        super().__init__()
        self.start, self.height, self.width = start, height, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # contiguous: a fresh tensor, never a view of the tokens (the schedule may write it in place)
        return x[:, self.start:].transpose(1, 2).unflatten(2, (self.height, self.width)).contiguous()


class GlobalAvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class Preprocess(nn.Module):
    """Raw pixels (uint8) -> float32 `x * mul + add` per channel, i.e. `(x * scale - mean) / std` with
    mul = scale / std and add = -mean / std (`preprocess.bake_preprocessing`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mul = nn.Parameter(torch.ones(channels), requires_grad=False)
        self.add = nn.Parameter(torch.zeros(channels), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float32) * self.mul.view(1, -1, 1, 1) + self.add.view(1, -1, 1, 1)



@dataclass(frozen=True)
class OpRule:
    """One op: its attrs model, how many inputs (max None = any), its output shape, its weights, its layer."""

    attrs: type[Attrs]
    inputs: tuple[int, int | None]
    shape: Callable[[Any, list[Shape]], Shape]
    build: Callable[[Any], nn.Module]
    params: Callable[[Any], dict[str, tuple[int, ...]]] = lambda a: {}


def _conv_layer(a: ConvAttrs) -> nn.Module:
    return nn.Conv2d(a.cin, a.cout, a.k, a.stride, a.padding, dilation=a.dilation, groups=a.groups, bias=a.bias)


def _conv_params(a: ConvAttrs) -> dict[str, tuple[int, ...]]:
    return {"weight": (a.cout, a.cin // a.groups, a.k, a.k)} | ({"bias": (a.cout,)} if a.bias else {})


OPS: dict[str, OpRule] = {
    "conv": OpRule(ConvAttrs, (1, 1), _conv, _conv_layer, _conv_params),
    "relu": OpRule(NoAttrs, (1, 1), lambda a, xs: xs[0], lambda a: Relu()),
    "add": OpRule(NoAttrs, (1, None), lambda a, xs: _agree(xs), lambda a: Add()),
    "concat": OpRule(NoAttrs, (1, None), _concat, lambda a: Concat()),
    "maxpool": OpRule(MaxPoolAttrs, (1, 1), _maxpool,
                      lambda a: nn.MaxPool2d(a.k, a.stride, a.padding, ceil_mode=a.ceil_mode)),
    "select": OpRule(SelectAttrs, (1, 1), _select, lambda a: Select(a.index)),
    "narrow": OpRule(NarrowAttrs, (1, 1), _narrow, lambda a: Narrow(a.start, a.length)),
    "scale": OpRule(ScaleAttrs, (1, 1), _scale, lambda a: ChannelScale(a.channels), lambda a: {"scale": (a.channels,)}),
    "wsum": OpRule(WsumAttrs, (1, None), _wsum, lambda a: WeightedSum(a.inputs, a.channels),
                   lambda a: {"weight": (a.inputs, a.channels)}),
    "resize_to": OpRule(NoAttrs, (2, 2), _resize_to, lambda a: ResizeTo()),
    "gap": OpRule(NoAttrs, (1, 1), _gap, lambda a: GlobalAvgPool()),
    "linear": OpRule(LinearAttrs, (1, 1), _linear, lambda a: nn.Linear(a.cin, a.cout, bias=a.bias),
                     lambda a: {"weight": (a.cout, a.cin)} | ({"bias": (a.cout,)} if a.bias else {})),
    "conv_transpose": OpRule(ConvTransposeAttrs, (1, 1), _conv_transpose,
                             lambda a: nn.ConvTranspose2d(a.cin, a.cout, a.k, a.stride, a.padding, bias=a.bias),
                             lambda a: {"weight": (a.cin, a.cout, a.k, a.k)} | ({"bias": (a.cout,)} if a.bias else {})),
    "upsample": OpRule(UpsampleAttrs, (1, 1), _upsample, lambda a: Upsample(a.scale, a.align_corners)),
    "gelu": OpRule(NoAttrs, (1, 1), lambda a, xs: xs[0], lambda a: Gelu()),
    "layernorm": OpRule(LayerNormAttrs, (1, 1), _layernorm, lambda a: nn.LayerNorm(a.channels, eps=a.eps),
                        lambda a: {"weight": (a.channels,), "bias": (a.channels,)}),
    "patch_embed": OpRule(PatchEmbedAttrs, (1, 1), _patch_embed, lambda a: PatchEmbed(a.cin, a.cout, a.patch),
                          lambda a: {"weight": (a.cout, a.cin, a.patch, a.patch), "bias": (a.cout,)}),
    "cls_pos": OpRule(ClsPosAttrs, (1, 1), _cls_pos, lambda a: ClsPos(a.channels, a.tokens),
                      lambda a: {"cls": (1, 1, a.channels), "pos": (1, a.tokens, a.channels)}),
    "attention": OpRule(AttentionAttrs, (1, 1), _attention, lambda a: SelfAttention(a.channels, a.heads)),
    "tokens_to_map": OpRule(TokensToMapAttrs, (1, 1), _tokens_to_map,
                            lambda a: TokensToMap(a.start, a.height, a.width)),
    "preprocess": OpRule(PreprocessAttrs, (1, 1), _preprocess, lambda a: Preprocess(a.channels),
                         lambda a: {"mul": (a.channels,), "add": (a.channels,)}),
}
