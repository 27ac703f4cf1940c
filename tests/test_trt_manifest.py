"""Engine manifest `model.plan.json`: round trip, validation and the compatibility check run before loading."""

from __future__ import annotations

import enum
import json
import logging

import pytest

from deploymtl.errors import DeploymtlError
from deploymtl.formats.trt_manifest import (
    MANIFEST_FORMAT,
    RuntimeInfo,
    check_compatible,
    dtype_name,
    make_manifest,
    manifest_path,
    read_manifest,
    rebuild_command,
    version_tuple,
    write_manifest,
)

A10 = RuntimeInfo("10.3.0", (8, 6), "NVIDIA A10", "12.4")


def _manifest(runtime=A10, **kw):
    args = dict(runtime=runtime, precision="fp16", batch={"min": 1, "opt": 4, "max": 8},
                profile={"image": {"min": [1, 3, 48, 64], "opt": [4, 3, 48, 64], "max": [8, 3, 48, 64]}},
                io=[{"name": "image", "mode": "input", "dtype": "float32", "shape": [-1, 3, 48, 64]},
                    {"name": "seg", "mode": "output", "dtype": "float32", "shape": [-1, 5, 48, 64]}],
                tasks=[{"name": "seg", "kind": "segmentation", "channels": 5}], onnx_path="out/model.onnx",
                onnx_sha256="ab" * 32, engine_name="model.plan", engine_sha256="cd" * 32)
    args.update(kw)
    return make_manifest(**args)


def test_round_trip(tmp_path):
    m = _manifest(hardware_compatibility="ampere_plus", build={"workspace_mb": 512},
                  precision_check={"ok": True, "inspectable": True})
    path = write_manifest(manifest_path(tmp_path / "model.plan"), m)
    assert path.name == "model.plan.json"
    loaded = read_manifest(path)
    assert loaded == json.loads(json.dumps(m))
    assert loaded["format"] == MANIFEST_FORMAT
    assert loaded["tensorrt_version"] == "10.3.0" and loaded["cuda_version"] == "12.4"
    assert loaded["gpu"] == {"name": "NVIDIA A10", "compute_capability": [8, 6]}
    assert loaded["compatibility"] == {"hardware_compatibility_level": "ampere_plus", "version_compatible": False}
    assert loaded["onnx"] == {"path": "out/model.onnx", "sha256": "ab" * 32}
    assert [io["name"] for io in loaded["io"]] == ["image", "seg"]


def test_make_manifest_rejects_unknown_settings():
    with pytest.raises(DeploymtlError, match="unknown precision 'int4'"):
        _manifest(precision="int4")
    with pytest.raises(DeploymtlError, match="hardware compatibility level 'any'"):
        _manifest(hardware_compatibility="any")


def test_read_manifest_errors(tmp_path):
    with pytest.raises(DeploymtlError, match="engine manifest not found") as exc:
        read_manifest(tmp_path / "model.plan.json")
    assert "deploymtl export MODEL --target trt" in exc.value.one_line()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something/1"}))
    with pytest.raises(DeploymtlError, match="not a deploymtl engine manifest"):
        read_manifest(bad)
    partial = {k: v for k, v in _manifest().items() if k not in ("io", "profile")}
    bad.write_text(json.dumps(partial))
    with pytest.raises(DeploymtlError, match="lacks profile, io"):
        read_manifest(bad)
    odd = _manifest()
    odd["compatibility"]["hardware_compatibility_level"] = "turing_plus"
    bad.write_text(json.dumps(odd))
    with pytest.raises(DeploymtlError, match="unknown hardware_compatibility_level 'turing_plus'"):
        read_manifest(bad)
    odd = _manifest()
    odd["gpu"]["compute_capability"] = "8.6"
    bad.write_text(json.dumps(odd))
    with pytest.raises(DeploymtlError, match="malformed gpu/compatibility"):
        read_manifest(bad)


def test_same_machine_is_compatible():
    assert check_compatible(_manifest(), A10) is None


def test_tensorrt_version_mismatch_names_the_rebuild():
    with pytest.raises(DeploymtlError) as exc:
        check_compatible(_manifest(), RuntimeInfo("10.8.0", (8, 6), "NVIDIA A10"))
    line = exc.value.one_line()
    assert "built with TensorRT 10.3.0 but this machine has TensorRT 10.8.0" in line
    assert "rebuild with `deploymtl export out/model.onnx --target trt --precision fp16 --batch 1:4:8`" in line
    assert exc.value.exit_code == 2
    # a build number or post-release suffix is not a different TensorRT
    assert check_compatible(_manifest(), RuntimeInfo("10.3.0.26", (8, 6))) is None


def test_compute_capability_mismatch():
    with pytest.raises(DeploymtlError, match=r"compute capability 8.6 \(NVIDIA A10\) but NVIDIA H100 has 9.0"):
        check_compatible(_manifest(), RuntimeInfo("10.3.0", (9, 0), "NVIDIA H100"))
    same_cc = _manifest(hardware_compatibility="same_compute_capability")
    with pytest.raises(DeploymtlError, match="compute capability 8.6"):
        check_compatible(same_cc, RuntimeInfo("10.3.0", (8, 9), "NVIDIA L4"))


def test_ampere_plus_runs_on_newer_gpus_only():
    m = _manifest(hardware_compatibility="ampere_plus")
    assert check_compatible(m, RuntimeInfo("10.3.0", (9, 0), "NVIDIA H100")) is None
    with pytest.raises(DeploymtlError, match=r"Ampere or newer .* T4 has compute capability 7.5"):
        check_compatible(m, RuntimeInfo("10.3.0", (7, 5), "T4"))


def test_version_compatible_engines():
    m = _manifest(version_compatible=True)
    assert check_compatible(m, RuntimeInfo("10.8.1", (8, 6))) is None
    for newer_build, older_runtime in (("10.3.0", "10.2.0"), ("10.3.0", "11.0.0")):
        with pytest.raises(DeploymtlError, match="version-compatible engine built with TensorRT"):
            check_compatible(_manifest(runtime=RuntimeInfo(newer_build, (8, 6)), version_compatible=True),
                             RuntimeInfo(older_runtime, (8, 6)))


def test_other_gpu_with_same_capability_only_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="deploymtl.formats.trt_manifest"):
        assert check_compatible(_manifest(), RuntimeInfo("10.3.0", (8, 6), "NVIDIA RTX A6000")) is None
    assert "built on NVIDIA A10 and loads on NVIDIA RTX A6000" in caplog.text


def test_helpers():
    assert version_tuple("10.3.0.26") == (10, 3, 0, 26)
    assert version_tuple("11.4.0.post1") == (11, 4, 0)
    assert version_tuple("garbage") == ()
    assert rebuild_command({"precision": "int8"}) == "deploymtl export MODEL --target trt --precision int8"

    class DataType(enum.Enum):  # the shape of tensorrt.DataType members: named enum values
        HALF = 1
        INT64 = 2
        FP8 = 3

    assert dtype_name(DataType.HALF) == "float16" and dtype_name(DataType.INT64) == "int64"
    assert dtype_name("FLOAT") == "float32" and dtype_name("BOOL") == "bool"
    with pytest.raises(DeploymtlError, match="engine tensor type FP8 has no numpy equivalent"):
        dtype_name(DataType.FP8)
