"""`--target trt` orchestration without TensorRT: require_tensorrt first, then the ONNX of the requested precision,
then `export_trt`, then parity through `open_runner(plan)`. TensorRT itself is replaced by a stand-in whose "plan"
is the ONNX file run by ONNX Runtime, so the wiring (order, arguments, report, files) is what is tested."""

from __future__ import annotations

import json
import shutil

import pytest
from export_fixtures import tiny_artifact

pytest.importorskip("deploymtl.export.trt.build")

from deploymtl.backends import load as backend_load  # noqa: E402
from deploymtl.backends import trt_env  # noqa: E402
from deploymtl.backends.ort_runner import OrtRunner  # noqa: E402
from deploymtl.cli.main import main  # noqa: E402
from deploymtl.config import BatchSpec  # noqa: E402
from deploymtl.export import exporter  # noqa: E402
from deploymtl.export.trt import build as trt_build  # noqa: E402


def test_trt_target_dispatch_order_and_report(tmp_path, monkeypatch):
    calls: list[tuple] = []
    model = tiny_artifact(tmp_path / "pruned.pt")

    def fake_require():
        calls.append(("require_tensorrt",))

    real_load = exporter.load_static

    def spy_load(path):
        calls.append(("load_static",))
        return real_load(path)

    def fake_export_trt(onnx_path, out_dir, *, precision, batch, workspace_mb, timing_cache):
        calls.append(("export_trt", onnx_path.name, precision, batch, workspace_mb))
        assert onnx_path.is_file() and json.loads(
            next(p.value for p in __import__("onnx").load(onnx_path).metadata_props
                 if p.key == "deploymtl.precision")) == precision
        shutil.copy(onnx_path, out_dir / "model.plan")
        manifest = {"plan": "model.plan", "precision": precision, "batch": batch.to_dict()}
        (out_dir / "model.plan.json").write_text(json.dumps(manifest))
        return manifest

    real_open = backend_load.open_runner

    def fake_open(path, **kw):
        if str(path).endswith(".plan"):
            calls.append(("open_runner", path.name))
            runner = OrtRunner(path)
            runner.backend = "tensorrt"
            return runner
        return real_open(path, **kw)

    monkeypatch.setattr(trt_env, "require_tensorrt", fake_require)
    monkeypatch.setattr(trt_build, "export_trt", fake_export_trt)
    monkeypatch.setattr(exporter, "load_static", spy_load)
    monkeypatch.setattr(backend_load, "open_runner", fake_open)
    out = tmp_path / "trt"
    rc = main(["export", str(model), "--target", "trt", "--precision", "fp16", "--batch", "1:2:3", "-o", str(out),
               "--workspace-mb", "512", "--no-simplify", "--threads", "1", "-q"])
    assert rc == 0
    assert [c[0] for c in calls] == ["require_tensorrt", "load_static", "export_trt", "open_runner"]
    assert calls[2] == ("export_trt", "model.onnx", "fp16", BatchSpec(1, 2, 3), 512)
    report = json.loads((out / "export_report.json").read_text())
    assert report["target"] == "trt" and report["artifact"] == "model.plan" and report["passed"]
    assert report["trt"]["manifest"]["precision"] == "fp16"
    assert set(report["outputs"]) == {"seg", "depth", "count"} and report["onnx_outputs"]["seg"]["passed"]
    assert report["batch_sizes_checked"] == [1, 3]
    assert {"model.onnx", "model.plan", "model.plan.json", "model.parity.npz"} <= {p.name for p in out.iterdir()}
