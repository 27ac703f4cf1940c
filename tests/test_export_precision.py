"""Reduced precision: fp16 graph with float32 IO, int8 symmetric Q/DQ, their parity figures and the metric gate."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from export_fixtures import TASKS, tiny_artifact
from onnx import numpy_helper

from deploymtl.cli.main import main
from deploymtl.errors import VerificationError
from deploymtl.export.exporter import export_model
from deploymtl.export.fp16 import float16_fraction
from deploymtl.export.options import ExportOptions
from deploymtl.export.quantize import quantized_ops
from deploymtl.onnxkit import qdq
from deploymtl.onnxkit.qdq import ORT_CPU_ASYMMETRIC, check_scheme
from deploymtl.verify.metrics_gate import metric_gate

NAMES = [t.name for t in TASKS]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return tiny_artifact(tmp_path_factory.mktemp("precision") / "pruned.pt")


@pytest.fixture(scope="module")
def fp16(model_path):
    out = model_path.parent / "fp16"
    report = export_model(model_path, out, ExportOptions.parse({"precision": "fp16", "batch": "1:2:4", "threads": 1}))
    assert report.artifact == "model.onnx" and report.passed and report.verification.parity
    report = report.to_dict()
    return out, report, onnx.load(out / "model.onnx")


@pytest.fixture(scope="module")
def int8_strict(model_path):
    """int8 in the TensorRT form, all-int8 (no accuracy control) under a zero budget: the export is written, then fails
    with exit 1."""
    out = model_path.parent / "int8"
    rc = main(["export", str(model_path), "--precision", "int8", "--for", "trt", "--batch", "1:2:4", "-o", str(out),
               "--max-metric-drop", "0", "--no-accuracy-control", "--threads", "1", "-q"])
    return rc, out, json.loads((out / "export_report.json").read_text()), onnx.load(out / "model.onnx")


REPORT_KEYS = ["target", "precision", "runtime", "batch", "artifact", "onnx", "opset", "requested_opset", "exporter",
               "inputs", "tasks", "outputs", "batch_sizes_checked", "onnx_outputs", "metrics", "passes",
               "removed_parts_check", "structure", "lint", "quantization", "onnxruntime_cpu_lowering", "localization",
               "trt", "source", "options", "deploymtl_version", "failures", "passed", "timings",
               "requested_precision", "budgets", "precision_mix"]


def test_report_keys_are_the_contract(fp16):
    """export_report.json's keys, in order, as written before the exporter became stages (readers rely on them)."""
    out, report, _ = fp16
    assert list(report) == REPORT_KEYS and json.loads((out / "export_report.json").read_text()) == report
    assert list(report["options"]) == ["target", "precision", "batch", "atol", "rtol", "per_output", "simplify",
                                       "opset", "calibration_samples", "max_metric_drop", "workspace_mb",
                                       "int8_activations", "threads", "bake_preprocessing", "runtime",
                                       "accuracy_control"]
    assert list(report["source"]) == ["model", "family", "plan_hash", "pruned", "prune_passed"]
    assert list(report["timings"]) == ["load", "export", "simplify", "precision", "parity", "metrics", "total"]
    assert report["options"]["batch"] == "1:2:4" and report["options"]["opset"] == report["requested_opset"] == 17
    assert report["options"]["calibration_samples"] == 32 and report["options"]["max_metric_drop"] == 0.05  # recipe


def test_fp16_graph_is_half_precision_with_float32_io(fp16):
    _, report, proto = fp16
    assert report["passed"] and report["precision"] == "fp16"
    assert float16_fraction(proto) == 1.0
    f32 = onnx.TensorProto.FLOAT
    assert [v.type.tensor_type.elem_type for v in [*proto.graph.input, *proto.graph.output]] == [f32] * 4
    ops = {n.op_type for n in proto.graph.node}
    assert "Cast" in ops and "Conv" in ops
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["deploymtl.precision"]) == "fp16"
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_fp16_parity_figures_and_metrics(fp16):
    _, report, _ = fp16
    for name in NAMES:
        o = report["outputs"][name]
        assert o["passed"] and 0 < o["max_abs"] < 1e-2 and o["cosine"] > 0.9999 and o["nan_inf"] == 0
    gate = report["metrics"]
    assert gate["passed"] and gate["max_drop"] == 0.05 and gate["samples"] == 32
    for name in NAMES:
        assert abs(gate["tasks"][name]["drop"]) < 0.01


