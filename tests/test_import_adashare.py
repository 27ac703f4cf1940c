"""`deploymtl import adashare`: public-layout checkpoints and policy pickles (built by `adashare_public.py`) import,
prune into a tree, export and verify, reproducing the public inference; bad input is one line, exit 2, nothing
written; a malicious policy pickle is refused without running anything.

ResNet-18 2-task (seg, sn) and ResNet-34 3-task (seg, sn, depth) layouts at width 4, ASPP hidden 8, 64x96 input.
The public inference is the source supernet's `public_forward` (one pass per task, every block, both branches
blended): what the public code computes (docs/methods.md). `test_tiny_public_reference` checks the same chain
against outputs of the public code itself (tests/data/adashare_public/).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from adashare_public import (
    CAFFE,
    POLICIES,
    caffe_input,
    policy_tensor,
    public_state,
    source_supernet,
    write_checkpoint,
    write_policy,
    write_yaml,
)
from reliability_inputs_fixtures import RunsCommand, TouchesFile

from deploymtl.cli.main import main
from deploymtl.formats.onnx_metadata import from_props
from deploymtl.formats.static import load_static
from deploymtl.importers.adashare import ImportOptions, import_adashare
from deploymtl.io import load_torch
from deploymtl.models.checkpoint import load_supernet
from deploymtl.runtime import load

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

H, W = 64, 96
R18_TASKS = [("seg", 7), ("sn", 3)]
R34_TASKS = [("seg", 7), ("sn", 3), ("depth", 1)]
DATA = Path(__file__).parent / "data" / "adashare_public"


def _rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(np.asarray(ours, np.float64) - ref).max() / np.abs(ref).max())


def _public(model, x: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        return {k: v.double().numpy() for k, v in model.public_forward(torch.from_numpy(x)).items()}


@pytest.fixture(scope="module")
def r18(tmp_path_factory) -> dict:
    """ResNet-18 2-task public files: zip checkpoint, policy pickle, YAML."""
    root = tmp_path_factory.mktemp("r18")
    model = source_supernet("resnet18", R18_TASKS)
    return {"model": model, "root": root,
            "ckpt": write_checkpoint(root / "retrain000_model.pth.tar", public_state(model, "resnet18")),
            "policy": write_policy(root / "policy.pickle", POLICIES["resnet18"]),
            "yaml": write_yaml(root / "nyu_v2_2task.yml", "resnet18", R18_TASKS)}


@pytest.fixture(scope="module")
def r34(tmp_path_factory) -> dict:
    """ResNet-34 3-task public files: legacy-format checkpoint with cuda-tagged storages, policy pickle."""
    root = tmp_path_factory.mktemp("r34")
    model = source_supernet("resnet34", R34_TASKS, seed=1)
    return {"model": model, "root": root,
            "ckpt": write_checkpoint(root / "model.legacy.pth.tar", public_state(model, "resnet34"), legacy=True,
                                     cuda=True),
            "policy": write_policy(root / "policy.pickle", POLICIES["resnet34"])}


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("layout", ["r18", "r34"])
def test_import_prune_export_verify_reproduce_the_public_inference(layout, request, tmp_path, capsys) -> None:
    case = request.getfixturevalue(layout)
    source = case["model"]
    arch = ["--config", case["yaml"]] if layout == "r18" else ["--backbone", "resnet34", "--tasks",
                                                               "seg:7,sn:3,depth:1"]
    imp, pruned, exported = tmp_path / "imp", tmp_path / "pruned", tmp_path / "onnx"
    code, out, err = _run(capsys, "import", "adashare", case["ckpt"], "--policy", case["policy"], *arch,
                          "--input-size", f"{H}x{W}", "--latency-repeats", "1", "-o", imp)
    assert code == 0, err
    assert "policy (rule imported" in out and "Public inference vs deployed tree" in out
    # the decisions are exactly the policy file's, under the explicit rule
    model, ckpt = load_supernet(imp / "supernet.pt")
    rows = POLICIES["resnet34" if layout == "r34" else "resnet18"]
    assert ckpt["decisions"] == {"rule": "imported", "blocks": model.block_names,
                                 "policy": dict(zip(model.task_names, rows, strict=True))}
    assert model.decisions() == ckpt["decisions"]  # no logits or probabilities invented
    assert ckpt["recipe"]["data"]["targets"] is False and ckpt["recipe"]["data"]["source"] == "synthetic"
    pixels, x = caffe_input(2, H, W)
    public = _public(source, x)
    with torch.no_grad():  # the imported supernet's own public inference: bit-identical to the source's
        mine = model.public_forward(torch.from_numpy(x))
    assert all(torch.equal(mine[t].double(), torch.from_numpy(public[t])) for t in public)
    assert public["seg"].shape == (2, 7, 9, 13)  # raw, at feature resolution (output stride 8)
    report = json.loads((imp / "import_report.json").read_text())
    flops = report["cost"]["flops"]
    assert flops["deployed"]["total"] < flops["public"]["total"] and 0 < report["cost"]["flops_ratio"] < 1
    assert report["cost"]["latency_ms"]["repeats"] == 1 and report["cost"]["latency_ms"]["public"] > 0
    ignored = " ".join(i["what"] for i in report["ignored"])
    assert "checkpoint['weights']" in ignored and "task1_logits" in ignored
    assert report["policy"]["shared_prefix"] == (3 if layout == "r18" else 2)
    # prune builds the shared-prefix tree, export and verify pass, and both match the public inference
    code, _, err = _run(capsys, "prune", imp / "supernet.pt", "-o", pruned)
    assert code == 0, err
    prune_report = json.loads((pruned / "prune_report.json").read_text())
    assert prune_report["summary"]["shared_prefix_all"] == report["policy"]["shared_prefix"]
    assert prune_report["flops"]["after"]["total"] == flops["deployed"]["total"]
    assert prune_report["flops"]["before"]["total"] == flops["public"]["total"]
    art = load_static(pruned / "pruned.pt")
    assert art.input["channel_order"] == "BGR" and art.input["scale"] == 1.0 and art.input["dtype"] == "float32"
    assert art.input["mean"] == list(CAFFE) and art.input["std"] == [1.0, 1.0, 1.0]
    with torch.inference_mode():
        static = art.model.infer(torch.from_numpy(x))
    code, out, err = _run(capsys, "export", pruned / "pruned.pt", "--batch", "1:2:2", "-o", exported)
    assert code == 0, err
    assert main(["verify", str(exported / "model.onnx")]) == 0
    session = load(exported / "model.onnx")
    onnx_out = session.infer(x)
    for t in public:
        assert _rel_err(static[t].numpy(), public[t]) <= 1e-4
        assert _rel_err(onnx_out[t], public[t]) <= 1e-4
    meta = from_props({p.key: p.value for p in onnx.load(exported / "model.onnx").metadata_props})
    assert {k: meta["input"][k] for k in ("channel_order", "scale", "mean", "std", "dtype", "preprocessing")} == {
        "channel_order": "BGR", "scale": 1.0, "mean": list(CAFFE), "std": [1.0, 1.0, 1.0], "dtype": "float32",
        "preprocessing": "caller"}
    assert [t["resolution"] for t in meta["tasks"]] == ["features"] * len(public)


def test_inspect_shows_the_savings_against_the_public_inference(r18, tmp_path, capsys) -> None:
    import_adashare(r18["ckpt"], r18["policy"], tmp_path / "imp",
                    ImportOptions(config=r18["yaml"], input_size=(H, W), latency_repeats=1))
    code, out, err = _run(capsys, "inspect", tmp_path / "imp" / "supernet.pt", "-o", tmp_path / "inspect")
    assert code == 0, err
    report = json.loads((tmp_path / "imp" / "import_report.json").read_text())
    c = report["cost"]
    assert "imported from github sunxm2357/AdaShare: 'before' is the public code's inference" in out
    assert f"{c['flops_ratio']:.3f}x the FLOPs" in out and "ms" in out
    data = json.loads((tmp_path / "inspect" / "inspect.json").read_text())
    assert data["imported"]["cost"]["flops"] == c["flops"]


def test_run_starts_from_an_imported_supernet(r18, tmp_path) -> None:
    """`deploymtl run supernet.pt`: no train stage; the embedded recipe drives prune (and the stages after it)."""
    from deploymtl.formats.supernet import read_supernet
    from deploymtl.pipeline import run_pipeline

    import_adashare(r18["ckpt"], r18["policy"], tmp_path / "imp",
                    ImportOptions(config=r18["yaml"], input_size=(H, W), latency_repeats=0))
    supernet = tmp_path / "imp" / "supernet.pt"
    result = run_pipeline(read_supernet(supernet)[1], tmp_path / "run", stages=("train", "prune"), supernet=supernet,
                          log=lambda _: None)
    assert [s.name for s in result.stages] == ["prune"] and not (tmp_path / "run" / "train").exists()
    assert result.stages[0].report["passed"] is True and (tmp_path / "run" / "prune" / "pruned.pt").is_file()


def test_checkpoint_forms_import_to_the_same_weights(r18, tmp_path) -> None:
    """Zip and legacy torch formats, CPU and cuda-tagged storages (files saved on a GPU): one supernet."""
    state = public_state(r18["model"], "resnet18")
    states = []
    for legacy in (False, True):
        for cuda in (False, True):
            ckpt = write_checkpoint(tmp_path / f"m{legacy}{cuda}.pth.tar", state, legacy=legacy, cuda=cuda)
            out = tmp_path / f"imp{legacy}{cuda}"
            report = import_adashare(ckpt, r18["policy"], out, ImportOptions(config=r18["yaml"], input_size=(H, W),
                                                                             latency_repeats=0))
            assert report["source"]["checkpoint"]["format"] == ("legacy" if legacy else "zip")
            assert report["cost"]["latency_ms"] is None
            states.append(load_torch(out / "supernet.pt")["state_dict"])
    assert all(s.keys() == states[0].keys() and all(torch.equal(s[k], states[0][k]) for k in s) for s in states)


def test_a_task_that_executes_no_block_is_imported_and_said_so(tmp_path, capsys) -> None:
    rows = [[1, 1, 1, 0, 0, 1, 1, 1], [0] * 8]
    model = source_supernet("resnet18", R18_TASKS, policy=rows)
    ckpt = write_checkpoint(tmp_path / "m.pth.tar", public_state(model, "resnet18"))
    policy = write_policy(tmp_path / "p.pickle", rows)
    code, out, err = _run(capsys, "import", "adashare", ckpt, "--policy", policy, "--backbone", "resnet18",
                          "--tasks", "seg:7,sn:3", "--input-size", f"{H}x{W}", "--latency-repeats", "0",
                          "-o", tmp_path / "imp")
    assert code == 0, err
    assert "task sn executes no block: it runs the stem, the shortcuts s1b0, s2b0, s3b0" in out
    assert main(["prune", str(tmp_path / "imp" / "supernet.pt"), "-o", str(tmp_path / "pruned")]) == 0
    _, x = caffe_input(1, H, W)
    with torch.inference_mode():
        static = load_static(tmp_path / "pruned" / "pruned.pt").model.infer(torch.from_numpy(x))
    assert _rel_err(static["sn"].numpy(), _public(model, x)["sn"]) <= 1e-4


def test_baked_preprocessing_takes_raw_bgr_pixels(r18, tmp_path, capsys) -> None:
    """--bake-preprocessing on import is carried into export: the ONNX input is uint8 (N, 3, H, W) BGR and the graph
    subtracts the Caffe means; verify and the runtime feed it raw pixels."""
    import_adashare(r18["ckpt"], r18["policy"], tmp_path / "imp",
                    ImportOptions(config=r18["yaml"], input_size=(H, W), latency_repeats=0, bake_preprocessing=True))
    code, out, err = _run(capsys, "export", tmp_path / "imp" / "supernet.pt", "--batch", "1:2:2",
                          "-o", tmp_path / "onnx")
    assert code == 0, err
    proto = onnx.load(tmp_path / "onnx" / "model.onnx")
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [n.op_type for n in proto.graph.node[:2]] == ["Cast", "Add"]
    meta = from_props({p.key: p.value for p in proto.metadata_props})["input"]
    assert (meta["dtype"], meta["preprocessing"], meta["channel_order"]) == ("uint8", "graph", "BGR")
    assert main(["verify", str(tmp_path / "onnx" / "model.onnx")]) == 0
    report = json.loads((tmp_path / "onnx" / "export_report.json").read_text())
    assert report["inputs"]["dtype"] == "uint8" and report["options"]["bake_preprocessing"] is True
    pixels, x = caffe_input(2, H, W, seed=3)
    session = load(tmp_path / "onnx" / "model.onnx")
    assert session.input_spec.dtype == "uint8"
    out = session.infer(pixels)
    public = _public(r18["model"], x)
    assert all(_rel_err(out[t], public[t]) <= 1e-4 for t in public)
    with pytest.raises(Exception, match="input dtype is float32"):
        session.infer(x)
    # --no-bake-preprocessing overrides the recipe
    assert main(["export", str(tmp_path / "onnx" / "pruned" / "pruned.pt"), "--no-bake-preprocessing",
                 "--no-simplify", "--batch", "1:1:1", "-o", str(tmp_path / "plain")]) == 0
    plain = onnx.load(tmp_path / "plain" / "model.onnx")
    assert plain.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_reduced_precision_says_the_metric_gate_was_skipped(r18, tmp_path, capsys) -> None:
    """No dataset: parity runs on synthetic images, and the task-metric gate is skipped with the reason, never
    scored against labels that do not exist."""
    import_adashare(r18["ckpt"], r18["policy"], tmp_path / "imp",
                    ImportOptions(config=r18["yaml"], input_size=(H, W), latency_repeats=0))
    code, out, err = _run(capsys, "export", tmp_path / "imp" / "supernet.pt", "--precision", "fp16", "--no-simplify",
                          "--batch", "1:1:2", "-o", tmp_path / "fp16")
    report = json.loads((tmp_path / "fp16" / "export_report.json").read_text())
    gate = report["metrics"]
    assert gate["skipped"] is True and gate["passed"] is None
    assert "synthetic images, no targets" in gate["reason"] and "seg, sn" in gate["reason"]
    assert "metrics: skipped" in out
    assert code == (0 if report["passed"] else 1), err


@pytest.mark.parametrize("tag, layout, tasks", [("r18_2task", "resnet18", [("seg", 40), ("sn", 3)]),
                                                ("r34_3task", "resnet34", [("seg", 40), ("sn", 3), ("depth", 1)])])
def test_tiny_public_reference(tag, layout, tasks, tmp_path) -> None:
    """Files written by the public code itself (tests/data/adashare_public/README.md): the imported and pruned model
    reproduces the public code's outputs to fp32 tolerance, raw pixels fed through the recorded preprocessing."""
    yml = write_yaml(tmp_path / "config.yml", layout, tasks)
    import_adashare(DATA / f"{tag}_model.pth.tar", DATA / f"{tag}_policy.pickle", tmp_path / "imp",
                    ImportOptions(config=yml, input_size=(H, W), latency_repeats=0))
    assert main(["prune", str(tmp_path / "imp" / "supernet.pt"), "-o", str(tmp_path / "pruned")]) == 0
    ref = np.load(DATA / f"{tag}_reference.npz", allow_pickle=False)
    art = load_static(tmp_path / "pruned" / "pruned.pt")
    i = art.input
    x = (ref["pixels_bgr"].astype(np.float32) * i["scale"] - np.float32(i["mean"]).reshape(1, 3, 1, 1)) \
        / np.float32(i["std"]).reshape(1, 3, 1, 1)
    with torch.inference_mode():
        out = art.model.infer(torch.from_numpy(x.astype(np.float32)))
    for t, (name, _) in enumerate(tasks, start=1):
        public = ref[f"out_task{t}_{name}"].astype(np.float64)
        assert out[name].shape == public.shape
        assert _rel_err(out[name].numpy(), public) <= 1e-4


