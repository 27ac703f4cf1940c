"""TensorRT compatibility lint: real exported graphs (GraphBuilder -> torch.onnx.export, ORT QDQ quantization) and
hand-made graphs with each construct TensorRT's ONNX parser rejects."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from deploymtl.errors import DeploymtlError
from deploymtl.export.trt.lint import LintIssue, errors, lint_onnx
from deploymtl.surgery.builder import GraphBuilder


def _static_model() -> nn.Module:
    """Two tasks over a tiny trunk: conv+BN, relu, maxpool, channel select, bilinear resize, gap, linear."""
    torch.manual_seed(0)
    b = GraphBuilder()
    x = b.relu("r1", b.conv_module("stem", "image", nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8).eval()))
    x = b.maxpool("pool", x, nn.MaxPool2d(3, 2, 1))
    y = b.relu("r2", b.conv_module("c2", x, nn.Conv2d(8, 8, 3, 1, 1)))
    seg = b.conv_module("seghead", b.select("sel", y, [1, 0, 2, 3]), nn.Conv2d(4, 5, 1))
    b.output("seg", b.resize_to_input("up", seg))
    b.output("cls", b.linear("fc", b.gap("gap", y), nn.Linear(8, 4)))
    return b.build()


def _export(path, dynamic: bool) -> onnx.ModelProto:
    shapes = ({0: torch.export.Dim("batch", min=1, max=8)},) if dynamic else None
    torch.onnx.export(_static_model(), (torch.randn(2, 3, 48, 64),), str(path), input_names=["image"],
                      output_names=["seg", "cls"], dynamic_shapes=shapes, dynamo=True, opset_version=18)
    return onnx.load(str(path))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return tmp_path_factory.mktemp("trt_lint") / "model.onnx"


@pytest.fixture(scope="module")
def dynamic_onnx(exported):
    _export(exported, dynamic=True)
    return exported


def _model(nodes, inputs, outputs, inits=(), opset=17, batch="N"):
    """A model from helper nodes; inputs/outputs are (name, elem_type, dims) with `batch` as dim 0."""
    vi = [helper.make_tensor_value_info(n, t, [batch, *d]) for n, t, d in inputs]
    vo = [helper.make_tensor_value_info(n, t, None if d is None else [batch, *d]) for n, t, d in outputs]
    graph = helper.make_graph(nodes, "g", vi, vo, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


F = TensorProto.FLOAT


def _conv_qdq(w_scale, w_zp, act_scale=0.02, act_zp=0, axis=0, opset=17, zp_dtype=np.int8):
    """x -> Q/DQ -> Conv(W = DQ(int8 weights)) -> y, with configurable scales and zero points."""
    inits = [_init("s", np.float32(act_scale)), _init("z", zp_dtype(act_zp)),
             _init("wq", np.ones((4, 3, 3, 3), np.int8)), _init("ws", np.asarray(w_scale, np.float32)),
             _init("wz", np.asarray(w_zp, np.int8))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q_x"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq_x"),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], name="dq_w", axis=axis),
             helper.make_node("Conv", ["xd", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    return _model(nodes, [("x", F, [3, 8, 8])], [("y", F, [4, 8, 8])], inits, opset=opset)


def _only(issues, severity=None):
    picked = [i for i in issues if severity is None or i.severity == severity]
    assert len(picked) == 1, [str(i) for i in issues]
    return picked[0]


# ------------------------------------------------------------------------------------------------ real exports
@pytest.mark.slow
def test_exported_dynamic_batch_graph_is_clean(dynamic_onnx):
    model = onnx.load(str(dynamic_onnx))
    ops = {n.op_type for n in model.graph.node}
    assert {"Conv", "MaxPool", "Gather", "Resize", "ReduceMean", "Gemm"} <= ops  # the rules had work to do
    assert lint_onnx(dynamic_onnx) == []
    assert lint_onnx(model) == []


@pytest.mark.slow
def test_exported_static_batch_is_an_error(tmp_path):
    issue = _only(lint_onnx(_export(tmp_path / "static.onnx", dynamic=False)))
    assert (issue.severity, issue.node, issue.op) == ("error", "image", "input")
    assert "static batch of 2" in issue.message and "re-export with a dynamic batch axis" in issue.message


@pytest.mark.slow
def test_ort_qdq_int8_graph(dynamic_onnx, tmp_path):
    """onnxruntime's symmetric int8 QDQ output passes once bias quantization is off (TensorRT has no INT32 DQ)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.RandomState(0)
            self.batches = iter([{"image": rng.randn(1, 3, 48, 64).astype(np.float32)} for _ in range(3)])

        def get_next(self):
            return next(self.batches, None)

    def quantize(out, quantize_bias):
        quantize_static(str(dynamic_onnx), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                       "QuantizeBias": quantize_bias})
        return lint_onnx(out)

    clean = quantize(tmp_path / "q.onnx", quantize_bias=False)
    assert errors(clean) == []
    warning = _only(clean, "warning")  # per-channel Gemm weight: flagged for confirmation on the GPU
    assert warning.op == "DequantizeLinear" and "Gemm" in warning.message
    biased = errors(quantize(tmp_path / "qb.onnx", quantize_bias=True))
    assert len(biased) == 4 and all("INT32" in i.message and "QuantizeBias=False" in i.message for i in biased)


