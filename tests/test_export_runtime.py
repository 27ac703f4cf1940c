"""The file on disk is the fast one: `deploymtl export --for ort-cpu|trt|generic` writes the graph in the form of its
runtime, a plain `onnxruntime.InferenceSession(path)` reproduces the parity set of every form, and the form is
recorded in the file, the report and the parity set (`deploymtl.export.shaping`)."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from deploymtl.cli.main import main
from deploymtl.config import DataConfig
from deploymtl.data import build_datasets
from deploymtl.export.exporter import export_model
from deploymtl.export.options import ExportOptions
from deploymtl.export.trt.lint import errors, lint_onnx
from deploymtl.formats.parity import load_parity
from deploymtl.formats.static import StaticArtifact, save_static
from deploymtl.onnxkit.cpu import amx_int8, simd_block
from deploymtl.onnxkit.qdq import ORT_CPU, check_scheme
from deploymtl.surgery.builder import GraphBuilder
from deploymtl.tasks import TaskSpec, task_loss
from deploymtl.verify.compare import compare_outputs
from deploymtl.verify.parity import expected, saved_tolerances

ort = pytest.importorskip("onnxruntime")
TASKS = [TaskSpec(name="seg", kind="segmentation", channels=5), TaskSpec(name="depth", kind="depth")]
H, W = 48, 64
DATA = {"source": "synthetic", "height": H, "width": W, "train_size": 64, "val_size": 16, "seed": 0}
INNER = (23, 27)  # pruned inner widths: padded on AVX2 (8 -> 24, 32) and AVX-512 (16 -> 32, 32) alike
FORMS = [("fp32", "ort-cpu"), ("int8", "ort-cpu"), ("fp32", "trt"), ("int8", "trt"), ("int8", "generic")]


def _conv(b: GraphBuilder, name: str, x: str, cin: int, cout: int, k: int = 3, stride: int = 1) -> str:
    c = nn.Conv2d(cin, cout, k, stride, k // 2)
    return b.conv(name, x, c.weight, c.bias, stride=stride, padding=k // 2)


def _artifact(path: Path) -> Path:
    """Stem, two residual blocks with odd inner widths, two light heads; a few training steps."""
    torch.manual_seed(0)
    b = GraphBuilder()
    x = b.relu("stem_relu", _conv(b, "stem", "image", 3, 16, stride=2))
    for i, inner in enumerate(INNER):
        h = _conv(b, f"b{i}_conv2", b.relu(f"b{i}_relu1", _conv(b, f"b{i}_conv1", x, 16, inner)), inner, 16)
        x = b.relu(f"b{i}_relu", b.add(f"b{i}_add", x, h))
    b.output("seg", b.resize_to_input("seg_up", _conv(b, "seg_out", x, 16, 5, k=1)))
    b.output("depth", b.resize_to_input("depth_up", _conv(b, "depth_out", x, 16, 1, k=1)))
    model = b.build()
    train = build_datasets(DataConfig(**DATA), TASKS)["train"]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(30):
        batch = train[torch.randint(0, len(train), (16,), generator=torch.Generator().manual_seed(step))]
        out = model(batch["image"])
        loss = sum(task_loss(t, out[t.name], batch[t.name]) for t in TASKS)
        opt.zero_grad()
        loss.backward()
        opt.step()
    art = StaticArtifact(model=model.eval(), family="adashare", tasks=TASKS, plan={"tasks": ["seg", "depth"]},
                         input={"channels": 3, "height": H, "width": W, "mean": [0.5] * 3, "std": [0.25] * 3},
                         recipe={"name": "runtime-forms", "family": "adashare",
                                 "tasks": [t.model_dump() for t in TASKS], "data": DATA,
                                 "export": {"batch": "1:2:4", "calibration_samples": 16}})
    save_static(path, art)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[tuple[str, str], Path]:
    """One export per (precision, runtime) of FORMS: {form: out dir}."""
    root = tmp_path_factory.mktemp("runtime")
    model = _artifact(root / "pruned.pt")
    out = {}
    for precision, runtime in FORMS:
        folder = root / f"{precision}-{runtime}"
        options = ExportOptions.parse({"precision": precision, "runtime": runtime, "threads": 1,
                                       "max_metric_drop": 0.2})
        assert export_model(model, folder, options).passed
        out[(precision, runtime)] = folder
    return out


def _ops_ort_runs(path: Path, tmp_path: Path) -> collections.Counter:
    """Operator counts of the graph a default ONNX Runtime CPU session runs (ORT_ENABLE_ALL)."""
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)


def _zero_points(proto: onnx.ModelProto) -> list[np.ndarray]:
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    return [inits[n.input[2]] for n in proto.graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]


@pytest.mark.parametrize("form", FORMS, ids=["-".join(f) for f in FORMS])
def test_a_plain_session_on_the_written_file_reproduces_its_parity_set(exported, form) -> None:
    """No deploymtl code between the file and ONNX Runtime: a default InferenceSession passes the saved tolerances
    at batch 1 and MAX, and computes what deploymtl's own runner computes."""
    from deploymtl.backends.ort_runner import OrtRunner

    path = exported[form] / "model.onnx"
    data = load_parity(exported[form] / "model.parity.npz")
    assert data.meta["runtime"] == form[1] and data.meta["precision"] == form[0]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    runs = [session.run(names, {"image": x}) for x in (data.inputs[:1], data.inputs)]
    outs = {n: np.concatenate([r[k] for r in runs]) for k, n in enumerate(names)}
    report = compare_outputs(outs, expected(data.reference), saved_tolerances(data))
    assert report.passed, report.summary()
    ours = OrtRunner(path, threads=1).infer(data.inputs)
    for k, name in enumerate(names):
        np.testing.assert_allclose(ours[name], runs[1][k], rtol=1e-5, atol=1e-5)


