"""The ort-cpu form runs channel selections blocked: concats padded to the SIMD block, selections as 1x1 convs."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from gated_layout import gated_static_graph
from onnx import helper, numpy_helper

from deploymtl.export.channel_selection import select_in_blocked_layout
from deploymtl.export.lowering import shape_for_ort_cpu
from deploymtl.onnxkit.cpu import simd_block
from deploymtl.onnxkit.index import attr, value_shapes

F = onnx.TensorProto.FLOAT
# this CPU's SIMD block: the assertions on the graph ONNX Runtime runs (blocked or not) hold for the block its
# kernels use, 8 floats with AVX2 and 16 with AVX-512
BLOCK = simd_block()
RNG = np.random.default_rng(0)


def _init(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)


def _const(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _gated_layer(concat_reader: str = "Gather", c: int = BLOCK) -> onnx.ModelProto:
    """A GatedMTL-like layer on a `c`-channel stem (the SIMD block): two branches of c/2 - 1 and c/2 + 1 filters
    (3 and 5 for c = 8; the second with a Slice residual of the stem) into one Concat; a task picks c channels with
    a Gather into a 3x3 conv, psi' is a weighted sum of two picks."""
    a, b = c // 2 - 1, c // 2 + 1
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["stem"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="stem"),
        helper.make_node("Relu", ["stem"], ["s"], name="stem_relu"),
        helper.make_node("Conv", ["s", "wa", "ba"], ["a0"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="a"),
        helper.make_node("Relu", ["a0"], ["a"], name="a_relu"),
        helper.make_node("Conv", ["s", "wb", "bb"], ["b0"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="b"),
        helper.make_node("Slice", ["s", "st", "en", "ax"], ["res"], name="residual"),
        helper.make_node("Add", ["b0", "res"], ["b1"], name="b_add"),
        helper.make_node("Relu", ["b1"], ["b"], name="b_relu"),
        helper.make_node("Concat", ["a", "b"], ["cat"], axis=1, name="cat"),
    ]
    if concat_reader == "Gather":
        nodes += [
            helper.make_node("Gather", ["cat", "pick_t"], ["phi"], axis=1, name="pick_t"),
            helper.make_node("Conv", ["phi", "wt"], ["t"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="task_conv"),
            helper.make_node("Gather", ["cat", "pick_u"], ["u"], axis=1, name="pick_u"),
            helper.make_node("Mul", ["u", "cu"], ["mu"], name="mix_u"),
            helper.make_node("Gather", ["cat", "pick_v"], ["v"], axis=1, name="pick_v"),
            helper.make_node("Mul", ["v", "cv"], ["mv"], name="mix_v"),
            helper.make_node("Add", ["mu", "mv"], ["psi"], name="psi"),
            helper.make_node("Conv", ["psi", "ws"], ["shared"], kernel_shape=[1, 1], name="shared_conv"),
        ]
        outputs = ["t", "shared"]
    else:  # the concat is read by something that cannot take new channel positions
        nodes.append(helper.make_node("Relu", ["cat"], ["t"], name="reader"))
        outputs = ["t"]
    inits = [_init("w0", c, 3, 3, 3), _init("wa", a, c, 3, 3), _init("ba", a), _init("wb", b, c, 3, 3),
             _init("bb", b), _const("st", [0]), _const("en", [b]), _const("ax", [1]),
             _const("pick_t", np.random.default_rng(c).permutation(c).tolist()), _init("wt", c, c, 3, 3),
             _const("pick_u", list(range(c))), _const("pick_v", [(k + 3) % c for k in range(c)]),
             numpy_helper.from_array(RNG.random((1, c, 1, 1)).astype(np.float32), "cu"),
             numpy_helper.from_array(RNG.random((1, c, 1, 1)).astype(np.float32), "cv"), _init("ws", c, c, 1, 1)]
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", F, ["batch", 3, 12, 16])],
                              [helper.make_tensor_value_info(o, F, None) for o in outputs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(
        None, {"image" if model.graph.input[0].name == "image" else "x": x})


def _optimized(model: onnx.ModelProto, tmp_path: Path) -> collections.Counter:
    """The op types of the graph ONNX Runtime runs (NCHWc transform applied)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.log_severity_level = 1, 3
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def test_a_gated_layer_runs_blocked_with_the_same_values(tmp_path: Path) -> None:
    model = _gated_layer()
    shaped = _copy(model)
    assert select_in_blocked_layout(shaped, BLOCK) == 4  # 3 Gathers and the residual Slice
    ops = collections.Counter(n.op_type for n in shaped.graph.node)
    assert not {"Gather", "Slice", "Split"} & set(ops) and ops["Concat"] == 1
    # psi' = cu * pick_u + cv * pick_v is one 1x1 conv of the concat: no Mul left, one Add (the residual's)
    assert ops["Mul"] == 0 and ops["Add"] == 1
    psi = next(n for n in shaped.graph.node if n.output[0] == "psi")
    assert psi.op_type == "Conv" and psi.input[0] == "cat"
    shapes = value_shapes(shaped)
    assert [shapes[i][1] for i in ("a", "b", "cat")] == [BLOCK, BLOCK, 2 * BLOCK]  # 3 -> 8 and 5 -> 8 for 8
    x = RNG.standard_normal((2, 3, 12, 16)).astype(np.float32)
    for want, got in zip(_run(model, x), _run(shaped, x), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * float(np.abs(want).max()))
    before, after = _optimized(model, tmp_path), _optimized(shaped, tmp_path)
    assert before["ReorderInput"] + before["ReorderOutput"] >= 6 and before["Gather"] == 3
    # left in NCHW only where the graph outputs are
    assert after["ReorderInput"] == 0 and after["ReorderOutput"] == 2 and not after["Gather"]


def test_a_concat_read_otherwise_and_unaligned_selections_are_left_alone() -> None:
    model = _gated_layer(concat_reader="Relu")
    shaped = _copy(model)
    # the concat keeps its 3 + 5 channels (for a block of 8); the Slice of the stem still becomes a 1x1 conv
    assert select_in_blocked_layout(shaped, BLOCK) == 1
    assert value_shapes(shaped)["cat"][1] == BLOCK and "Slice" not in {n.op_type for n in shaped.graph.node}
    x = RNG.standard_normal((1, 3, 12, 16)).astype(np.float32)
    np.testing.assert_allclose(_run(shaped, x)[0], _run(model, x)[0], rtol=1e-5, atol=1e-5)
    assert select_in_blocked_layout(_copy(model), 2 * BLOCK) == 0  # the stem is not aligned to twice the block


def test_wide_tensors_keep_their_copies() -> None:
    model = _gated_layer()
    # the stem's BLOCK channels are already too many
    assert select_in_blocked_layout(model, BLOCK, max_channels=BLOCK // 2) == 0
    assert collections.Counter(n.op_type for n in model.graph.node)["Gather"] == 3
    assert value_shapes(model)["cat"][1] == BLOCK
    model = _gated_layer()
    # the padded concat would be twice the block wide: left at 3 + 5 (block 8); its channels and the stem's are
    # selected by 1x1 convs
    assert select_in_blocked_layout(model, BLOCK, max_channels=BLOCK) == 4 and value_shapes(model)["cat"][1] == BLOCK


def test_a_slice_on_another_axis_a_strided_one_and_a_qdq_graph_are_not_rewritten() -> None:
    nodes = [helper.make_node("Conv", ["x", "w0"], ["s"], kernel_shape=[1, 1], name="stem"),
             helper.make_node("Slice", ["s", "st", "en", "rows"], ["r"], name="rows"),
             helper.make_node("Slice", ["s", "st", "en8", "ax", "two"], ["e"], name="every_other")]
    inits = [_init("w0", 8, 3, 1, 1), _const("st", [0]), _const("en", [5]), _const("en8", [8]), _const("rows", [2]),
             _const("ax", [1]), _const("two", [2])]
    graph = helper.make_graph(nodes, "slices", [helper.make_tensor_value_info("x", F, [1, 3, 12, 16])],
                              [helper.make_tensor_value_info(o, F, None) for o in ("r", "e")], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert select_in_blocked_layout(model, BLOCK) == 0
    assert [n.op_type for n in model.graph.node] == ["Conv", "Slice", "Slice"]
    qdq = _gated_layer()
    qdq.graph.initializer.extend([numpy_helper.from_array(np.array(0.1, np.float32), "q_scale"),
                                  numpy_helper.from_array(np.array(0, np.int8), "q_zero")])
    qdq.graph.node.insert(0, helper.make_node("QuantizeLinear", ["x", "q_scale", "q_zero"], ["xq"]))
    assert select_in_blocked_layout(qdq, BLOCK) == 0


@pytest.fixture(scope="module")
def gated_static() -> tuple[onnx.ModelProto, torch.nn.Module]:
    """The tiny GatedMTL layout with seeded gates, exported and simplified (`gated_layout.py`)."""
    return gated_static_graph()


def _matches_torch(shaped: onnx.ModelProto, static: torch.nn.Module, seed: int) -> None:
    x = np.random.default_rng(seed).standard_normal((2, 3, 48, 64)).astype(np.float32)
    with torch.inference_mode():
        want = static.infer(torch.from_numpy(x))
    got = dict(zip([o.name for o in shaped.graph.output], _run(shaped, x), strict=True))
    for task, value in want.items():
        np.testing.assert_allclose(got[task], value.numpy(), rtol=1e-4, atol=1e-5)


def test_the_gated_static_graph_selects_in_the_blocked_layout(gated_static, tmp_path: Path) -> None:
    proto, static = gated_static
    assert {"Gather", "Concat"} <= {n.op_type for n in proto.graph.node}
    # the rewrite's structure for a block of 8 (AVX2), whatever this CPU's: the tiny layout's widths are multiples
    # of 8; what ONNX Runtime then runs, for this CPU's block, is checked by the next test
    shaped, counts = shape_for_ort_cpu(proto, 8)
    assert counts["selection_convs"] > 0
    shapes = value_shapes(shaped)
    concats = [n for n in shaped.graph.node if n.op_type == "Concat" and shapes[n.output[0]][1:2] != [None]
               and len(shapes[n.output[0]]) == 4]
    assert concats and all(shapes[i][1] % 8 == 0 for n in concats for i in n.input)
    if BLOCK == 8:
        after = _optimized(shaped, tmp_path)
        assert not {"Gather", "Slice", "Split"} & set(after) and after["ReorderInput"] == 0
    # the two task branches of every layer run as grouped convolutions (export/branch_merge.py)
    # the heads' picks of the last concat are folded into the convolutions reading them
    # (export/selection_folding.py): no bias-free 1x1 map is left in front of them
    # the heads' input pick and each head's own into their readers; layer 0's two picks of its stacked first
    # convolution's filters into one convolution per pick
    assert counts["folded_selections"] == 5
    l0 = [n.name for n in shaped.graph.node if n.name.startswith("layers.l0_conv1/") and n.op_type == "Conv"]
    assert len(l0) == 2 and all("/split/" in name for name in l0)
    producer = {o: n for n in shaped.graph.node for o in n.output}
    heads = [n for n in shaped.graph.node if n.op_type == "Conv" and n.name.startswith("layers.head")]
    assert heads and all(producer[n.input[0]].op_type in ("Concat", "Relu") for n in heads)
    assert counts["merged_branches"] == 4 and any(n.op_type == "Conv" and attr(n, "group", 1) == 2
                                                  for n in shaped.graph.node)
    _matches_torch(shaped, static, seed=1)


def test_the_gated_static_graph_runs_without_selections_on_this_cpu(gated_static, tmp_path: Path) -> None:
    """Shaped for this CPU's block, ONNX Runtime reorders nothing into the blocked layout and runs at most half the
    graph's channel selections and layout reorders (none left with a block of 8; with 16, AVX-512, the layer-0
    branches of 2 channels stay unpadded, as padding them would multiply their work by 8: 5 of 11 selections
    and 7 of 26 reorders remain)."""
    proto, static = gated_static
    shaped, counts = shape_for_ort_cpu(proto)
    before, after = _optimized(proto, tmp_path), _optimized(shaped, tmp_path)
    selections = [sum(c[op] for op in ("Gather", "Slice", "Split")) for c in (before, after)]
    reorders = [c["ReorderInput"] + c["ReorderOutput"] for c in (before, after)]
    assert before["ReorderInput"] and after["ReorderInput"] == 0
    assert selections[1] <= selections[0] / 2 and reorders[1] <= reorders[0] / 2, (selections, reorders)
    if BLOCK == 8:
        assert selections[1] == 0
    _matches_torch(shaped, static, seed=2)
