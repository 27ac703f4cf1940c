"""The ONNX toolkit: the one loader, the one session factory, the graph index and the Q/DQ rules shared by the
TensorRT lint and the int8 export (one finding, one wording, schemes that waive rules)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploymtl.errors import DeploymtlError
from deploymtl.export.trt.lint import lint_with_qdq
from deploymtl.onnxkit import qdq
from deploymtl.onnxkit.index import GraphIndex, opset_version, value_types
from deploymtl.onnxkit.load import load_onnx
from deploymtl.onnxkit.session import QUIET, open_session

F = TensorProto.FLOAT


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def _relu_model(opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
                              [helper.make_tensor_value_info("x", F, ["N", 4])],
                              [helper.make_tensor_value_info("y", F, ["N", 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _conv_qdq(act_zp=0, zp_dtype=np.int8, w_scale=(0.1, 0.2, 0.3, 0.4), opset=17) -> onnx.ModelProto:
    """x -> Q/DQ (activation) -> Conv(W = DQ(int8 weights, per channel)) -> y."""
    inits = [_init("s", np.float32(0.02)), _init("z", zp_dtype(act_zp)), _init("wq", np.ones((4, 3, 3, 3), np.int8)),
             _init("ws", np.asarray(w_scale, np.float32)), _init("wz", np.zeros(len(w_scale), np.int8))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q_x"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq_x"),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], name="dq_w", axis=0),
             helper.make_node("Conv", ["xd", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", F, ["N", 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


# -------------------------------------------------------------------------------------------------------- load
def test_loader_names_every_unusable_file(tmp_path):
    with pytest.raises(DeploymtlError, match="ONNX model not found: .*none.onnx"):
        load_onnx(tmp_path / "none.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(DeploymtlError, match=r"cannot load ONNX model .*empty.onnx: the file is not an ONNX model "
                                             r"\(an empty file\)"):
        load_onnx(tmp_path / "empty.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00not a protobuf" * 7)
    with pytest.raises(DeploymtlError, match="cannot load ONNX model .*junk.onnx: the file is not a readable ONNX"):
        load_onnx(tmp_path / "junk.onnx")
    graphless = onnx.ModelProto()
    graphless.ir_version = 8
    onnx.save(graphless, tmp_path / "graphless.onnx")
    with pytest.raises(DeploymtlError, match=r"a model without a graph, nodes or outputs") as err:
        load_onnx(tmp_path / "graphless.onnx")
    assert err.value.exit_code == 2 and "\n" not in err.value.one_line()
    model = _relu_model()
    assert load_onnx(model) is model  # a proto passes through unread
    onnx.save(model, tmp_path / "ok.onnx")
    assert load_onnx(tmp_path / "ok.onnx").graph.node[0].op_type == "Relu"


# ----------------------------------------------------------------------------------------------------- session
def test_session_factory_checks_the_provider_and_names_the_model(tmp_path):
    model = _relu_model()
    session = open_session(model, threads=1, log_severity=QUIET)
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert session.run(None, {"x": np.array([[-1, 2, -3, 4]], np.float32)})[0].tolist() == [[0, 2, 0, 4]]
    with pytest.raises(DeploymtlError, match="unknown ONNX Runtime provider 'tpu'"):
        open_session(model, provider="tpu")
    broken = _relu_model()
    broken.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(DeploymtlError, match="cannot load ONNX model <probe>: "):
        open_session(broken, label="<probe>")
    with pytest.raises(DeploymtlError, match="cannot load ONNX model <in-memory graph>"):
        open_session(broken.SerializeToString())


# ------------------------------------------------------------------------------------------------------- index
def test_index_edges_rewiring_and_constants():
    nodes = [helper.make_node("Constant", [], ["c"], name="const", value=_init("v", np.float32(2.0))),
             helper.make_node("Identity", ["c"], ["c2"], name="id"),
             helper.make_node("Mul", ["c2", "w"], ["folded"], name="fold"),
             helper.make_node("Add", ["x", "folded"], ["a"], name="add"),
             helper.make_node("Mul", ["a", "a"], ["y"], name="square")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [2])],
                              [helper.make_tensor_value_info("y", F, [2])], [_init("w", np.float32([1, 3]))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    g = GraphIndex(model)
    assert g.producer["a"].name == "add" and [n.name for n in g.readers("a")] == ["square", "square"]
    assert g.consumers["a"] == [(g.nodes[4], 0), (g.nodes[4], 1)] and g.outputs == {"y"}
    assert [i.name for i in g.inputs] == ["x"]
    assert g.constant_value("c2") == 2.0 and g.is_constant("folded") and g.constant_value("folded") is None
    assert not g.is_constant("a") and g.initializer_value("c") is None  # a Constant node is no initializer
    assert list(g.constant_names()) == ["w", "c", "c2", "folded"]
    g.add_initializer(_init("w2", np.float32([5, 5])))
    g.set_input(g.nodes[3], 1, "w2")
    assert model.graph.node[3].input[1] == "w2" and g.readers("folded") == [] and g.readers("w2")[0].name == "add"
    assert g.initializer_value("w2").tolist() == [5, 5] and model.graph.initializer[-1].name == "w2"
    sub = GraphIndex(helper.make_graph([helper.make_node("Neg", ["w"], ["n"])], "body", [], []), parent=g)
    assert sub.constant_value("w").tolist() == [1, 3] and sub.is_constant("n")  # the enclosing graph's constants
    assert opset_version(model) == 17 and value_types(model)["a"] == F


# --------------------------------------------------------------------------------------------------------- Q/DQ
def test_one_finding_one_wording_for_the_lint_and_the_export():
    model = _conv_qdq(act_zp=3)
    issues, findings = lint_with_qdq(model)
    assert [(f.node, f.rule) for f in findings] == [("q_x", "zero_point_zero"), ("dq_x", "zero_point_zero")]
    assert [(i.node, i.message) for i in issues] == [(f.node, f.message) for f in findings]  # the lint's words
    g = GraphIndex(model)
    assert qdq.violations(findings, qdq.TENSORRT, g) == [str(f) for f in findings]
    assert str(findings[0]).startswith("q_x: zero point 'z' is not 0 (asymmetric quantization)")
    assert qdq.check_scheme(model) == [str(f) for f in findings]  # same words without a lint run
    assert qdq.violations(findings, qdq.ORT_CPU_ASYMMETRIC, g) == []  # the asymmetric scheme waives it


def test_schemes_waive_only_their_rules():
    uint8 = _conv_qdq(act_zp=128, zp_dtype=np.uint8, opset=12)
    rules = {(f.node, f.rule) for f in qdq.check(GraphIndex(uint8), 12, value_types(uint8))}
    assert rules == {("model", "opset"), ("q_x", "zero_point_signed"), ("dq_x", "dq_type")}
    assert qdq.check_scheme(uint8, qdq.ORT_CPU_ASYMMETRIC) == [
        "model: Q/DQ quantization with opset 12: TensorRT's explicit quantization needs opset >= 13; re-export "
        "with opset 13 or newer"]
    bad_scale = _conv_qdq(w_scale=(0.1, -0.2, 0.3, 0.4))
    for scheme in (qdq.TENSORRT, qdq.ORT_CPU_ASYMMETRIC):  # scales are every scheme's business
        assert qdq.check_scheme(bad_scale, scheme) == ["dq_w: scale 'ws' has non-positive or non-finite values; "
                                                       "scales must be > 0"]
    assert qdq.check_scheme(_conv_qdq()) == []
    assert qdq.check_scheme(_relu_model()) == ["no QuantizeLinear/DequantizeLinear nodes: nothing was quantised"]
    assert qdq.check(GraphIndex(_relu_model()), 17, {}) == []  # the lint of a float graph finds nothing
