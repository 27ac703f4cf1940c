"""`deploymtl export --target triton`: the repository layout, every config.pbtxt parsed by Triton's own schema with
the values of the batch specification and the model file, and broken repositories caught by `deploymtl serve
--check` with one line each."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from deploymtl.cli.main import main
from deploymtl.formats.parity import load_parity

pytest.importorskip("tritonclient.grpc", reason="needs the [triton] extra (tritonclient[grpc])")
from google.protobuf import text_format  # noqa: E402  (installed with tritonclient)
from tritonclient.grpc import model_config_pb2 as mc  # noqa: E402


def _run(capsys, *args):
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err.strip().splitlines()


def _parse(path):
    return text_format.Parse(path.read_text(), mc.ModelConfig())


@pytest.fixture(scope="module")
def onnx_model(tiny_onnx):
    return tiny_onnx


@pytest.fixture(scope="module")
def repo(onnx_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("triton_repo") / "repo"
    assert main(["export", str(onnx_model), "--target", "triton", "-o", str(out), "--name", "tiny", "-q"]) == 0
    return out


def test_repository_layout_and_config_values(repo, onnx_model):
    d = repo / "tiny"
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file()) == [
        "README.md", "tiny/1/export_report.json", "tiny/1/model.onnx", "tiny/1/model.parity.npz",
        "tiny/1/recipe.json", "tiny/config.pbtxt", "tiny/warmup/image"]
    assert (d / "1" / "model.onnx").read_bytes() == onnx_model.read_bytes()
    cfg = _parse(d / "config.pbtxt")
    assert (cfg.name, cfg.platform, cfg.max_batch_size) == ("tiny", "onnxruntime_onnx", 4)  # batch 1:2:4 -> MAX
    assert [(i.name, mc.DataType.Name(i.data_type), list(i.dims)) for i in cfg.input] == [
        ("image", "TYPE_FP32", [3, 48, 64])]
    assert [(o.name, mc.DataType.Name(o.data_type), list(o.dims)) for o in cfg.output] == [
        ("seg", "TYPE_FP32", [5, 48, 64]), ("depth", "TYPE_FP32", [1, 48, 64]), ("count", "TYPE_FP32", [4])]
    # the recipe's profile section: max batch 4, 5 ms
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 5000
    assert [(g.count, mc.ModelInstanceGroup.Kind.Name(g.kind)) for g in cfg.instance_group] == [(1, "KIND_CPU")]
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert json.loads(params["deploymtl_tasks"]) == ["seg", "depth", "count"]
    pre = json.loads(params["deploymtl_preprocessing"])
    assert (pre["layout"], pre["mean"], pre["std"]) == ("NCHW", [0.5] * 3, [0.25] * 3)
    assert json.loads(params["deploymtl_batch"]) == {"min": 1, "opt": 2, "max": 4}
    assert [(w.batch_size, w.inputs["image"].input_data_file) for w in cfg.model_warmup] == [(1, "image"),
                                                                                              (4, "image")]
    sample = np.fromfile(d / "warmup" / "image", dtype=np.float32).reshape(3, 48, 64)
    assert np.array_equal(sample, load_parity(onnx_model.with_name("model.parity.npz")).inputs[0])
    readme = (repo / "README.md").read_text()
    assert f"tritonserver --model-repository={repo.resolve()}" in readme and "onnxruntime" in readme


def test_check_passes_and_verify_runs_on_the_packaged_model(repo, capsys):
    rc, out, err = _run(capsys, "serve", repo, "--check")
    assert rc == 0 and err == [] and f"{repo / 'tiny'}: valid (onnxruntime_onnx, model.onnx, max_batch_size 4" in out
    assert main(["verify", str(repo / "tiny" / "1" / "model.onnx"), "--threads", "1"]) == 0


def test_the_bundled_tritonserver_accepts_the_config_and_names_its_own_objections(repo, tmp_path):
    pytest.importorskip("pytriton", reason="needs the [serve] extra (its bundled tritonserver)")
    from deploymtl.errors import DeploymtlError
    from deploymtl.serve.tritoncheck import triton_accepts

    assert triton_accepts(repo / "tiny") == "onnxruntime"  # parsed, polled; only the backend is missing here
    bad = tmp_path / "repo"
    shutil.copytree(repo, bad)
    cfg = bad / "tiny" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("preferred_batch_size: [4]", "preferred_batch_size: [4, 9]"))
    with pytest.raises(DeploymtlError, match="dynamic batching preferred size must be <= max batch size for tiny"):
        triton_accepts(bad / "tiny")


def test_a_pruned_model_is_exported_on_the_way_and_other_models_are_kept(repo, onnx_model, tmp_path, capsys):
    out = tmp_path / "repo"
    shutil.copytree(repo, out)
    pruned = onnx_model.parent.parent / "pruned.pt"
    rc, stdout, err = _run(capsys, "export", pruned, "--target", "triton", "-o", out, "--batch", "1:2:2",
                           "--threads", "1", "-q")
    assert rc == 0, err
    cfg = _parse(out / "tiny-export" / "config.pbtxt")  # the recipe's name
    assert cfg.max_batch_size == 2 and list(cfg.dynamic_batching.preferred_batch_size) == [2]
    assert (out / "tiny" / "config.pbtxt").read_bytes() == (repo / "tiny" / "config.pbtxt").read_bytes()
    readme = (out / "README.md").read_text()
    assert "**tiny**" in readme and "**tiny-export**" in readme
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no staging folder left beside it
    # CPU instances: the file is shaped for ONNX Runtime CPU, as Triton's onnxruntime backend runs it
    (packaged,) = (out / "tiny-export").glob("*/model.onnx")
    meta = {p.key: p.value for p in onnx.load(packaged).metadata_props}
    assert json.loads(meta["deploymtl.runtime"])["name"] == "ort-cpu"
    rc, _, err = _run(capsys, "export", onnx_model, "--target", "triton", "-o", tmp_path / "r2", "--for", "trt")
    assert rc == 2 and "--for apply when exporting a pruned.pt" in err[0]


def test_profiled_setting_and_instances_reach_the_config(onnx_model, tmp_path, capsys):
    best = {"max_batch": 2, "max_delay_ms": 1.5}
    profile = tmp_path / "p.json"
    profile.write_text(json.dumps({"artifacts": [{"path": str(onnx_model), "edge": {"settings": {"best": best}}}]}))
    rc, _out, err = _run(capsys, "export", onnx_model, "--target", "triton", "-o", tmp_path / "r", "--profile",
                         profile, "--instances", "2", "--threads", "2", "-q")
    assert rc == 0, err
    (model_dir,) = [p for p in (tmp_path / "r").iterdir() if p.is_dir()]
    cfg = _parse(model_dir / "config.pbtxt")
    assert list(cfg.dynamic_batching.preferred_batch_size) == [2]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 1500
    assert cfg.instance_group[0].count == 2 and cfg.parameters["intra_op_thread_count"].string_value == "2"
    assert "profile" in cfg.parameters["deploymtl_batching_source"].string_value


def test_a_tensorrt_plan_is_packaged_from_its_manifest(onnx_model, tmp_path, capsys):
    """No TensorRT needed: the manifest describes the engine's IO and batch range."""
    from deploymtl.formats.trt_manifest import RuntimeInfo, make_manifest, write_manifest

    src = tmp_path / "trt"
    src.mkdir()
    (src / "model.plan").write_bytes(b"engine bytes")
    shutil.copy(onnx_model.with_name("model.parity.npz"), src)
    io = [{"name": "image", "mode": "input", "dtype": "float32", "shape": [-1, 3, 48, 64]},
          {"name": "seg", "mode": "output", "dtype": "float16", "shape": [-1, 5, 48, 64]}]
    write_manifest(src / "model.plan.json", make_manifest(
        runtime=RuntimeInfo("10.3.0", (8, 6), "A10"), precision="fp16", batch={"min": 1, "opt": 2, "max": 4},
        profile={"image": {"min": [1, 3, 48, 64], "opt": [2, 3, 48, 64], "max": [4, 3, 48, 64]}}, io=io,
        tasks=["seg"], onnx_path="model.onnx", onnx_sha256="0", engine_name="model.plan", engine_sha256="0"))
    (src / "export_report.json").write_text(json.dumps({"artifact": "model.plan", "passed": True, "tasks": ["seg"]}))
    rc, _out, err = _run(capsys, "export", src / "model.plan", "--target", "triton", "-o", tmp_path / "r",
                         "--name", "eng", "-q")
    assert rc == 0, err
    cfg = _parse(tmp_path / "r" / "eng" / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan" and mc.ModelInstanceGroup.Kind.Name(cfg.instance_group[0].kind) == \
        "KIND_GPU"
    assert [(o.name, mc.DataType.Name(o.data_type), list(o.dims)) for o in cfg.output] == [
        ("seg", "TYPE_FP16", [5, 48, 64])]
    assert (tmp_path / "r" / "eng" / "1" / "model.plan.json").is_file()
    rc, _out, err = _run(capsys, "export", src / "model.plan", "--target", "triton", "-o", tmp_path / "r2",
                         "--instance-kind", "cpu")
    assert rc == 2 and err == ["error: --instance-kind cpu: a TensorRT plan runs only on a GPU (use --instance-kind "
                               "gpu)"]


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: t.replace("dims: [5, 48, 64]", "dims: [5, 48, 60]"),
     "output 'seg' dims [5, 48, 60] differ from model.onnx's [5, 48, 64]"),
    (lambda t: t.replace("max_batch_size: 4", "max_batch_size: 4\nmax_batchsize: 4"),
     'Message type "inference.ModelConfig" has no field named "max_batchsize"'),
    (lambda t: t.replace("max_batch_size: 4", "max_batch_size: 8"),
     "max_batch_size 8 exceeds the maximum batch 4 of model.onnx"),
    (lambda t: t.replace("TYPE_FP32\n  dims: [1, 48, 64]", "TYPE_FP16\n  dims: [1, 48, 64]"),
     "output 'depth' has data type float16, model.onnx has float32"),
    (lambda t: t.replace('platform: "onnxruntime_onnx"', 'platform: "onnxruntime_onx"'),
     "platform 'onnxruntime_onx' is not one deploymtl writes"),
    (lambda t: t.replace('name: "tiny"', 'name: "other"'), "name 'other' differs from its folder 'tiny'"),
    (lambda t: t.replace("preferred_batch_size: [4]", "preferred_batch_size: [4, 6]"),
     "preferred_batch_size [6] outside 1..4"),
    (lambda t: t.replace("TYPE_FP32", "TYPE_FLOAT32", 1),
     'Enum type "inference.DataType" has no value named TYPE_FLOAT32'),
    (lambda t: t.replace('name: "count"', 'name: "counts"'), "outputs ['seg', 'depth', 'counts'] differ"),
])
def test_broken_configs_are_one_line_errors(repo, tmp_path, capsys, edit, message):
    bad = tmp_path / "repo"
    shutil.copytree(repo, bad)
    cfg = bad / "tiny" / "config.pbtxt"
    cfg.write_text(edit(cfg.read_text()))
    rc, _out, err = _run(capsys, "serve", bad, "--check")
    assert rc == 2 and len(err) == 1 and message in err[0] and str(cfg) in err[0]