# ------------------------------------------------------------------------------------------------- operators
def test_resize_half_pixel_symmetric_and_antialias():
    scales = _init("scales", np.array([1, 1, 2, 2], np.float32))
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["y"], name="up", mode="linear",
                              coordinate_transformation_mode="half_pixel_symmetric", antialias=1)]
    issues = lint_onnx(_model(nodes, [("x", F, [3, 8, 8])], [("y", F, [3, 16, 16])], [scales], opset=19))
    assert [i.severity for i in issues] == ["error", "error"]
    assert all((i.node, i.op) == ("up", "Resize") for i in issues)
    assert "half_pixel_symmetric" in issues[0].message and "antialias" in issues[1].message


def test_resize_supported_modes_pass():
    scales = _init("scales", np.array([1, 1, 2, 2], np.float32))
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["a"], name="a", mode="nearest",
                              coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
             helper.make_node("Resize", ["a", "", "scales"], ["y"], name="b", mode="cubic",
                              coordinate_transformation_mode="align_corners")]
    assert lint_onnx(_model(nodes, [("x", F, [3, 4, 4])], [("y", F, [3, 16, 16])], [scales])) == []


def test_qlinearconv_is_unsupported():
    inits = [_init(n, np.float32(0.1)) for n in ("xs", "ws", "ys")] + [_init(n, np.int8(0)) for n in ("xz", "wz", "yz")]
    inits.append(_init("w", np.ones((4, 3, 1, 1), np.int8)))
    nodes = [helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"], name="qconv")]
    form, *rest = lint_onnx(_model(nodes, [("x", TensorProto.INT8, [3, 8, 8])],
                                   [("y", TensorProto.INT8, [4, 8, 8])], inits))
    # first the graph's form (ONNX Runtime's quantised operators), then the node itself
    assert (form.severity, form.node, form.op) == ("error", "model", "form")
    assert "1 QLinear/integer operators" in form.message and "--for trt" in form.message
    issue = _only(rest)
    assert (issue.severity, issue.node, issue.op) == ("error", "qconv", "QLinearConv")
    assert "QDQ" in issue.message


def test_unsupported_op_in_if_branch_and_custom_domain():
    branch = helper.make_graph([helper.make_node("Unique", ["x"], ["u"], name="uniq")], "then", [],
                               [helper.make_tensor_value_info("u", F, None)])
    cond = _init("c", np.array(True))
    nodes = [helper.make_node("If", ["c"], ["y"], name="branch", then_branch=branch, else_branch=branch),
             helper.make_node("FusedConv", ["x"], ["z"], name="fused", domain="com.microsoft")]
    model = _model(nodes, [("x", F, [4])], [("y", F, None), ("z", F, None)], [cond])
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    found = {(i.node, i.op) for i in errors(lint_onnx(model))}
    assert found == {("branch/uniq", "Unique"), ("fused", "FusedConv")}


def test_pooling_restrictions():
    nodes = [helper.make_node("MaxPool", ["x"], ["a", "idx"], name="mp", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("AveragePool", ["a"], ["y"], name="ap", kernel_shape=[2, 2], dilations=[2, 2])]
    issues = lint_onnx(_model(nodes, [("x", F, [3, 16, 16])], [("y", F, None)], opset=19))
    assert {(i.node, i.severity) for i in issues} == {("mp", "error"), ("ap", "error")}
    assert "Indices" in next(i for i in issues if i.node == "mp").message
    assert "dilations [2, 2]" in next(i for i in issues if i.node == "ap").message


def test_axes_must_be_constant():
    axes = helper.make_node("Constant", [], ["axes"], name="k", value=numpy_helper.from_array(np.array([1])))
    nodes = [axes, helper.make_node("Unsqueeze", ["x", "axes"], ["a"], name="ok"),
             helper.make_node("Shape", ["x"], ["shp"], name="shape"),
             helper.make_node("Slice", ["shp", "one", "two"], ["dyn_axes"], name="slice"),
             helper.make_node("ReduceSum", ["a", "dyn_axes"], ["y"], name="bad")]
    inits = [_init("one", np.array([1])), _init("two", np.array([2]))]
    issue = _only(lint_onnx(_model(nodes, [("x", F, [3, 4])], [("y", F, None)], inits)))
    assert (issue.node, issue.op) == ("bad", "ReduceSum") and "axes 'dyn_axes'" in issue.message


def test_topk_and_dropout_restrictions():
    inits = [_init("k", np.array([4000])), _init("ratio", np.float32(0.5)), _init("train", np.array(True))]
    nodes = [helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk", sorted=0),
             helper.make_node("Dropout", ["v", "ratio", "train"], ["y"], name="drop")]
    issues = lint_onnx(_model(nodes, [("x", F, [5000])], [("y", F, None)], inits))
    messages = sorted((i.node, i.message) for i in errors(issues))
    assert [n for n, _ in messages] == ["drop", "topk", "topk"]
    assert "training_mode is True" in messages[0][1]
    assert any("K=4000" in m for _, m in messages) and any("sorted=0" in m for _, m in messages)


def test_layernorm_extra_outputs():
    inits = [_init("g", np.ones(4, np.float32)), _init("b", np.zeros(4, np.float32))]
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["y", "mean"], name="ln")]
    issue = _only(lint_onnx(_model(nodes, [("x", F, [4])], [("y", F, [4])], inits)))
    assert issue.op == "LayerNormalization" and "only the first output" in issue.message