def test_the_form_is_recorded_in_the_file_and_the_report(exported) -> None:
    for (precision, runtime), folder in exported.items():
        proto = onnx.load(folder / "model.onnx")
        meta = json.loads({p.key: p.value for p in proto.metadata_props}["deploymtl.runtime"])
        report = json.loads((folder / "export_report.json").read_text())
        block = simd_block() if runtime == "ort-cpu" else None
        # an int8 ort-cpu file also records whether it was shaped for ONNX Runtime's AMX int8 GEMM
        amx = {"int8_amx": amx_int8()} if (precision, runtime) == ("int8", "ort-cpu") else {}
        assert meta == {"name": runtime, "simd_block": block} | amx
        assert report["runtime"]["name"] == runtime and report["runtime"]["simd_block"] == block
        assert report["runtime"].get("int8_amx") == amx.get("int8_amx")
        assert report["options"]["runtime"] == runtime and report["onnxruntime_cpu_lowering"] == {}
    rewrites = json.loads((exported[("int8", "ort-cpu")] / "export_report.json").read_text())["runtime"]["rewrites"]
    # b0/b1 conv1 padded; the stem, b0_relu1, b0_relu and b1_relu1 ReLUs folded, and b1_relu (read by the float
    # heads) moved before its quantiser; 24 x 32 heads: Resize; no channel selection in this layout
    assert rewrites == {"padded_convs": 2, "uint8_tensors": 5, "matmul_resizes": 0, "selection_convs": 0,
                        "merged_branches": 0, "folded_selections": 0}


