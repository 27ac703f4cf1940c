"""`deploymtl verify`: re-check an artifact from the parity data saved at export time, on several backends."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from export_fixtures import TASKS, tiny_artifact
from onnx import numpy_helper

from deploymtl.cli.main import main
from deploymtl.errors import DeploymtlError
from deploymtl.export.exporter import export_model
from deploymtl.export.options import ExportOptions
from deploymtl.formats.parity import load_parity, save_parity
from deploymtl.verify.parity import check_artifact, saved_tolerances

NAMES = [t.name for t in TASKS]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    model = tiny_artifact(root / "pruned.pt")
    out = root / "onnx"
    export_model(model, out, ExportOptions.parse({"batch": "1:2:3", "simplify": False, "threads": 1}))
    return model, out


def test_parity_file_holds_real_inputs_and_reference(exported):
    _, out = exported
    data = load_parity(out / "model.parity.npz")
    assert data.inputs.shape == (3, 3, 48, 64) and data.inputs.dtype == np.float32
    assert list(data.reference) == NAMES and data.reference["seg"].shape == (3, 5, 48, 64)
    assert data.meta["precision"] == "fp32" and data.meta["batch"] == {"min": 1, "opt": 2, "max": 3}
    assert saved_tolerances(data)["seg"].atol == 1e-4
    assert np.abs(data.inputs).max() > 0.5  # real normalised images, not zeros


def test_verify_cli_passes_on_onnxruntime_and_on_the_torch_static_model(exported, capsys):
    model, out = exported
    assert main(["verify", str(out / "model.onnx")]) == 0
    text = capsys.readouterr().out
    assert "onnxruntime, batch sizes [1, 3]" in text and "verify passed" in text
    assert main(["verify", str(model), "--backend", "torch", "--parity", str(out / "model.parity.npz")]) == 0
    assert "torch, batch sizes [1, 3]" in capsys.readouterr().out


def test_verify_fails_with_exit_1_on_a_corrupted_copy(exported, tmp_path, capsys):
    _, out = exported
    proto = onnx.load(out / "model.onnx")
    init = next(i for i in proto.graph.initializer if i.name == "layers.count_fc.weight")
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + 0.1, init.name))
    onnx.save(proto, tmp_path / "model.onnx")
    shutil.copy(out / "model.parity.npz", tmp_path / "model.parity.npz")
    assert main(["verify", str(tmp_path / "model.onnx")]) == 1
    captured = capsys.readouterr()
    assert "does not match its parity data on onnxruntime for count" in captured.err
    assert "count: max_abs" in captured.out and "FAILED" in captured.out
    result = check_artifact(tmp_path / "model.onnx")
    assert not result and result.report.failed == ["count"] and result.report["seg"]
    assert result.report["count"].atol_needed > 0.01


def test_tolerance_overrides_apply_to_the_recheck(exported):
    _, out = exported
    assert not check_artifact(out / "model.onnx", atol=0.0, rtol=0.0)  # fp32 reassociation is not bit-exact
    assert check_artifact(out / "model.onnx", per_output={"seg": {"atol": 1e-3}})


def test_verify_bad_input_is_exit_2(exported, tmp_path, capsys):
    model, out = exported
    assert main(["verify", str(out / "model.onnx"), "--backend", "tensorrt"]) == 2
    assert "backend 'tensorrt' cannot run" in capsys.readouterr().err
    assert main(["verify", str(out / "model.onnx"), "--backend", "gpu"]) == 2
    assert "unknown backend 'gpu'" in capsys.readouterr().err
    assert main(["verify", str(model)]) == 2  # no parity data beside pruned.pt
    assert "parity data not found" in capsys.readouterr().err
    np.savez(tmp_path / "x.npz", a=np.zeros(2))
    with pytest.raises(DeploymtlError, match="not a deploymtl parity file"):
        load_parity(tmp_path / "x.npz")
    save_parity(tmp_path / "p.parity.npz", np.zeros((1, 3, 48, 64), np.float32),
                {"other": np.zeros((1, 2), np.float32)}, {"precision": "fp32"})
    assert main(["verify", str(out / "model.onnx"), "--parity", str(tmp_path / "p.parity.npz")]) == 2
    assert "no output(s) ['other']" in capsys.readouterr().err
