"""The ort-cpu form runs sibling task branches as grouped convolutions (export/branch_merge.py)."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from onnx_helpers import copy_model, run_x

from deploymtl.export.branch_merge import merge_sibling_branches
from deploymtl.onnxkit.cpu import simd_block
from deploymtl.onnxkit.index import attr

F = onnx.TensorProto.FLOAT
BLOCK = simd_block()  # this CPU's: whether ONNX Runtime runs the grouped convolutions blocked depends on it
RNG = np.random.default_rng(0)


def _w(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array((0.3 * RNG.standard_normal(shape)).astype(np.float32), name)


def _layer(widths: list[int], leak: bool = False) -> onnx.ModelProto:
    """Branches of the GatedMTL shape, one per width: a 1x1 pick of the stem, a strided 1x1 downsample and two 3x3
    convolutions, Add, ReLUs; a Concat joins them and a 1x1 conv reads it. `leak`: the first branch's middle
    tensor is a graph output too."""
    nodes = [helper.make_node("Conv", ["x", "w0"], ["stem"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    inits = [_w("w0", 16, 3, 3, 3)]
    outs = []
    for t, k in enumerate(widths):
        nodes += [
            helper.make_node("Conv", ["stem", f"ws{t}"], [f"s{t}"], kernel_shape=[1, 1], name=f"pick{t}"),
            helper.make_node("Conv", [f"s{t}", f"wd{t}", f"bd{t}"], [f"d{t}"], kernel_shape=[1, 1], strides=[2, 2]),
            helper.make_node("Conv", [f"s{t}", f"w1{t}", f"b1{t}"], [f"m0{t}"], kernel_shape=[3, 3],
                             pads=[1, 1, 1, 1], strides=[2, 2]),
            helper.make_node("Relu", [f"m0{t}"], [f"m{t}"]),
            helper.make_node("Conv", [f"m{t}", f"w2{t}", f"b2{t}"], [f"c{t}"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            helper.make_node("Add", [f"c{t}", f"d{t}"], [f"a{t}"]),
            helper.make_node("Relu", [f"a{t}"], [f"o{t}"]),
        ]
        inits += [_w(f"ws{t}", 16, 16, 1, 1), _w(f"wd{t}", k, 16, 1, 1), _w(f"bd{t}", k), _w(f"w1{t}", 16, 16, 3, 3),
                  _w(f"b1{t}", 16), _w(f"w2{t}", k, 16, 3, 3), _w(f"b2{t}", k)]
        outs.append(f"o{t}")
    nodes += [helper.make_node("Concat", outs, ["cat"], axis=1),
              helper.make_node("Conv", ["cat", "wq"], ["y"], kernel_shape=[1, 1])]
    inits.append(_w("wq", 8, sum(widths), 1, 1))
    outputs = [helper.make_tensor_value_info("y", F, None)] + ([helper.make_tensor_value_info("m0", F, None)]
                                                              if leak else [])
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", F, ["batch", 3, 12, 16])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])




def test_three_task_branches_become_one_grouped_chain(tmp_path: Path) -> None:
    model = _layer([3, 5, 2])
    merged = copy_model(model)
    assert merge_sibling_branches(merged, BLOCK) == 2
    convs = [n for n in merged.graph.node if n.op_type == "Conv"]
    assert len(convs) == 2 + 4  # stem and reader; one pick, downsample, conv1, conv2 for all three
    assert sorted(attr(n, "group", 1) for n in convs) == [1, 1, 1, 3, 3, 3]
    concat = next(n for n in merged.graph.node if n.op_type == "Concat")
    assert len(concat.input) == 1  # the three branches, each padded to the block
    x = RNG.standard_normal((2, 3, 12, 16)).astype(np.float32)
    np.testing.assert_allclose(run_x(merged, x)[0], run_x(model, x)[0], rtol=1e-5, atol=1e-5)
    opts = ort.SessionOptions()
    opts.optimized_model_filepath, opts.log_severity_level = str(tmp_path / "o.onnx"), 3
    ort.InferenceSession(merged.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    ran = collections.Counter((n.domain, n.op_type) for n in onnx.load(tmp_path / "o.onnx").graph.node)
    assert ran[("com.microsoft.nchwc", "Conv")] == 6 and not ran[("", "Conv")]  # the grouped ones run blocked


def test_a_wide_branch_is_not_padded_to_by_narrow_ones() -> None:
    model = _layer([64, 3, 5])
    merged = copy_model(model)
    assert merge_sibling_branches(merged, BLOCK) == 1  # the two narrow ones; 64 alone
    concat = next(n for n in merged.graph.node if n.op_type == "Concat")
    assert len(concat.input) == 2
    x = RNG.standard_normal((1, 3, 12, 16)).astype(np.float32)
    np.testing.assert_allclose(run_x(merged, x)[0], run_x(model, x)[0], rtol=1e-5, atol=1e-5)


def test_a_branch_read_elsewhere_and_an_int8_graph_are_left_alone() -> None:
    model = _layer([3, 5, 2], leak=True)
    assert merge_sibling_branches(model, BLOCK) == 1  # branches 1 and 2; branch 0's middle is a graph output
    qdq = _layer([3, 5, 2])
    qdq.graph.initializer.extend([numpy_helper.from_array(np.array(0.1, np.float32), "q_scale"),
                                  numpy_helper.from_array(np.array(0, np.int8), "q_zero")])
    qdq.graph.node.insert(0, helper.make_node("QuantizeLinear", ["x", "q_scale", "q_zero"], ["xq"]))
    assert merge_sibling_branches(qdq, BLOCK) == 0
    assert merge_sibling_branches(_layer([3, 5, 2]), 1) == 0  # no blocked layout


def _narrow_layer(widths: list[int], stem: int) -> onnx.ModelProto:
    """The GatedMTL first layer's shape: after the stem's conv and max-pool, one stacked 3x3 conv for every branch
    (`stem` filters each), each branch's slice of it into its own 3x3 conv of `widths[k]` filters, a residual Add
    of the stem's first `widths[k]` channels (a Slice; the whole stem where the widths match), ReLU, Concat; a
    Gather and a 1x1 conv read the concat."""
    c0 = stem
    n = len(widths)
    nodes = [helper.make_node("Conv", ["x", "w0"], ["s0"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["s0"], ["stem"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["stem", "w1"], ["s1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["s1"], ["r1"])]
    inits = [_w("w0", c0, 3, 3, 3), _w("w1", n * stem, c0, 3, 3)]
    outs = []
    for t, k in enumerate(widths):
        bounds = [numpy_helper.from_array(np.array([v], np.int64), f"{name}{t}")
                  for name, v in (("hs", t * stem), ("he", (t + 1) * stem), ("ax", 1), ("rs", t), ("re", t + k))]
        inits += bounds + [_w(f"w2{t}", k, stem, 3, 3), _w(f"b2{t}", k)]
        nodes.append(helper.make_node("Slice", ["r1", f"hs{t}", f"he{t}", f"ax{t}"], [f"h{t}"]))
        nodes.append(helper.make_node("Conv", [f"h{t}", f"w2{t}", f"b2{t}"], [f"c{t}"], kernel_shape=[3, 3],
                                      pads=[1, 1, 1, 1]))
        if k == c0:
            res = "stem"
        else:
            res = f"res{t}"
            nodes.append(helper.make_node("Slice", ["stem", f"rs{t}", f"re{t}", f"ax{t}"], [res]))
        nodes += [helper.make_node("Add", [f"c{t}", res], [f"a{t}"]), helper.make_node("Relu", [f"a{t}"], [f"o{t}"])]
        outs.append(f"o{t}")
    total = sum(widths)
    nodes += [helper.make_node("Concat", outs, ["cat"], axis=1),
              helper.make_node("Gather", ["cat", "idx"], ["g"], axis=1),
              helper.make_node("Conv", ["cat", "wq"], ["y"], kernel_shape=[1, 1])]
    inits += [numpy_helper.from_array(np.arange(total - 1, -1, -2, dtype=np.int64), "idx"), _w("wq", 8, total, 1, 1)]
    graph = helper.make_graph(nodes, "narrow", [helper.make_tensor_value_info("x", F, ["batch", 3, 12, 16])],
                              [helper.make_tensor_value_info(o, F, None) for o in ("y", "g")], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_branches_narrower_than_a_block_share_one_dense_conv_and_their_residuals_one_pick(tmp_path: Path) -> None:
    stem = BLOCK // 2
    widths = [stem, BLOCK // 8, BLOCK // 8, BLOCK // 8]  # as the tiny GatedMTL model's first layer: 8, 2, 2, 2
    model = _narrow_layer(widths, stem)
    merged = copy_model(model)
    assert merge_sibling_branches(merged, BLOCK) == 3
    ops = collections.Counter(n.op_type for n in merged.graph.node)
    assert not ops["Slice"]  # the branch inputs read whole, the residuals one 0/1 conv of the stem
    inits = {i.name: i for i in merged.graph.initializer}
    convs = {n.input[0]: n for n in merged.graph.node if n.op_type == "Conv"}
    dense = convs["r1"]  # every branch's filters on the diagonal of one conv: no per-branch padding to a block
    assert attr(dense, "group", 1) == 1 and list(inits[dense.input[1]].dims) == [BLOCK, 4 * stem, 3, 3]
    pick = next(n for n in merged.graph.node if n.op_type == "Conv" and n.input[0] == "stem" and n is not convs["r1"]
                and list(inits[n.input[1]].dims) == [BLOCK, stem, 1, 1])
    assert sorted(numpy_helper.to_array(inits[pick.input[1]]).reshape(-1).tolist()) == [0.0] * (
        BLOCK * stem - sum(widths)) + [1.0] * sum(widths)
    concat = next(n for n in merged.graph.node if n.op_type == "Concat")
    assert len(concat.input) == 1
    x = RNG.standard_normal((2, 3, 12, 16)).astype(np.float32)
    for got, want in zip(run_x(merged, x), run_x(model, x), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    opts = ort.SessionOptions()
    opts.optimized_model_filepath, opts.log_severity_level = str(tmp_path / "o.onnx"), 3
    ort.InferenceSession(merged.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    ran = collections.Counter((n.domain, n.op_type) for n in onnx.load(tmp_path / "o.onnx").graph.node)
    assert not ran[("", "Conv")] and not ran[("", "Slice")]


def test_branches_reading_a_few_channels_of_a_wide_tensor_stay_apart() -> None:
    """Merged, each branch's first conv would read all of the wide tensor instead of its own few channels."""
    nodes = [helper.make_node("Conv", ["x", "ww"], ["wide"], kernel_shape=[1, 1])]
    inits = [_w("ww", 8 * BLOCK, 3, 1, 1), _w("wq", 8, 6, 1, 1)]
    for t in range(3):
        inits += [numpy_helper.from_array(np.array([v], np.int64), f"{name}{t}")
                  for name, v in (("s", 4 * t), ("e", 4 * t + 4), ("a", 1))] + [_w(f"w{t}", 2, 4, 3, 3)]
        nodes += [helper.make_node("Slice", ["wide", f"s{t}", f"e{t}", f"a{t}"], [f"p{t}"]),
                  helper.make_node("Conv", [f"p{t}", f"w{t}"], [f"c{t}"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{t}"], [f"o{t}"])]
    nodes += [helper.make_node("Concat", ["o0", "o1", "o2"], ["cat"], axis=1),
              helper.make_node("Conv", ["cat", "wq"], ["y"], kernel_shape=[1, 1])]
    graph = helper.make_graph(nodes, "wide", [helper.make_tensor_value_info("x", F, ["batch", 3, 12, 16])],
                              [helper.make_tensor_value_info("y", F, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert merge_sibling_branches(model, BLOCK) == 0