# -- the policy pickle: only tensors, read without running anything -------------------------------------------------
def _evil_storage(marker: Path) -> bytes:
    """A policy pickle whose storage bytes are a legacy torch file holding a command: the inner load must refuse."""
    import io

    inner = io.BytesIO()
    torch.save(RunsCommand(marker), inner, _use_new_zipfile_serialization=False)

    class Storage:
        def __reduce__(self):
            return torch.storage._load_from_bytes, (inner.getvalue(),)

    return pickle.dumps({"task1_policy": Storage()})


def _policy(tmp: Path, name: str, payload, protocol: int = pickle.HIGHEST_PROTOCOL) -> Path:
    path = tmp / name
    path.write_bytes(payload if isinstance(payload, bytes) else pickle.dumps(payload, protocol=protocol))
    return path


@pytest.mark.parametrize("payload, words", [
    (lambda m: {"task1_policy": RunsCommand(m)}, ["refers to posix.system", "nothing it names was run"]),
    (lambda m: {"task1_policy": TouchesFile(m)}, ["refers to pathlib.Path.touch"]),
    (lambda m: [RunsCommand(m)], ["refers to posix.system"]),
    (_evil_storage, ["inner storage is not weights-only"]),
], ids=["os-system", "method", "list", "inner-storage"])
def test_a_malicious_policy_pickle_is_refused_unrun(payload, words, r18, tmp_path, capsys) -> None:
    marker = tmp_path / "PWNED"
    evil = _policy(tmp_path, "policy.pickle", payload(marker))
    code, out, err = _run(capsys, "import", "adashare", r18["ckpt"], "--policy", evil, "--config", r18["yaml"],
                          "-o", tmp_path / "out")
    assert code == 2 and err.count("\n") == 1, err
    assert all(w in err for w in words), err
    assert not marker.exists(), "the pickle was executed"
    assert not (tmp_path / "out").exists()