# ------------------------------------------------------------------------------------------------- data types
def test_int64_weights_warn_but_int64_indices_do_not():
    i64 = TensorProto.INT64
    inits = [_init("w64", np.arange(4, dtype=np.int64)), _init("idx", np.array([0, 2], np.int64)),
             _init("shape", np.array([0, -1], np.int64))]
    nodes = [helper.make_node("Add", ["ids", "w64"], ["a"], name="add"),
             helper.make_node("Gather", ["a", "idx"], ["g"], name="gather", axis=1),
             helper.make_node("Reshape", ["g", "shape"], ["y"], name="reshape")]
    issue = _only(lint_onnx(_model(nodes, [("ids", i64, [4])], [("y", i64, [2])], inits)))
    assert (issue.severity, issue.node, issue.op) == ("warning", "add", "Add")
    assert "INT64 weights 'w64' (shape [4])" in issue.message


def test_double_cast_and_internal_uint8():
    nodes = [helper.make_node("Cast", ["x"], ["d"], name="to_double", to=TensorProto.DOUBLE),
             helper.make_node("Cast", ["d"], ["u"], name="to_u8", to=TensorProto.UINT8),
             helper.make_node("Cast", ["u"], ["y"], name="to_float", to=TensorProto.FLOAT),
             helper.make_node("Cast", ["img"], ["z"], name="io_u8", to=TensorProto.FLOAT)]
    issues = lint_onnx(_model(nodes, [("x", F, [4]), ("img", TensorProto.UINT8, [4])],
                              [("y", F, [4]), ("z", F, [4])]))
    assert [(i.severity, i.node) for i in issues] == [("error", "to_u8"), ("warning", "to_double")]
    assert "UINT8 inside the network" in issues[0].message and "DOUBLE" in issues[1].message


def test_int8_outside_qdq_is_an_error():
    nodes = [helper.make_node("Cast", ["x"], ["q"], name="to_i8", to=TensorProto.INT8),
             helper.make_node("Cast", ["q"], ["y"], name="back", to=TensorProto.FLOAT)]
    issue = _only(lint_onnx(_model(nodes, [("x", F, [4])], [("y", F, [4])])))
    assert issue.node == "to_i8" and "only through Q/DQ" in issue.message


# ----------------------------------------------------------------------------------------------------- Q/DQ
def test_symmetric_qdq_conv_is_clean():
    assert lint_onnx(_conv_qdq(w_scale=[0.1, 0.2, 0.3, 0.4], w_zp=[0, 0, 0, 0])) == []


def test_asymmetric_zero_point():
    issues = lint_onnx(_conv_qdq(w_scale=0.1, w_zp=0, act_zp=3))
    # the Q and the DQ of the activation share the zero point; each node is reported
    assert [(i.severity, i.node) for i in issues] == [("error", "q_x"), ("error", "dq_x")]
    assert all("asymmetric" in i.message and "zero point 'z'" in i.message for i in issues)
    weights = errors(lint_onnx(_conv_qdq(w_scale=[0.1] * 4, w_zp=[0, 1, 0, 0])))
    assert [i.node for i in weights] == ["dq_w"] and "asymmetric" in weights[0].message


