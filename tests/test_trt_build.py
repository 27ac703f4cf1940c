"""TensorRT build entry points that need no TensorRT: the install guard, option and graph checks, error formatting."""

from __future__ import annotations

import sys
import types

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploymtl.backends.trt_env import require_tensorrt
from deploymtl.errors import DeploymtlError
from deploymtl.export.trt.build import (
    ParserError,
    check_build_options,
    check_graph,
    export_trt,
    format_parser_errors,
)


@pytest.fixture()
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` now raises ImportError


def _fake_tensorrt(monkeypatch, version):
    """Only to reach the version/CUDA guards: a module object carrying a __version__, nothing else."""
    mod = types.ModuleType("tensorrt")
    mod.__version__ = version
    monkeypatch.setitem(sys.modules, "tensorrt", mod)


def test_require_tensorrt_without_tensorrt(no_tensorrt):
    with pytest.raises(DeploymtlError) as exc:
        require_tensorrt()
    assert exc.value.exit_code == 2
    line = exc.value.one_line()
    assert "pip install 'deploymtl[trt]'" in line and "NVIDIA GPU" in line and "TensorRT 10/11" in line
    assert "\n" not in line


def test_require_tensorrt_without_cuda(monkeypatch):
    import torch

    _fake_tensorrt(monkeypatch, "10.3.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeploymtlError, match="no CUDA GPU is visible") as exc:
        require_tensorrt()
    assert exc.value.exit_code == 2 and "pip install 'deploymtl[trt]'" in exc.value.one_line()


def test_require_tensorrt_too_old(monkeypatch):
    _fake_tensorrt(monkeypatch, "8.6.1")
    with pytest.raises(DeploymtlError, match="TensorRT 8.6.1 is too old"):
        require_tensorrt()


def _relu_model(batch="N", dtype=TensorProto.FLOAT):
    g = helper.make_graph([helper.make_node("Relu", ["image"], ["seg"], name="relu")], "g",
                          [helper.make_tensor_value_info("image", dtype, [batch, 3, 8, 8])],
                          [helper.make_tensor_value_info("seg", dtype, [batch, 3, 8, 8])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_export_trt_without_tensorrt_exits_2_and_writes_nothing(no_tensorrt, tmp_path):
    onnx.save(_relu_model(), tmp_path / "model.onnx")
    out = tmp_path / "engine"
    with pytest.raises(DeploymtlError, match="TensorRT is not importable") as exc:
        export_trt(tmp_path / "model.onnx", out, precision="fp32", batch="1:2:4")
    assert exc.value.exit_code == 2
    assert not out.exists()


def test_options_are_checked_before_tensorrt(no_tensorrt, tmp_path):
    with pytest.raises(DeploymtlError, match="--precision int4 is not supported"):
        export_trt(tmp_path / "model.onnx", tmp_path, precision="int4", batch="1:2:4")
    with pytest.raises(DeploymtlError, match="needs 1 <= MIN <= OPT <= MAX"):
        export_trt(tmp_path / "model.onnx", tmp_path, precision="fp16", batch="4:2:1")
    with pytest.raises(DeploymtlError, match="builder optimisation level 7"):
        check_build_options("fp16", 1024, 7, "none")
    with pytest.raises(DeploymtlError, match="workspace of 0 MiB"):
        check_build_options("fp16", 0, 3, "none")
    with pytest.raises(DeploymtlError, match="hardware compatibility 'turing'"):
        check_build_options("fp16", 1024, 3, "turing")
    check_build_options("int8", 64, 5, "same_compute_capability")


def test_check_graph_refuses_lint_errors_and_precision_mismatch(tmp_path):
    with pytest.raises(DeploymtlError, match=r"static.onnx is not TensorRT-compatible: error: image \(input\)") as e:
        check_graph(_relu_model(batch=2), tmp_path / "static.onnx", "fp32")
    assert "deploymtl lint" in e.value.one_line()
    with pytest.raises(DeploymtlError, match="is an fp32 graph but --precision fp16 was requested") as e:
        check_graph(_relu_model(), tmp_path / "m.onnx", "fp16")
    assert "deploymtl export MODEL --target onnx --precision fp16" in e.value.one_line()
    check_graph(_relu_model(dtype=TensorProto.FLOAT16), tmp_path / "h.onnx", "fp16")
    inits = [numpy_helper.from_array(np.float32(0.05), "s"), numpy_helper.from_array(np.int8(0), "z")]
    qdq = _relu_model()
    qdq.graph.initializer.extend(inits)
    qdq.graph.node.insert(0, helper.make_node("QuantizeLinear", ["image", "s", "z"], ["q"], name="q"))
    qdq.graph.node.insert(1, helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], name="dq"))
    qdq.graph.node[2].input[0] = "dq"
    check_graph(qdq, tmp_path / "q.onnx", "int8")
    with pytest.raises(DeploymtlError, match="is an int8 graph but --precision fp32"):
        check_graph(qdq, tmp_path / "q.onnx", "fp32")


def test_parser_error_line():
    errs = [ParserError(desc="Assertion failed: coordinate transformation mode\n  half_pixel_symmetric",
                        node=3, node_name="node_upsample", op="Resize", code="UNSUPPORTED_NODE"),
            ParserError(desc="second", node=4)]
    assert format_parser_errors(errs, "m.onnx") == (
        "TensorRT's ONNX parser rejected node 'node_upsample' (Resize) in m.onnx: Assertion failed: coordinate "
        "transformation mode half_pixel_symmetric (+1 more)")
    assert format_parser_errors([ParserError(desc="bad", node=7)], "m.onnx") == (
        "TensorRT's ONNX parser rejected node #7 in m.onnx: bad")
    assert format_parser_errors([ParserError(desc="truncated protobuf")], "m.onnx") == (
        "TensorRT's ONNX parser rejected the model in m.onnx: truncated protobuf")
    assert "without an error record" in format_parser_errors([], "m.onnx")


def test_trt_runner_needs_a_manifest_and_tensorrt(no_tensorrt, tmp_path):
    from deploymtl.backends.load import open_runner
    from deploymtl.backends.trt_runner import TrtRunner

    plan = tmp_path / "model.plan"
    plan.write_bytes(b"engine bytes")
    with pytest.raises(DeploymtlError, match="engine manifest not found"):
        open_runner(plan)
    with pytest.raises(DeploymtlError, match="engine not found"):
        TrtRunner.from_engine(tmp_path / "other.plan")


def test_trt_runner_checks_plan_against_manifest_before_tensorrt(no_tensorrt, tmp_path):
    import hashlib

    from deploymtl.backends.trt_runner import TrtRunner
    from deploymtl.formats.trt_manifest import RuntimeInfo, make_manifest, manifest_path, write_manifest

    plan = tmp_path / "model.plan"
    plan.write_bytes(b"engine bytes")

    def manifest(sha, ok=True):
        m = make_manifest(runtime=RuntimeInfo("10.3.0", (8, 6), "NVIDIA A10"), precision="fp16",
                          batch={"min": 1, "opt": 2, "max": 4},
                          profile={"image": {"min": [1, 3, 8, 8], "opt": [2, 3, 8, 8], "max": [4, 3, 8, 8]}},
                          io=[], tasks=["seg"], onnx_path="model.onnx", onnx_sha256="0" * 64, engine_name=plan.name,
                          engine_sha256=sha, precision_check={"ok": ok})
        write_manifest(manifest_path(plan), m)

    manifest("f" * 64)
    with pytest.raises(DeploymtlError, match="does not match its manifest model.plan.json"):
        TrtRunner.from_engine(plan)
    digest = hashlib.sha256(b"engine bytes").hexdigest()
    manifest(digest, ok=False)
    with pytest.raises(DeploymtlError, match=r"failed its precision check at build time \(fp16 was not honoured\)"):
        TrtRunner.from_engine(plan)
    manifest(digest)
    with pytest.raises(DeploymtlError, match="TensorRT is not importable") as exc:
        TrtRunner.from_engine(plan)
    assert exc.value.exit_code == 2