# -- bad input: one line, exit 2, nothing written ---------------------------------------------------------------
def _mutated_ckpt(case: dict, tmp: Path, name: str, mutate) -> Path:
    state = public_state(case["model"], "resnet18")
    data = {"mtl-net": state}
    mutate(data)
    path = tmp / name
    torch.save(data, path)
    return path


def _rows(n: int, rows: int = 8, value=None) -> dict:
    return {f"task{t + 1}_policy": value if value is not None else policy_tensor([1] * rows) for t in range(n)}


BAD = [  # (name, how the argv differs from a good import, words of the message)
    ("no-mtl-net", lambda c, t: {"ckpt": _mutated_ckpt(c, t, "a.pth.tar", lambda d: d.update({"net": d.pop(
        "mtl-net")}))}, ["has no 'mtl-net' entry", "'net'"]),
    ("mtl-net-not-tensors", lambda c, t: {"ckpt": _mutated_ckpt(c, t, "b.pth.tar", lambda d: d["mtl-net"].update(
        {"backbone.conv1.weight": [1.0]}))}, ["'mtl-net'['backbone.conv1.weight'] is a list", "not a dense tensor"]),
    ("checkpoint-missing", lambda c, t: {"ckpt": t / "none.pth.tar"}, ["AdaShare checkpoint not found"]),
    ("checkpoint-evil", lambda c, t: {"ckpt": _policy(t, "evil.pth.tar", {"mtl-net": RunsCommand(t / "PWNED")},
                                                      protocol=2)},
     ["holds pickled Python objects", "refusing"]),
    ("depth-vs-config", lambda c, t: {"arch": ["--backbone", "resnet34", "--tasks", "seg:7,sn:3"]},
     ["does not match the architecture (resnet34", "missing ['backbone.blocks.0.2.conv1.weight'"]),
    ("classes-vs-config", lambda c, t: {"arch": ["--backbone", "resnet18", "--tasks", "seg:13,sn:3"]},
     ["task1_fc1_c0.conv3.weight is [7, 8, 1, 1], expected [13, 8, 1, 1]"]),
    ("tasks-vs-config", lambda c, t: {"arch": ["--backbone", "resnet18", "--tasks", "seg:7"]},
     ["unexpected ['task2_fc1_c0.conv1.weight'"]),
    ("extra-key", lambda c, t: {"ckpt": _mutated_ckpt(c, t, "c.pth.tar", lambda d: d["mtl-net"].update(
        {"aux.weight": torch.zeros(1)}))}, ["unexpected ['aux.weight']"]),
    ("instance-specific", lambda c, t: {"ckpt": _mutated_ckpt(c, t, "d.pth.tar", lambda d: d["mtl-net"].update(
        {"policynet.fc.weight": torch.zeros(1)}))}, ["instance-specific policy network"]),
    ("bottleneck", lambda c, t: {"ckpt": _mutated_ckpt(c, t, "e.pth.tar", lambda d: d["mtl-net"].update(
        {"backbone.blocks.0.0.conv3.weight": torch.zeros(1)}))}, ["Bottleneck blocks"]),
    ("policy-rows", lambda c, t: {"policy": write_policy(t / "p.pickle", [[1] * 7, [1] * 7])},
     ["task1_policy has shape [7, 2], the architecture needs [8, 2]"]),
    ("policy-tasks", lambda c, t: {"policy": write_policy(t / "p.pickle", [[1] * 8])},
     ["has policies for tasks [1], the config has 2 task(s)", "task2_policy"]),
    ("policy-key", lambda c, t: {"policy": write_policy(t / "p.pickle", {"seg": policy_tensor([1] * 8)})},
     ["key 'seg' is not task<t>_policy"]),
    ("policy-soft", lambda c, t: {"policy": write_policy(t / "p.pickle", _rows(2, value=torch.full((8, 2), 0.5)))},
     ["row 0 is [0.5, 0.5], not a hard decision"]),
    ("policy-not-tensor", lambda c, t: {"policy": write_policy(t / "p.pickle", _rows(2, value="execute"))},
     ["task1_policy is a str, not a tensor"]),
    ("policy-list", lambda c, t: {"policy": _policy(t, "p.pickle", [1, 2])},
     ["holds a list, not a dict of tensors"]),
    ("policy-empty", lambda c, t: {"policy": _policy(t, "p.pickle", b"")}, ["policy file", "is empty"]),
    ("policy-truncated", lambda c, t: {"policy": _policy(t, "p.pickle", pickle.dumps(_rows(2))[:300])},
     ["is not a readable policy pickle (pickle data was truncated)"]),
    ("policy-is-a-checkpoint", lambda c, t: {"policy": c["ckpt"]}, ["is not a readable policy pickle"]),
    ("no-architecture", lambda c, t: {"arch": []}, ["no architecture: the checkpoint does not store it"]),
    ("config-and-flags", lambda c, t: {"arch": ["--config", c["yaml"], "--backbone", "resnet18"]}, ["both given"]),
    ("config-backbone", lambda c, t: {"arch": ["--config", write_yaml(t / "y.yml", "resnet18", R18_TASKS,
                                                                      backbone="ResNet101")]},
     ["backbone 'ResNet101' is not supported"]),
    ("config-task-kind", lambda c, t: {"arch": ["--config", write_yaml(t / "y.yml", "resnet18", [("seg", 7),
                                                                                                ("edge", 1)])]},
     ["task 'edge' has no deploymtl kind"]),
    ("config-policy-model", lambda c, t: {"arch": ["--config", write_yaml(t / "y.yml", "resnet18", R18_TASKS,
                                                                          policy_model="instance-specific")]},
     ["policy_model 'instance-specific' is not supported"]),
    ("config-python-tag", lambda c, t: {"arch": ["--config", _policy(t, "y.yml", b"backbone: !!python/object/apply:"
                                                                             b"os.system ['touch PWNED']\n")]},
     ["is not a readable plain YAML file"]),
    ("tasks-syntax", lambda c, t: {"arch": ["--backbone", "resnet18", "--tasks", "seg,sn"]},
     ["--tasks 'seg' is not NAME:CLASSES"]),
    ("input-size", lambda c, t: {"extra": ["--input-size", "big"]}, ["--input-size 'big'", "HEIGHTxWIDTH"]),
]


@pytest.mark.parametrize("name, change, words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_exit_2_nothing_written(name, change, words, r18, tmp_path, capsys,
                                                      monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = {"ckpt": r18["ckpt"], "policy": r18["policy"], "arch": ["--config", r18["yaml"]], "extra": []}
    args |= change(r18, tmp_path)
    code, out, err = _run(capsys, "import", "adashare", args["ckpt"], "--policy", args["policy"], *args["arch"],
                          *args["extra"], "-o", tmp_path / "out")
    lines = [ln for ln in err.splitlines() if ln]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(w in lines[0] for w in words), lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "PWNED").exists()
    assert not list(tmp_path.glob(".out.*"))  # no staging folder left behind