def test_uint8_zero_point_and_old_opset():
    issues = errors(lint_onnx(_conv_qdq(0.1, 0, act_zp=0, zp_dtype=np.uint8, opset=12)))
    assert any(i.op == "opset" and "opset >= 13" in i.message for i in issues)
    assert any(i.node == "q_x" and "uint8" in i.message for i in issues)
    assert issues[0].op == "form" and "1 uint8 quantisers" in issues[0].message  # q_x


def test_scales_must_be_positive_and_per_channel_only_on_conv_axis_0():
    bad_scale = errors(lint_onnx(_conv_qdq(w_scale=[0.1, -0.2, 0.3, 0.4], w_zp=[0, 0, 0, 0])))
    assert [i.node for i in bad_scale] == ["dq_w"] and "non-positive" in bad_scale[0].message
    wrong_axis = errors(lint_onnx(_conv_qdq(w_scale=[0.1, 0.2, 0.3], w_zp=[0, 0, 0], axis=1)))
    assert [i.node for i in wrong_axis] == ["dq_w"] and "needs axis 0" in wrong_axis[0].message
    per_channel_act = errors(lint_onnx(_conv_qdq(w_scale=0.1, w_zp=0, act_scale=np.full(3, 0.02, np.float32),
                                                 act_zp=np.zeros(3, np.int8))))
    assert {i.node for i in per_channel_act} == {"q_x", "dq_x"}
    assert all("activations per tensor" in i.message for i in per_channel_act)


def test_runtime_scale_is_an_error():
    nodes = [helper.make_node("Abs", ["s_in"], ["s"], name="abs"),
             helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq")]
    model = _model(nodes, [("x", F, [4]), ("s_in", F, [])], [("y", F, [4])], [_init("z", np.int8(0))])
    model.graph.input[1].CopyFrom(helper.make_tensor_value_info("s_in", F, []))
    assert {i.node for i in errors(lint_onnx(model)) if "scale 's'" in i.message} == {"q", "dq"}


# ------------------------------------------------------------------------------------------------ shapes, opset
def test_dynamic_spatial_dims_and_batch_fixing_reshape():
    shape = _init("shape", np.array([2, -1], np.int64))
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"], name="flatten")]
    issues = lint_onnx(_model(nodes, [("x", F, [3, "H", 8])], [("y", F, [None])], [shape]))
    assert all(i.severity == "warning" for i in issues)
    assert {(i.node, i.op) for i in issues} == {("x", "input"), ("flatten", "Reshape")}
    assert "dimension 2 is dynamic (H)" in next(i for i in issues if i.op == "input").message
    assert "fixes the batch to 2" in next(i for i in issues if i.op == "Reshape").message


@pytest.mark.parametrize(("opset", "severity"), [(8, "error"), (25, "warning"), (26, "error")])
def test_opset_range(opset, severity):
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    model = _model(nodes, [("x", F, [4])], [("y", F, [4])], opset=opset)
    issue = _only(lint_onnx(model))
    assert (issue.severity, issue.op) == (severity, "opset") and f"opset {opset}" in issue.message


# ----------------------------------------------------------------------------------------------- API and CLI
def test_issue_formatting_and_bad_files(tmp_path):
    issue = LintIssue("error", "up", "Resize", "bad mode")
    assert str(issue) == "error: up (Resize): bad mode"
    assert issue.to_dict() == {"severity": "error", "node": "up", "op": "Resize", "message": "bad mode"}
    with pytest.raises(DeploymtlError, match="not found") as missing:
        lint_onnx(tmp_path / "missing.onnx")
    assert missing.value.exit_code == 2
    (tmp_path / "junk.onnx").write_bytes(b"\x00not a protobuf" * 7)
    with pytest.raises(DeploymtlError, match="not a readable ONNX model"):
        lint_onnx(tmp_path / "junk.onnx")


def test_cli_lint_exit_codes(tmp_path, capsys):
    from deploymtl.cli.main import main

    clean = tmp_path / "clean.onnx"
    onnx.save(_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [("x", F, [4])], [("y", F, [4])]), clean)
    assert main(["lint", str(clean)]) == 0
    assert "0 error(s), 0 warning(s)" in capsys.readouterr().out

    warn = tmp_path / "warn.onnx"
    onnx.save(_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [("x", F, ["H"])], [("y", F, None)]),
              warn)
    assert main(["lint", str(warn)]) == 0
    assert main(["lint", str(warn), "--strict"]) == 1
    capsys.readouterr()

    bad = tmp_path / "bad.onnx"
    onnx.save(_conv_qdq(0.1, 0, act_zp=3), bad)
    assert main(["lint", str(bad), "--json"]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["errors"] == 2 and report["issues"][0]["severity"] == "error"
    assert "TensorRT compatibility error" in captured.err
    assert main(["lint", str(tmp_path / "nope.onnx")]) == 2
