"""A deliberately corrupted ONNX graph is caught and localised to the right ONNX node and PyTorch module path."""

from __future__ import annotations

import json
import math

import onnx
import pytest
import torch
from export_fixtures import TASKS, H, W, tiny_artifact
from onnx import numpy_helper

from deploymtl.cli.main import main
from deploymtl.export import onnx as onnx_export
from deploymtl.export.onnx import export_onnx
from deploymtl.formats.static import load_static
from deploymtl.verify.compare import PRESETS
from deploymtl.verify.localize import localize, module_tensors

NAMES = [t.name for t in TASKS]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = tiny_artifact(tmp_path_factory.mktemp("localize") / "pruned.pt")
    art = load_static(path)
    proto = export_onnx(art.model, channels=3, height=H, width=W, outputs=NAMES)
    x = torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(3)).numpy()
    return path, art, proto, x


def _corrupt(proto: onnx.ModelProto, name: str, factor: float = 1.5) -> onnx.ModelProto:
    bad = onnx.ModelProto()
    bad.CopyFrom(proto)
    init = next(i for i in bad.graph.initializer if i.name == name)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * factor, name))
    return bad


def test_every_static_module_has_an_onnx_tensor(setup):
    _, art, proto, _ = setup
    tensors = module_tensors(proto)
    assert set(tensors) == {f"layers.{n}" for n in art.model.layers}
    tensor, node = tensors["layers.b0_conv1"]
    assert node.name == "layers.b0_conv1/Conv" and node.op_type == "Conv" and tensor in node.output
    assert tensors["layers.seg_up"][0] == "seg"  # the resize feeding the task output is the graph output


def test_corrupted_backbone_conv_is_localised_by_bisection(setup):
    _, art, proto, x = setup
    loc = localize(_corrupt(proto, "layers.b1_conv1.weight"), art.model, x, "seg", PRESETS["fp32"])
    assert loc, loc.message
    assert loc.onnx_node == "layers.b1_conv1/Conv" and loc.onnx_op == "Conv"
    assert loc.module_path == "layers.b1_conv1" and loc.module_type == "Conv2d" and loc.static_op == "conv"
    assert loc.inputs_match is True
    assert loc.compare["max_abs"] > 1e-3 and not loc.compare["passed"]
    # bisection: a handful of ONNX Runtime runs, not one per layer
    assert loc.candidates >= 15 and loc.probes <= math.ceil(math.log2(loc.candidates)) + 1
    assert "layers.b1_conv1" in loc.summary() and "layers.b1_conv1/Conv" in loc.summary()


def test_head_corruption_is_localised_per_output(setup):
    _, art, proto, x = setup
    bad = _corrupt(proto, "layers.depth_conv.weight", 0.5)
    loc = localize(bad, art.model, x, "depth", PRESETS["fp32"])
    assert loc and loc.module_path == "layers.depth_conv" and loc.onnx_node == "layers.depth_conv/Conv"
    clean = localize(bad, art.model, x, "count", PRESETS["fp32"])  # count does not read depth_conv
    assert not clean and "matches PyTorch" in clean.message


def test_export_with_a_corrupted_graph_fails_with_the_localisation_in_the_report(setup, tmp_path, monkeypatch,
                                                                                   capsys):
    path = setup[0]
    real = onnx_export.export_onnx

    def corrupted(model, **kw):
        return _corrupt(real(model, **kw), "layers.t_conv.weight", 1.2)

    monkeypatch.setattr(onnx_export, "export_onnx", corrupted)  # what the fp32 stage calls
    out = tmp_path / "bad"
    rc = main(["export", str(path), "--batch", "1:1:2", "--no-simplify", "-o", str(out), "--threads", "1", "-q"])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ONNX parity failed for seg, depth" in err[0]
    report = json.loads((out / "export_report.json").read_text())
    assert not report["passed"] and not report["outputs"]["seg"]["passed"] and report["outputs"]["count"]["passed"]
    loc = report["localization"]
    assert loc["found"] and loc["output"] == "seg"
    assert loc["onnx_node"] == "layers.t_conv/Conv" and loc["module_path"] == "layers.t_conv"


def test_a_layer_shared_by_several_nodes_is_split_per_call():
    """AdaShare tree branches reuse one layer (`shares`): each call gets its own ONNX name and tensor."""
    from torch import nn

    from deploymtl.formats.onnx_metadata import node_scope
    from deploymtl.surgery.builder import GraphBuilder

    torch.manual_seed(0)
    b = GraphBuilder()
    shared, other = nn.Conv2d(3, 3, 3, 1, 1), nn.Conv2d(3, 3, 3, 1, 1)
    x = b.conv_module("c1", "image", shared)
    x = b.relu("r", b.conv_module("c1b", x, shared))  # the same layer called twice in a row
    x = b.conv_module("c1c", b.conv_module("d", x, other), shared)
    b.output("seg", b.resize_to_input("up", x))
    model = b.build()
    assert [n.get("shares") for n in model.spec["nodes"]] == [None, "c1", None, None, "c1", None]
    proto = export_onnx(model, channels=3, height=8, width=8, outputs=["seg"])
    convs = [n.name for n in proto.graph.node if n.op_type == "Conv"]
    assert convs == ["layers.c1/Conv", "layers.c1b/Conv", "layers.d/Conv", "layers.c1c/Conv"]
    assert {node_scope(n) for n in proto.graph.node} == {f"layers.{n}" for n in ("c1", "c1b", "r", "d", "c1c", "up")}
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)).numpy()
    loc = localize(_corrupt(proto, "layers.d.weight"), model, x, "seg", PRESETS["fp32"])
    assert loc.onnx_node == "layers.d/Conv" and loc.module_path == "layers.d"
    # corrupting the shared weight: the first call diverges first; its module path is the owning layer
    bad = _corrupt(proto, "layers.c1.weight", 1.1)
    loc = localize(bad, model, x, "seg", PRESETS["fp32"])
    assert loc.onnx_node == "layers.c1/Conv" and loc.static_node == "c1" and loc.module_path == "layers.c1"
