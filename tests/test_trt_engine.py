"""Real TensorRT engines: build, inspect, load, run, parity against PyTorch. Needs TensorRT 10/11 and an NVIDIA GPU;
skipped with the reason elsewhere (this project's CI has neither)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

pytestmark = pytest.mark.trt
trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed; engine tests need pip install "
                                             "'deploymtl[trt]' on a machine with an NVIDIA GPU")
if not torch.cuda.is_available():
    pytest.skip("TensorRT is installed but no CUDA GPU is visible; engine tests need an NVIDIA GPU",
                allow_module_level=True)

from deploymtl.backends.trt_runner import TrtRunner  # noqa: E402
from deploymtl.errors import DeploymtlError  # noqa: E402
from deploymtl.export.trt.build import export_trt  # noqa: E402
from deploymtl.formats.trt_manifest import manifest_path  # noqa: E402
from deploymtl.surgery.builder import GraphBuilder  # noqa: E402

BATCH = "1:2:4"


def _model() -> nn.Module:
    torch.manual_seed(0)
    b = GraphBuilder()
    x = b.relu("r1", b.conv_module("stem", "image", nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16).eval()))
    x = b.maxpool("pool", x, nn.MaxPool2d(3, 2, 1))
    y = b.relu("r2", b.conv_module("c2", x, nn.Conv2d(16, 16, 3, 1, 1)))
    seg = b.conv_module("seghead", b.select("sel", y, list(range(0, 16, 2))), nn.Conv2d(8, 5, 1))
    b.output("seg", b.resize_to_input("up", seg))
    b.output("cls", b.linear("fc", b.gap("gap", y), nn.Linear(16, 4)))
    return b.build()


def _export(model: nn.Module, path, dtype=torch.float32):
    torch.onnx.export(model, (torch.randn(2, 3, 48, 64, dtype=dtype),), str(path), input_names=["image"],
                      output_names=["seg", "cls"], dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=8)},),
                      dynamo=True, opset_version=18)
    return path


@pytest.fixture(scope="module")
def fp32_engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("trt_fp32")
    model = _model()
    onnx_path = _export(model, root / "model.onnx")
    manifest = export_trt(onnx_path, root / "engine", precision="fp32", batch=BATCH, workspace_mb=256)
    return model, root, manifest


def _reference(model, x):
    with torch.no_grad():
        return {k: v.numpy() for k, v in model(torch.from_numpy(x)).items()}


def test_fp32_engine_artifacts(fp32_engine):
    _, root, manifest = fp32_engine
    plan = root / "engine" / "model.plan"
    assert plan.is_file() and (root / "engine" / "timing.cache").stat().st_size > 0
    # the plan is the raw serialized engine: TensorRT itself loads it as is (trtexec / Triton do the same)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    assert runtime.deserialize_cuda_engine(plan.read_bytes()) is not None
    saved = json.loads(manifest_path(plan).read_text())
    assert saved["precision"] == "fp32" and saved["tensorrt_version"] == trt.__version__
    assert saved["profile"]["image"] == {"min": [1, 3, 48, 64], "opt": [2, 3, 48, 64], "max": [4, 3, 48, 64]}
    assert [(io["name"], io["mode"]) for io in saved["io"]] == [("image", "input"), ("seg", "output"),
                                                                 ("cls", "output")]
    assert saved["precision_check"]["ok"] and saved["precision_check"]["inspectable"]
    assert tuple(saved["gpu"]["compute_capability"]) == torch.cuda.get_device_capability()


def test_fp32_parity_and_dynamic_batch(fp32_engine):
    model, root, _ = fp32_engine
    with TrtRunner.from_engine(root / "engine" / "model.plan") as runner:
        assert (runner.input_spec.min_batch, runner.input_spec.max_batch) == (1, 4)
        for n in (1, 3, 4):
            x = np.random.RandomState(n).randn(n, 3, 48, 64).astype(np.float32)
            out, ref = runner.infer(x), _reference(model, x)
            for task in ("seg", "cls"):
                assert out[task].shape == ref[task].shape
                assert np.abs(out[task] - ref[task]).max() < 1e-3, task  # TF32 is off for fp32 engines
        with pytest.raises(DeploymtlError, match="batch 5 is outside the artifact's range 1..4"):
            runner.infer(np.zeros((5, 3, 48, 64), np.float32))


def test_mismatched_tensorrt_version_is_refused_before_deserialising(fp32_engine, tmp_path):
    _, root, manifest = fp32_engine
    plan = tmp_path / "model.plan"
    plan.write_bytes((root / "engine" / "model.plan").read_bytes())
    manifest_path(plan).write_text(json.dumps({**manifest, "tensorrt_version": "9.0.0"}))
    with pytest.raises(DeploymtlError, match="built with TensorRT 9.0.0 but this machine has TensorRT"):
        TrtRunner.from_engine(plan)


def test_timing_cache_is_reused(fp32_engine, tmp_path):
    _, root, _ = fp32_engine
    cache = root / "engine" / "timing.cache"
    before = cache.read_bytes()
    manifest = export_trt(root / "model.onnx", tmp_path, precision="fp32", batch=BATCH, workspace_mb=256,
                          timing_cache=cache)
    assert manifest["build"]["timing_cache"] == str(cache) and len(cache.read_bytes()) >= len(before)


def test_fp16_engine_runs_fp16(tmp_path):
    model = _model()
    onnx_path = _export(_model().half(), tmp_path / "model_fp16.onnx", dtype=torch.float16)
    manifest = export_trt(onnx_path, tmp_path / "engine", precision="fp16", batch=BATCH, workspace_mb=256)
    assert manifest["precision_check"]["ok"] and manifest["precision_check"]["by_precision"].get("fp16", 0) >= 1
    with TrtRunner.from_engine(tmp_path / "engine" / "model.plan") as runner:
        assert runner.input_spec.dtype == "float16"
        x = np.random.RandomState(0).randn(2, 3, 48, 64).astype(np.float32)
        out, ref = runner.infer(x.astype(np.float16)), _reference(model, x)
        for task in ("seg", "cls"):
            scale = np.abs(ref[task]).max() + 1e-6
            assert np.abs(out[task] - ref[task]).max() / scale < 2e-2, task


def test_int8_qdq_engine_runs_int8(fp32_engine, tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    model, root, _ = fp32_engine
    rng = np.random.RandomState(0)
    calib = [rng.randn(1, 3, 48, 64).astype(np.float32) for _ in range(8)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter({"image": x} for x in calib)

        def get_next(self):
            return next(self.it, None)

    qdq = tmp_path / "model_int8.onnx"
    quantize_static(str(root / "model.onnx"), str(qdq), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
    manifest = export_trt(qdq, tmp_path / "engine", precision="int8", batch=BATCH, workspace_mb=256)
    assert manifest["precision_check"]["ok"] and manifest["precision_check"]["by_precision"].get("int8", 0) >= 1
    with TrtRunner.from_engine(tmp_path / "engine" / "model.plan") as runner:
        out, ref = runner.infer(calib[0]), _reference(model, calib[0])
    for task in ("seg", "cls"):
        assert np.isfinite(out[task]).all()
        assert np.corrcoef(out[task].ravel(), ref[task].ravel())[0, 1] > 0.9, task
