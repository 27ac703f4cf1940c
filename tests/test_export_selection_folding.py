"""The ort-cpu form folds bias-free 1x1 channel maps into the convolutions reading them
(export/selection_folding.py)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx_helpers import copy_model, run_x

from deploymtl.export.selection_folding import fold_selections_into_convs
from deploymtl.onnxkit.index import attr

F = onnx.TensorProto.FLOAT
RNG = np.random.default_rng(3)


def _t(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(value.astype(np.float32), name)


def _picks(rows: int, cols: int) -> np.ndarray:
    """A 0/1 selection matrix: output channel j takes a random input channel."""
    s = np.zeros((rows, cols, 1, 1), np.float32)
    s[np.arange(rows), RNG.integers(0, cols, rows)] = 1.0
    return s


def _model(map_weight: np.ndarray, readers: list[onnx.NodeProto], inits: list[onnx.TensorProto],
           outputs: list[str], map_bias: np.ndarray | None = None) -> onnx.ModelProto:
    """x (16 channels) -> stem 3x3 conv -> the map `map_weight` (1x1, no bias unless `map_bias`) -> `readers`."""
    stem = helper.make_node("Conv", ["x", "ws", "bs"], ["h"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    inputs = ["h", "wm"] + (["bm"] if map_bias is not None else [])
    cmap = helper.make_node("Conv", inputs, ["m"], kernel_shape=[1, 1], name="map")
    inits = [_t("ws", 0.3 * RNG.standard_normal((16, 3, 3, 3))), _t("bs", RNG.standard_normal(16)),
             _t("wm", map_weight), *inits] + ([_t("bm", map_bias)] if map_bias is not None else [])
    graph = helper.make_graph([stem, cmap, *readers], "maps", [helper.make_tensor_value_info("x", F, [2, 3, 9, 12])],
                              [helper.make_tensor_value_info(o, F, None) for o in outputs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])




def _grouped_heads() -> onnx.ModelProto:
    """Three heads' picks of 16 of the 16 channels each (48), read by one grouped 3x3 conv, as the merged heads."""
    heads = helper.make_node("Conv", ["m", "wh", "bh"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=3)
    return _model(_picks(48, 16), [heads], [_t("wh", 0.2 * RNG.standard_normal((24, 16, 3, 3))),
                                            _t("bh", RNG.standard_normal(24))], ["y"])


def test_a_selection_read_by_a_grouped_conv_becomes_one_plain_conv() -> None:
    model = _grouped_heads()
    folded = copy_model(model)
    assert fold_selections_into_convs(folded) == 1
    assert [n.name for n in folded.graph.node if n.name == "map"] == []
    heads = folded.graph.node[-1]
    assert heads.input[0] == "h" and attr(heads, "group", 1) == 1
    assert numpy_helper.to_array(next(t for t in folded.graph.initializer if t.name == heads.input[1])).shape == (
        24, 16, 3, 3)
    assert "wm" not in {t.name for t in folded.graph.initializer}  # the map's weight went with it
    x = RNG.standard_normal((2, 3, 9, 12)).astype(np.float32)
    np.testing.assert_allclose(run_x(folded, x)[0], run_x(model, x)[0], rtol=1e-5, atol=1e-5)


def test_a_blend_folds_into_a_strided_and_a_padded_reader_exactly() -> None:
    blend = (RNG.standard_normal((16, 16, 1, 1)) * (RNG.random((16, 16, 1, 1)) < 0.3)).astype(np.float32)
    readers = [helper.make_node("Conv", ["m", "w1", "b1"], ["y1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
               helper.make_node("Conv", ["m", "w2"], ["y2"], kernel_shape=[1, 1], strides=[2, 2])]
    model = _model(blend, readers, [_t("w1", RNG.standard_normal((8, 16, 3, 3))), _t("b1", RNG.standard_normal(8)),
                                    _t("w2", RNG.standard_normal((8, 16, 1, 1)))], ["y1", "y2"],
                   map_bias=np.zeros(16))  # a zero bias is no bias
    folded = copy_model(model)
    assert fold_selections_into_convs(folded) == 1
    assert all(n.input[0] == "h" for n in folded.graph.node if n.output[0] in ("y1", "y2"))
    x = RNG.standard_normal((2, 3, 9, 12)).astype(np.float32)
    for got, want in zip(run_x(folded, x), run_x(model, x), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)  # the border too: the map has no bias


def test_maps_that_would_cost_more_or_are_not_pure_stay() -> None:
    conv = helper.make_node("Conv", ["m", "w1"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    w1 = [_t("w1", RNG.standard_normal((8, 4, 3, 3)))]
    # a pick of 4 of 16 channels before a 3x3 conv: folding would read all 16 (4x the conv's work), so the reader
    # keeps its 4 input channels (the stem producing them runs only the picked filters instead)
    narrow = _model(_picks(4, 16), [conv], w1, ["y"])
    fold_selections_into_convs(narrow)
    reader = next(n for n in narrow.graph.node if n.output[0] == "y")
    assert reader.input[1] == "w1" and "map" not in {n.name for n in narrow.graph.node}
    # a bias: at the padded border the reader sees 0, not the bias, so the composition is not exact
    w48 = [_t("w1", RNG.standard_normal((8, 48, 3, 3)))]
    assert fold_selections_into_convs(_model(_picks(48, 16), [conv], w48, ["y"], map_bias=np.ones(48))) == 0
    # a reader that is not a convolution keeps the map for itself
    relu = helper.make_node("Relu", ["m"], ["r"])
    assert fold_selections_into_convs(_model(_picks(48, 16), [conv, relu], w48, ["y", "r"])) == 0
    # the map's output is a graph output
    assert fold_selections_into_convs(_model(_picks(48, 16), [conv], w48, ["y", "m"])) == 0


def test_an_int8_graph_is_left_alone() -> None:
    model = _grouped_heads()
    model.graph.initializer.extend([numpy_helper.from_array(np.array(0.1, np.float32), "q_scale"),
                                    numpy_helper.from_array(np.array(0, np.int8), "q_zero")])
    model.graph.node.insert(0, helper.make_node("QuantizeLinear", ["x", "q_scale", "q_zero"], ["xq"]))
    assert fold_selections_into_convs(model) == 0


def _picked_conv(rows_a: np.ndarray, rows_b: np.ndarray) -> onnx.ModelProto:
    """x -> 3x3 conv (16 filters) -> ReLU -> two picks (1x1 0/1, no bias), each read by its own 3x3 conv."""
    def pick(rows: np.ndarray) -> np.ndarray:
        s = np.zeros((len(rows), 16, 1, 1), np.float32)
        s[np.flatnonzero(rows >= 0), rows[rows >= 0]] = 1.0
        return s

    nodes = [helper.make_node("Conv", ["x", "wc", "bc"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="P"),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "sa"], ["a"], kernel_shape=[1, 1], name="pick_a"),
             helper.make_node("Conv", ["r", "sb"], ["b"], kernel_shape=[1, 1], name="pick_b"),
             helper.make_node("Conv", ["a", "wa"], ["ya"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["b", "wb"], ["yb"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    inits = [_t("wc", RNG.standard_normal((16, 3, 3, 3))), _t("bc", RNG.standard_normal(16)),
             _t("sa", pick(rows_a)), _t("sb", pick(rows_b)), _t("wa", RNG.standard_normal((4, len(rows_a), 3, 3))),
             _t("wb", RNG.standard_normal((4, len(rows_b), 3, 3)))]
    graph = helper.make_graph(nodes, "split", [helper.make_tensor_value_info("x", F, [2, 3, 9, 12])],
                              [helper.make_tensor_value_info(o, F, None) for o in ("ya", "yb")], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_a_conv_read_only_by_disjoint_picks_runs_as_one_conv_per_pick() -> None:
    # the stacked first convolutions of a layer's branches, each branch picking its filters (one zero row: padding)
    model = _picked_conv(np.array([0, 1, 2, 3, 4, 5, -1, 6]), np.arange(7, 16))
    split = copy_model(model)
    assert fold_selections_into_convs(split) == 2
    names = [n.name for n in split.graph.node]
    assert "P" not in names and "pick_a" not in names and "pick_b" not in names
    convs = {n.output[0]: n for n in split.graph.node if n.op_type == "Conv"}
    assert len(convs) == 4  # one conv per pick (8 and 9 filters) and the two readers
    x = RNG.standard_normal((2, 3, 9, 12)).astype(np.float32)
    for got, want in zip(run_x(split, x), run_x(model, x), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # picks that share filters would run them twice: left alone
    assert fold_selections_into_convs(_picked_conv(np.arange(0, 10), np.arange(6, 16))) == 0
