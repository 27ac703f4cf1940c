"""Graph precision intent and engine-inspector precision parsing (TensorRT 10.x and 11.x JSON schemas).

The inspector samples below are hand-written in the shape TensorRT emits with ProfilingVerbosity.DETAILED: 10.x
describes each tensor with one "Format/Datatype" string; 11.x splits format and data type into separate fields
(shared/TENSORRT.md). They test the parser, not TensorRT.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploymtl.errors import VerificationError
from deploymtl.export.trt.precision import (
    dtype_token,
    graph_precision,
    parse_engine_layers,
    precision_report,
    require_honoured,
)


def _tensor_10x(name, fmt):
    return {"Name": name, "Location": "Device", "Dimensions": [4, 8, 24, 32], "Format/Datatype": fmt}


def _tensor_11x(name, fmt, dtype):
    return {"Name": name, "Location": "Device", "Dimensions": [4, 8, 24, 32], "Format": fmt, "Datatype": dtype}


def _engine_10x(conv_fmt, weights="Half"):
    return json.dumps({"Layers": [
        {"Name": "Reformatting CopyNode for Input Tensor 0 to stem + r1", "LayerType": "Reformat",
         "Inputs": [_tensor_10x("image", "Row major linear FP32")],
         "Outputs": [_tensor_10x("image_r", conv_fmt)], "ParameterType": "Reformat", "Origin": "REFORMAT"},
        {"Name": "stem + r1", "LayerType": "CaskConvolution", "ParameterType": "Convolution",
         "Inputs": [_tensor_10x("image_r", conv_fmt)], "Outputs": [_tensor_10x("r1", conv_fmt)],
         "Kernel": [3, 3], "Weights": {"Type": weights, "Count": 216}, "Bias": {"Type": "Float", "Count": 8},
         "TacticName": "sm80_xmma_fprop_implicit_gemm_f16f16_f16f16_f16_nhwckrsc_nhwc", "StreamId": 0,
         "Metadata": "[ONNX Layer: node_conv2d]\x1e[ONNX Layer: node_relu]"},
        {"Name": "fc", "LayerType": "CaskGemmConvolution", "ParameterType": "Convolution",
         "Inputs": [_tensor_10x("mean", conv_fmt)], "Outputs": [_tensor_10x("cls", "Row major linear FP32")],
         "Weights": {"Type": weights, "Count": 32}},
        {"Name": "up", "LayerType": "Resize", "ParameterType": "Resize",
         "Inputs": [_tensor_10x("seg_lo", "Row major linear FP32")], "Outputs": [_tensor_10x("seg", "Row major "
                                                                                           "linear FP32")]},
    ], "Bindings": ["image", "seg", "cls"]})


def _engine_11x(dtype):
    return json.dumps({"Layers": [
        {"Name": "stem + r1", "LayerType": "CaskConvolution", "ParameterType": "Convolution",
         "Inputs": [_tensor_11x("image", "Channel major where channel % 8 == 0", dtype)],
         "Outputs": [_tensor_11x("r1", "Channel major where channel % 8 == 0", dtype)],
         "Weights": {"Type": dtype, "Count": 216}},
        {"Name": "node_linear", "LayerType": "gemm", "ParameterType": "MatrixMultiply",
         "Inputs": [_tensor_11x("mean", "Row major linear", dtype), _tensor_11x("w", "Row major linear", dtype)],
         "Outputs": [_tensor_11x("cls", "Row major linear", "Float")]},
        {"Name": "up", "LayerType": "Resize", "Inputs": [_tensor_11x("x", "Row major linear", "Float")],
         "Outputs": [_tensor_11x("seg", "Row major linear", "Float")]},
    ], "Bindings": ["image", "seg", "cls"]})


def test_dtype_spellings():
    table = {"Row major linear FP32": "fp32", "Float": "fp32", "Half": "fp16",
             "Channel major FP16 format where channel % 8 == 0": "fp16", "BFloat16": "bf16",
             "Thirty-two wide channel vectorized row major Int8 format": "int8", "Int8": "int8",
             "Row major linear UInt8 format": "uint8", "Row major linear FP8 format": "fp8", "Int32": "int32",
             "Row major linear Int64 format": "int64", "Bool": "bool", "Unknown format": None, 7: None}
    assert {k: dtype_token(k) for k in table} == table


def test_10x_fp16_engine():
    layers = parse_engine_layers(_engine_10x("Channel major FP16 format where channel % 8 == 0"))
    assert [(lay.name, lay.compute, lay.precision) for lay in layers] == [
        ("Reformatting CopyNode for Input Tensor 0 to stem + r1", False, "fp32"), ("stem + r1", True, "fp16"),
        ("fc", True, "fp16"), ("up", False, "fp32")]
    report = precision_report(layers, "fp16")
    assert report["ok"] and report["inspectable"]
    assert (report["layers"], report["compute_layers"], report["by_precision"]) == (4, 2, {"fp16": 2})
    refused = precision_report(layers, "fp32")
    assert not refused["ok"] and refused["not_in_requested"] == ["stem + r1 (fp16)", "fc (fp16)"]
    assert not precision_report(layers, "int8")["ok"]


def test_10x_int8_engine():
    layers = parse_engine_layers(_engine_10x("Thirty-two wide channel vectorized row major Int8 format", "Int8"))
    assert [lay.weights for lay in layers if lay.compute] == ["int8", "int8"]
    assert precision_report(layers, "int8")["ok"]
    assert not precision_report(layers, "fp16")["ok"]


def test_10x_fp32_engine_refuses_fp16_request():
    layers = parse_engine_layers(_engine_10x("Row major linear FP32", "Float"))
    assert precision_report(layers, "fp32")["ok"]
    report = precision_report(layers, "fp16")
    assert not report["ok"] and report["by_precision"] == {"fp32": 2}
    with pytest.raises(VerificationError) as exc:
        require_honoured(report, "out/model.plan")
    assert exc.value.exit_code == 1
    line = exc.value.one_line()
    assert "out/model.plan: fp16 was requested but TensorRT did not honour it (layer precisions fp32: 2" in line
    assert "deploymtl export MODEL --target onnx --precision fp16" in line


def test_11x_split_fields():
    half = parse_engine_layers(_engine_11x("Half"))
    assert [(lay.layer_type, lay.compute, lay.precision) for lay in half] == [
        ("CaskConvolution", True, "fp16"), ("gemm", True, "fp16"), ("Resize", False, "fp32")]
    assert precision_report(half, "fp16")["ok"]
    fp32 = parse_engine_layers(_engine_11x("Float"))
    assert not precision_report(fp32, "fp16")["ok"]
    int8 = parse_engine_layers(_engine_11x("Int8"))
    assert precision_report(int8, "int8")["by_precision"] == {"int8": 2}
    require_honoured(precision_report(int8, "int8"), "model.plan")  # no raise


def test_inspector_without_detail_is_not_inspectable():
    names_only = json.dumps({"Layers": ["stem + r1", "up"], "Bindings": ["image", "seg"]})
    assert parse_engine_layers(names_only) is None
    assert parse_engine_layers("{not json") is None
    assert parse_engine_layers({"Bindings": []}) is None
    report = precision_report(None, "fp16")
    assert report["ok"] and not report["inspectable"] and "DETAILED" in report["reason"]
    require_honoured(report, "model.plan")


def _graph(nodes, inits=(), in_type=TensorProto.FLOAT):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", in_type, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_graph_precision():
    assert graph_precision(_graph([helper.make_node("Relu", ["x"], ["y"])])) == "fp32"
    half_io = _graph([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)], in_type=TensorProto.FLOAT16)
    assert graph_precision(half_io) == "fp16"
    casts = _graph([helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16),
                    helper.make_node("Cast", ["h"], ["y"], to=TensorProto.FLOAT)])
    assert graph_precision(casts) == "fp16"
    inits = [numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.int8(0), "z")]
    qdq = _graph([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
                  helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], inits)
    assert graph_precision(qdq) == "int8"
