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
