"""The static IR's vision-transformer ops: shapes and attrs checked before anything is built (one-line errors
naming the node and field), values equal to torch's own layers, FLOPs counted (attention's matrix products and
transposed convolutions included)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deploymtl.errors import DeploymtlError
from deploymtl.flops import measure
from deploymtl.ir import StaticModel, spec_shapes, validate_spec
from deploymtl.tasks import TaskSpec

C, HEADS = 12, 3


def _vit_spec(**override) -> dict:
    nodes = [
        {"name": "pe", "op": "patch_embed", "inputs": ["image"], "attrs": {"cin": 3, "cout": C, "patch": 16}},
        {"name": "cp", "op": "cls_pos", "inputs": ["pe"], "attrs": {"channels": C, "tokens": 5}},
        {"name": "ln", "op": "layernorm", "inputs": ["cp"], "attrs": {"channels": C, "eps": 1e-6}},
        {"name": "qkv", "op": "linear", "inputs": ["ln"], "attrs": {"cin": C, "cout": 3 * C}},
        {"name": "att", "op": "attention", "inputs": ["qkv"], "attrs": {"channels": C, "heads": HEADS}},
        {"name": "proj", "op": "linear", "inputs": ["att"], "attrs": {"cin": C, "cout": C, "bias": False}},
        {"name": "g", "op": "gelu", "inputs": ["proj"]},
        {"name": "cat", "op": "concat", "inputs": ["g", "cp"]},
        {"name": "map", "op": "tokens_to_map", "inputs": ["g"], "attrs": {"start": 1, "height": 2, "width": 2}},
        {"name": "up", "op": "conv_transpose", "inputs": ["map"], "attrs": {"cin": C, "cout": 4, "k": 4, "stride": 4}},
        {"name": "bi", "op": "upsample", "inputs": ["up"], "attrs": {"scale": 4, "align_corners": True}},
    ]
    for name, attrs in override.items():
        next(n for n in nodes if n["name"] == name)["attrs"] = attrs
    return {"input": "image", "nodes": nodes, "outputs": {"seg": "bi"}}


def test_shapes_through_a_vit():
    shapes = spec_shapes(_vit_spec(), (3, 32, 32))
    assert (shapes["pe"].rank, shapes["pe"].h, shapes["pe"].c) == (3, 4, C)  # 2x2 patches as 4 tokens
    assert (shapes["cp"].h, shapes["qkv"].c, shapes["att"].c) == (5, 3 * C, C)
    assert shapes["cat"].c == 2 * C and shapes["cat"].rank == 3
    assert (shapes["up"].c, shapes["up"].h, shapes["bi"].h) == (4, 8, 32)
    assert str(shapes["cp"]) == "(N, 5, 12)"
    validate_spec(_vit_spec(), (3, 32, 32), [TaskSpec(name="seg", kind="segmentation", channels=4)])


@pytest.mark.parametrize("override,image,words", [
    ({"att": {"channels": C, "heads": 5}}, (3, 32, 32), ["node 'att' (attention)", "heads 5 must divide channels 12"]),
    ({"cp": {"channels": C, "tokens": 7}}, (3, 32, 32), ["node 'cp' (cls_pos)", "attrs.tokens is 7", "4 tokens"]),
    ({"map": {"start": 1, "height": 3, "width": 2}}, (3, 32, 32), ["node 'map' (tokens_to_map)", "7 tokens"]),
    ({"ln": {"channels": C, "eps": 0}}, (3, 32, 32), ["node 'ln' (layernorm)", "attrs.eps"]),
    ({}, (3, 40, 32), ["node 'pe' (patch_embed)", "height 40 is not a multiple of attrs.patch 16"]),
    ({"att": {"channels": 8, "heads": 2}}, (3, 32, 32), ["node 'att' (attention)", "channels x 3"]),
])
def test_bad_vit_specs_are_one_line_errors(override, image, words):
    with pytest.raises(DeploymtlError) as exc:
        validate_spec(_vit_spec(**override), image)
    msg = exc.value.one_line()
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


def test_layernorm_on_a_feature_map_is_refused():
    spec = {"input": "image", "nodes": [{"name": "ln", "op": "layernorm", "inputs": ["image"],
                                         "attrs": {"channels": 3, "eps": 1e-6}}], "outputs": {"x": "ln"}}
    with pytest.raises(DeploymtlError, match="expected tokens"):
        validate_spec(spec, (3, 8, 8))


@torch.no_grad()
def test_values_are_torch_layers():
    torch.manual_seed(0)
    m = StaticModel(_vit_spec()).eval()
    for p in m.parameters():
        p.data.normal_()
    x = torch.randn(2, 3, 32, 32)
    L = m.layers
    t = F.conv2d(x, L.pe.weight, L.pe.bias, stride=16).flatten(2).transpose(1, 2)
    t = torch.cat([L.cp.cls.expand(2, -1, -1), t], 1) + L.cp.pos
    h = F.linear(F.layer_norm(t, (C,), L.ln.weight, L.ln.bias, 1e-6), L.qkv.weight, L.qkv.bias)
    q, k, v = h.reshape(2, 5, 3, HEADS, C // HEADS).permute(2, 0, 3, 1, 4)
    a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 5, C)
    g = F.gelu(F.linear(a, L.proj.weight))
    mp = g[:, 1:].transpose(1, 2).reshape(2, C, 2, 2)
    up = F.conv_transpose2d(mp, L.up.weight, L.up.bias, stride=4)
    ref = F.interpolate(up, scale_factor=4, mode="bilinear", align_corners=True)
    with torch.no_grad():
        out = m(x)["seg"]
    assert float((out - ref).abs().max()) <= 1e-5 * float(ref.abs().max())
    assert torch.equal(m.infer(x)["seg"], out)
    assert "bias" not in dict(L.proj.named_parameters())


def test_flops_count_attention_and_transposed_conv():
    m = StaticModel(_vit_spec()).eval()
    cost = measure(m.forward, m, torch.zeros(1, 3, 32, 32), ["seg"])
    tokens, d = 5, C // HEADS
    attention = 2 * 2 * HEADS * tokens * tokens * d  # q k^T and attn v
    linears = 2 * tokens * (C * 3 * C + C * C)
    patch = 2 * 4 * C * 3 * 16 * 16
    conv_t = 2 * 2 * 2 * C * 4 * 4 * 4  # input positions x cin x cout x k x k
    assert cost.flops["seg"] == attention + linears + patch + conv_t
