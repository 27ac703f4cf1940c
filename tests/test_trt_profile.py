"""Optimisation profiles derived from BatchSpec + ONNX input dims."""

from __future__ import annotations

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from deploymtl.config import BatchSpec, parse_batch
from deploymtl.errors import DeploymtlError
from deploymtl.export.trt.profile import derive_profiles
from deploymtl.formats.trt_manifest import InputProfile, profiles_from_dict, profiles_to_dict
from deploymtl.surgery.builder import GraphBuilder


def _graph(dims, extra_init=False):
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    inputs = [x]
    inits = []
    if extra_init:  # old-IR models list initializers among the inputs too
        inits = [helper.make_tensor("w", TensorProto.FLOAT, [1], [2.0])]
        inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [1]))
    g = helper.make_graph([helper.make_node("Mul", ["image", "w" if extra_init else "image"], ["out"])], "g",
                          inputs, [y], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_profile_from_exported_dynamic_batch_onnx(tmp_path):
    b = GraphBuilder()
    b.output("seg", b.conv_module("head", "image", nn.Conv2d(3, 5, 1)))
    path = tmp_path / "model.onnx"
    torch.onnx.export(b.build(), (torch.randn(2, 3, 48, 64),), str(path), input_names=["image"],
                      output_names=["seg"], dynamic_axes={"image": {0: "batch"}, "seg": {0: "batch"}},
                      dynamo=False, opset_version=17)
    profiles = derive_profiles(path, parse_batch("1:4:8"))
    assert list(profiles) == ["image"]
    p = profiles["image"]
    assert (p.min, p.opt, p.max) == ((1, 3, 48, 64), (4, 3, 48, 64), (8, 3, 48, 64))
    assert p.batch_range() == (1, 8)
    assert profiles_to_dict(profiles) == {"image": {"min": [1, 3, 48, 64], "opt": [4, 3, 48, 64],
                                                    "max": [8, 3, 48, 64]}}


def test_initializers_listed_as_inputs_get_no_profile():
    profiles = derive_profiles(_graph(["N", 3, 8, 8], extra_init=True), BatchSpec(2, 2, 4))
    assert list(profiles) == ["image"] and profiles["image"].max == (4, 3, 8, 8)


def test_static_batch_only_fits_an_equal_spec():
    fixed = derive_profiles(_graph([2, 3, 8, 8]), BatchSpec(2, 2, 2))
    assert fixed["image"].min == fixed["image"].max == (2, 3, 8, 8)
    with pytest.raises(DeploymtlError, match="static batch of 2 but --batch 1:4:8") as exc:
        derive_profiles(_graph([2, 3, 8, 8]), BatchSpec(1, 4, 8))
    assert "re-export with a dynamic batch axis" in exc.value.one_line()
    assert exc.value.exit_code == 2


def test_dynamic_spatial_dims_and_missing_shapes_are_refused():
    with pytest.raises(DeploymtlError, match="dynamic dimension 2"):
        derive_profiles(_graph(["N", 3, "H", 8]), BatchSpec(1, 1, 2))
    no_shape = _graph(["N", 3, 8, 8])
    no_shape.graph.input[0].type.tensor_type.ClearField("shape")
    with pytest.raises(DeploymtlError, match="has no shape"):
        derive_profiles(no_shape, BatchSpec(1, 1, 2))


def test_bad_paths(tmp_path):
    with pytest.raises(DeploymtlError, match="not found"):
        derive_profiles(tmp_path / "none.onnx", BatchSpec(1, 1, 1))
    (tmp_path / "bad.onnx").write_bytes(b"\xff\xfe garbage")
    with pytest.raises(DeploymtlError, match="not a readable ONNX model"):
        derive_profiles(tmp_path / "bad.onnx", BatchSpec(1, 1, 1))
    onnx.save(_graph(["N", 3, 8, 8]), tmp_path / "ok.onnx")
    assert derive_profiles(tmp_path / "ok.onnx", BatchSpec(1, 2, 3))["image"].opt == (2, 3, 8, 8)


def test_round_trip_and_validation():
    profiles = {"image": InputProfile("image", (1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8))}
    assert profiles_from_dict(profiles_to_dict(profiles)) == profiles
    p = profiles["image"]
    assert p.contains((8, 3, 8, 8)) and p.contains((1, 3, 8, 8))
    assert not p.contains((9, 3, 8, 8)) and not p.contains((4, 3, 8, 9)) and not p.contains((4, 3, 8))
    with pytest.raises(DeploymtlError, match="min <= opt <= max"):
        profiles_from_dict({"image": {"min": [4, 3], "opt": [2, 3], "max": [8, 3]}})
    with pytest.raises(DeploymtlError, match="integer lists min, opt, max"):
        profiles_from_dict({"image": {"min": [1], "max": [2]}})
    with pytest.raises(DeploymtlError, match="must map input names"):
        profiles_from_dict({})