def test_ort_cpu_fp32_file_carries_the_padding(exported) -> None:
    """The odd inner convolutions are padded to this CPU's SIMD block with zero filters, their readers with zero
    columns; the trt file keeps the pruned widths."""
    def conv_weights(folder: Path) -> dict[str, np.ndarray]:
        proto = onnx.load(folder / "model.onnx")
        inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
        return {n.name.split("/")[0]: inits[n.input[1]] for n in proto.graph.node if n.op_type == "Conv"}

    shaped, plain = conv_weights(exported[("fp32", "ort-cpu")]), conv_weights(exported[("fp32", "trt")])
    block = simd_block()
    for i, inner in enumerate(INNER):
        padded = -(-inner // block) * block
        w1, w2 = shaped[f"layers.b{i}_conv1"], shaped[f"layers.b{i}_conv2"]
        assert w1.shape[0] == padded and w2.shape[1] == padded
        assert not w1[inner:].any() and not w2[:, inner:].any()
        assert plain[f"layers.b{i}_conv1"].shape[0] == inner and plain[f"layers.b{i}_conv2"].shape[1] == inner
        np.testing.assert_array_equal(w1[:inner], plain[f"layers.b{i}_conv1"])


def test_ort_cpu_int8_file_has_no_relu_between_quantised_ops(exported, tmp_path) -> None:
    """The ReLUs are folded into uint8 quantisation in the file: ONNX Runtime runs every int8 convolution and Add as
    QLinear* with no float ReLU left (the last one, read by the fp32 head layers, is folded into the Add before its
    quantiser); the trt file as written keeps DQ -> Relu -> Q for ONNX Runtime."""
    shaped_path = exported[("int8", "ort-cpu")] / "model.onnx"
    shaped = onnx.load(shaped_path)
    assert any(z.dtype == np.uint8 and not z.any() for z in _zero_points(shaped))
    assert check_scheme(shaped, ORT_CPU) == [] and check_scheme(shaped) != []  # not TensorRT's scheme
    runs = _ops_ort_runs(shaped_path, tmp_path)
    assert runs["Relu"] == 0 and runs["QLinearConv"] == 5 and runs["QLinearAdd"] == 2
    as_trt = _ops_ort_runs(exported[("int8", "trt")] / "model.onnx", tmp_path)
    assert as_trt["Relu"] == 5 and as_trt["QLinearConv"] == 5


def test_trt_and_generic_int8_files_are_symmetric_qdq_and_lint_clean(exported) -> None:
    for runtime in ("trt", "generic"):
        path = exported[("int8", runtime)] / "model.onnx"
        proto = onnx.load(path)
        zero_points = _zero_points(proto)
        assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
        assert check_scheme(proto) == [] and errors(lint_onnx(path)) == []


def test_lint_says_an_ort_cpu_int8_file_is_not_a_tensorrt_graph(exported, capsys) -> None:
    """One leading error naming the form and the re-export, not only a list of mysterious per-node findings."""
    path = exported[("int8", "ort-cpu")] / "model.onnx"
    first = lint_onnx(path)[0]
    assert (first.severity, first.node, first.op) == ("error", "model", "form")
    assert "not a TensorRT graph" in first.message and "--for ort-cpu" in first.message
    assert "5 uint8 quantisers" in first.message and "--for trt" in first.message
    assert main(["lint", str(path)]) == 1
    assert "not a TensorRT graph" in capsys.readouterr().out.splitlines()[0]
    assert errors(lint_onnx(exported[("fp32", "ort-cpu")] / "model.onnx")) == []  # padding only: TensorRT reads it


def test_verify_names_a_file_shaped_for_another_runtime(exported, capsys) -> None:
    assert main(["verify", str(exported[("int8", "trt")] / "model.onnx"), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "verify passed" in out and "note:" in out and "shaped for trt" in out and "--for ort-cpu" in out
    assert main(["verify", str(exported[("int8", "ort-cpu")] / "model.onnx"), "--threads", "1"]) == 0
    assert "note:" not in capsys.readouterr().out


def test_cli_for_flag_and_its_one_line_errors(exported, tmp_path, capsys) -> None:
    model = exported[("fp32", "trt")].parent / "pruned.pt"
    assert main(["export", str(model), "--target", "trt", "--for", "ort-cpu", "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--for ort-cpu cannot be combined with --target trt" in err and len(err.strip().splitlines()) <= 2
    assert main(["export", str(model), "--for", "tensorrt", "-o", str(tmp_path / "y")]) == 2
    assert "--for: unknown runtime 'tensorrt'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_export_of_an_ort_cpu_int8_file_notes_the_form_in_one_line(exported, tmp_path, capsys) -> None:
    """The ort-cpu int8 file is not a TensorRT graph by design: the export says so in one note, not as one warning per
    uint8 quantiser; every finding stays in the report. Written for trt, nothing to say."""
    model = exported[("fp32", "trt")].parent / "pruned.pt"
    args = ["export", str(model), "--precision", "int8", "--max-metric-drop", "20%", "--threads", "1"]
    assert main([*args, "-o", str(tmp_path / "cpu")]) == 0
    lint_lines = [line for line in capsys.readouterr().out.splitlines() if "TensorRT lint" in line]
    assert len(lint_lines) == 1 and lint_lines[0].startswith("note: TensorRT lint: not a TensorRT graph")
    report = json.loads((tmp_path / "cpu" / "export_report.json").read_text())
    findings = len(report["lint"])
    assert findings > 1 and f"({findings - 1} per-node finding(s) it explains in export_report.json)" in lint_lines[0]
    assert main([*args, "--for", "trt", "-o", str(tmp_path / "trt")]) == 0
    assert "TensorRT lint" not in capsys.readouterr().out
