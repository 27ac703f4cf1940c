"""`deploymtl export` bad input: one-line errors, exit 2, nothing written."""

from __future__ import annotations

import pytest
import torch
from export_fixtures import recipe, tiny_artifact
from torch import nn

from deploymtl.cli.main import main
from deploymtl.formats.static import StaticArtifact, save_static
from deploymtl.ir import ops
from deploymtl.surgery.builder import GraphBuilder
from deploymtl.tasks import TaskSpec


@torch.library.custom_op("dmtltest::weird", mutates_args=())
def _weird(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@_weird.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class Weird(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _weird(x)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_artifact(tmp_path_factory.mktemp("cli") / "pruned.pt", trained=False)


def _run(capsys, *args):
    rc = main(["export", *map(str, args)])
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


@pytest.mark.parametrize(("args", "message"), [
    (["--target", "tflite"], "--target: unknown target 'tflite' (expected one of onnx, trt)"),
    (["--precision", "int4"], "--precision: unknown precision 'int4' (expected one of fp32, fp16, int8, auto)"),
    (["--batch", "4:2:1"], "--batch: '4:2:1' needs 1 <= MIN <= OPT <= MAX"),
    (["--batch", "a:b"], "--batch: 'a:b' is not a batch specification"),
    (["--tol", "seg"], "--tol 'seg' is not a per-output tolerance"),
    (["--max-metric-drop", "-1"], "--max-metric-drop -1 (expected a fraction >= 0"),
    (["--opset", "13"], "--opset 13 is too old (expected >= 17)"),
    (["--int8-activations", "sideways"], "--int8-activations: unknown scheme 'sideways'"),
    (["--int8-output-layers", "fp8"], "--int8-output-layers: unknown precision 'fp8'"),
    (["--target", "trt", "--precision", "int8", "--int8-activations", "asymmetric"],
     "--int8-activations asymmetric cannot feed TensorRT"),
])
def test_bad_options_exit_2_with_one_line_and_write_nothing(model, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    rc, err = _run(capsys, model, "-o", out, *args)
    assert rc == 2 and len(err) == 1 and message in err[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_output_directory_that_is_a_file(model, tmp_path, capsys):
    out = tmp_path / "taken"
    out.write_text("keep me")
    rc, err = _run(capsys, model, "-o", out)
    assert rc == 2 and err == [f"error: output directory {out} exists and is a file (expected a directory path)"]
    assert out.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_model_that_is_not_a_deploymtl_file(tmp_path, capsys):
    bogus = tmp_path / "model.pt"
    torch.save({"format": "something/9"}, bogus)
    rc, err = _run(capsys, bogus, "-o", tmp_path / "out")
    assert rc == 2 and "is neither a static model nor a supernet checkpoint" in err[0]
    rc, err = _run(capsys, tmp_path / "missing.pt", "-o", tmp_path / "out")
    assert rc == 2 and "model not found" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_trt_target_without_tensorrt_fails_first(model, tmp_path, capsys):
    pytest.importorskip("deploymtl.export.trt.build")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    rc, err = _run(capsys, model, "--target", "trt", "-o", tmp_path / "out")
    assert rc == 2 and len(err) == 1 and "TensorRT is not importable" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_unsupported_operator_names_op_and_module_path(tmp_path, capsys, monkeypatch):
    rule = ops.OpRule(ops.NoAttrs, (1, 1), lambda a, xs: xs[0], lambda a: Weird())  # shape-preserving, no weights
    monkeypatch.setitem(ops.OPS, "weird", rule)  # one registry entry is the whole op
    b = GraphBuilder()
    conv = nn.Conv2d(3, 5, 3, 1, 1)
    x = b.conv("stem_conv", "image", conv.weight, conv.bias, padding=1)
    b.output("seg", b.resize_to_input("seg_up", b._add("odd", "weird", [x])))
    tasks = [TaskSpec(name="seg", kind="segmentation", channels=5)]
    rec = recipe() | {"tasks": [t.model_dump() for t in tasks]}
    rec["data"] = rec["data"] | {"train_size": 2, "val_size": 2}
    art = StaticArtifact(model=b.build(), family="adashare", tasks=tasks, plan={}, recipe=rec,
                         input={"channels": 3, "height": 48, "width": 64, "mean": [0.5] * 3, "std": [0.25] * 3})
    path = save_static(tmp_path / "weird.pt", art)
    out = tmp_path / "out"
    rc, err = _run(capsys, path, "-o", out, "--batch", "1:1:2")
    assert rc == 2 and len(err) == 1
    assert "operator dmtltest.weird.default in module layers.odd (Weird) has no ONNX translation" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weird.pt"]  # no output dir, no staging left over