def test_int8_graph_is_symmetric_qdq_with_per_channel_weights(int8_strict):
    _, _, report, proto = int8_strict
    assert check_scheme(proto) == []
    inits = {i.name: i for i in proto.graph.initializer}
    zps = [numpy_helper.to_array(inits[n.input[2]]) for n in proto.graph.node
           if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)
    w = next(n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "layers.stem_conv.weight"
             "_quantized")
    assert numpy_helper.to_array(inits[w.input[1]]).shape == (12,)  # one scale per output channel
    convs = [n.name for n in proto.graph.node if n.op_type in ("Conv", "Gemm")]
    # every conv runs int8 but the layer writing each task output (seg/depth head 1x1 conv, count classifier)
    heads = ["layers.seg_out/Conv", "layers.depth_out/Conv", "layers.count_fc/Gemm"]
    assert report["quantization"]["fp32_output_layers"] == heads
    assert len(convs) == 11 and set(quantized_ops(proto)) & set(convs) == set(convs) - set(heads)
    inits = {i.name for i in proto.graph.initializer}
    assert all(n.input[1] in inits for n in proto.graph.node if n.name in heads)  # float weights, no DQ
    assert all(n.startswith("layers.") for n in convs)  # module scopes survive simplification and quantisation
    assert report["quantization"]["issues"] == [] and report["quantization"]["calibration_split"] == "train"
    assert report["runtime"] == {"name": "trt", "description": "TensorRT: symmetric int8 Q/DQ as quantised, lint-clean",
                                 "simd_block": None, "rewrites": {}}
    assert report["onnxruntime_cpu_lowering"] == {}  # nothing is rewritten in memory any more
    assert json.loads({p.key: p.value for p in proto.metadata_props}["deploymtl.runtime"]) == {
        "name": "trt", "simd_block": None}


def test_int8_parity_figures_are_loose_but_close(int8_strict):
    _, _, report, _ = int8_strict
    for name in NAMES:
        o = report["outputs"][name]
        assert o["passed"], o
        assert o["max_abs"] > 1e-4  # it really is quantised
        assert o["cosine"] > 0.999 and o["nan_inf"] == 0


def test_int8_metric_gate_fails_at_zero_threshold_and_passes_at_the_recipe_threshold(int8_strict):
    rc, out, report, _ = int8_strict
    assert rc == 1
    assert report["passed"] is False
    assert any("metric gate" in f for f in report["failures"])
    gate = report["metrics"]
    assert gate["max_drop"] == 0 and not gate["passed"]
    failing = [k for k, t in gate["tasks"].items() if not t["passed"]]
    assert failing and all(gate["tasks"][k]["drop"] > 0 for k in failing)
    assert (out / "model.onnx").is_file()  # a failed verification keeps the artifact for inspection
    fp32 = {k: {m: d["fp32"] for m, d in t["deltas"].items()} for k, t in gate["tasks"].items()}
    int8 = {k: {m: d["candidate"] for m, d in t["deltas"].items()} for k, t in gate["tasks"].items()}
    assert metric_gate(TASKS, fp32, int8, precision="int8", budgets=0.05)


def test_asymmetric_int8_for_onnxruntime_cpu_and_the_api_gate_error(model_path, tmp_path, monkeypatch):
    """`int8_activations="asymmetric"`: uint8 activations with real zero points (not TensorRT-ready, said so).
    The Q/DQ rules run once per export: the lint's findings give the scheme's `quantization.issues`."""
    calls = []
    check = qdq.check
    monkeypatch.setattr(qdq, "check", lambda *a: calls.append(1) or check(*a))
    with pytest.raises(VerificationError, match="metric gate"):
        export_model(model_path, tmp_path / "o", ExportOptions.parse({
            "precision": "int8", "batch": "1:1:2", "max_metric_drop": 0.0, "calibration_samples": 8, "simplify": False,
            "threads": 1, "int8_activations": "asymmetric", "int8_output_layers": "int8", "accuracy_control": False}))
    report = json.loads((tmp_path / "o" / "export_report.json").read_text())
    assert report["quantization"]["fp32_output_layers"] == []
    assert report["quantization"]["quantized_nodes"] == 13  # --int8-output-layers int8: every layer (+2 Mul)
    assert report["quantization"]["calibration_samples"] == 8 and report["passes"] == []
    assert report["quantization"]["activations"] == "asymmetric" and report["quantization"]["issues"] == []
    assert len(calls) == 1
    lint_errors = [i for i in report["lint"] if i["severity"] == "error"]  # what TensorRT would refuse, still said
    assert lint_errors and all("uint8" in i["message"] or "UINT8" in i["message"] for i in lint_errors)
    assert all(o["passed"] for o in report["outputs"].values())
    proto = onnx.load(tmp_path / "o" / "model.onnx")
    assert check_scheme(proto, ORT_CPU_ASYMMETRIC) == []
    assert any("zero point" in i and "uint8" in i for i in check_scheme(proto))  # not for TensorRT


def test_asymmetric_int8_keeps_its_relus_before_fp32_output_layers(model_path, tmp_path):
    """Regression: onnxruntime.quantization's asymmetric scheme deleted each ReLU and left its clamp to the next Q/DQ
    pair, which is dropped before a float output layer: the head lost its ReLU (parity max_abs ~3). The ReLUs now
    stay in the file (`QDQKeepRemovableActivations`), and ORT folds them on the CPU."""
    report = export_model(model_path, tmp_path / "o", ExportOptions.parse({
        "precision": "int8", "batch": "1:1:2", "calibration_samples": 8, "simplify": False, "threads": 1,
        "int8_activations": "asymmetric", "max_metric_drop": 0.05})).to_dict()
    assert report["quantization"]["fp32_output_layers"]
    assert all(o["passed"] and o["cosine"] > 0.999 for o in report["outputs"].values())
    proto = onnx.load(tmp_path / "o" / "model.onnx")
    assert sum(n.op_type == "Relu" for n in proto.graph.node) > 0