def test_broken_files_are_one_line_errors(repo, tmp_path, capsys):
    bad = tmp_path / "repo"
    shutil.copytree(repo, bad)
    (bad / "tiny" / "warmup" / "image").write_bytes(b"\0" * 12)
    rc, _out, err = _run(capsys, "serve", bad, "--check")
    assert rc == 2 and len(err) == 1 and "warmup/image is 12 bytes (expected 36864 bytes" in err[0]
    (bad / "tiny" / "1" / "model.onnx").unlink()
    rc, _out, err = _run(capsys, "serve", bad, "--check")
    assert rc == 2 and err == [f"error: {bad / 'tiny' / '1' / 'model.onnx'} not found (platform onnxruntime_onnx "
                               "loads model.onnx from the highest version folder)"]


def test_unverified_sources_are_refused(onnx_model, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(onnx_model.parent, src)
    report = json.loads((src / "export_report.json").read_text())
    (src / "export_report.json").write_text(json.dumps(report | {"passed": False}))
    rc, _out, err = _run(capsys, "export", src / "model.onnx", "--target", "triton", "-o", tmp_path / "r")
    assert rc == 2 and len(err) == 1 and "failed its export verification" in err[0]
    (src / "export_report.json").unlink()
    rc, _out, err = _run(capsys, "export", src / "model.onnx", "--target", "triton", "-o", tmp_path / "r")
    assert rc == 2 and len(err) == 1 and "has no export_report.json beside it" in err[0]
    rc, _out, err = _run(capsys, "export", src / "model.onnx", "--target", "triton", "-o", tmp_path / "r",
                         "--ort-trt", "fp16")
    assert rc == 2 and err == ["error: --ort-trt needs an ONNX model on GPU instances (add --instance-kind gpu)"]
    assert not (tmp_path / "r").exists()
