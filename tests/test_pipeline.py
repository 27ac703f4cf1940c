"""`deploymtl run` end to end on a minimal recipe: every artifact and report exists and passes; a second run skips
every stage; a failing stage stops the run with its exit code and keeps the artifacts of the stages before it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from deploymtl.cli.main import main

RECIPE = Path(__file__).parent / "data" / "minimal_adashare.yaml"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    assert main(["run", str(RECIPE), "-o", str(out), "-q"]) == 0
    return out


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_every_stage_writes_its_artifacts_and_passes(run_dir: Path) -> None:
    for rel in ("train/supernet.pt", "train/train_report.json", "train/recipe.resolved.json",
                "prune/pruned.pt", "prune/plan.json", "prune/prune_report.json",
                "export/fp32/model.onnx", "export/fp32/export_report.json", "export/fp32/model.parity.npz",
                "export/int8/model.onnx", "export/int8/export_report.json",
                "profile/profile.json", "profile/profile.md", "profile/latency_vs_batch.png"):
        assert (run_dir / rel).is_file(), rel
    assert _json(run_dir / "prune/prune_report.json")["passed"] is True
    for prec in ("fp32", "int8"):
        report = _json(run_dir / f"export/{prec}/export_report.json")
        assert report["passed"] is True and report["precision"] == prec
        assert set(report["outputs"]) == {"seg", "depth"}
    profile = _json(run_dir / "profile/profile.json")
    assert len(profile["artifacts"]) == 4  # masked supernet (reference), pruned.pt, fp32 and int8 ONNX
    for stage in ("train", "prune", "export/fp32", "export/int8", "profile"):
        assert _json(run_dir / stage / "stage.json")["fingerprint"]


def test_second_run_skips_up_to_date_stages(run_dir: Path, capsys) -> None:
    before = (run_dir / "prune/pruned.pt").stat().st_mtime_ns
    assert main(["run", str(RECIPE), "-o", str(run_dir), "-q"]) == 0
    err = capsys.readouterr().err
    assert err.count("up to date, skipped") == 5
    assert (run_dir / "prune/pruned.pt").stat().st_mtime_ns == before


def test_changed_artifact_reruns_from_that_stage(run_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "copy"
    shutil.copytree(run_dir, out)
    (out / "export/int8/model.onnx").write_bytes(b"tampered")
    assert main(["run", str(RECIPE), "-o", str(out), "-q"]) == 0
    err = capsys.readouterr().err
    assert "[prune] up to date" in err and "[export:onnx:fp32] up to date" in err
    assert "[export:onnx:int8] running" in err
    # the re-export restores the exact bytes that were profiled, so the profile (keyed by artifact hashes) stands
    assert (out / "export/int8/model.onnx").read_bytes() == (run_dir / "export/int8/model.onnx").read_bytes()
    assert "[profile] up to date" in err


def test_failing_stage_stops_with_its_exit_code_and_keeps_earlier_artifacts(run_dir: Path, tmp_path: Path,
                                                                            capsys) -> None:
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["prune"]["atol"] = 1e-30  # parity cannot pass: the prune stage must fail with exit 1
    recipe["prune"]["rtol"] = 0.0
    path = tmp_path / "strict.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    shutil.copytree(run_dir / "train", out / "train")  # the train stage is up to date: reuse it
    code = main(["run", str(path), "-o", str(out), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("error: ") and "parity" in err[-1].lower()
    assert (out / "train/supernet.pt").is_file()
    assert _json(out / "prune/prune_report.json")["passed"] is False
    assert not (out / "export").exists()


def test_demo_summary_reads_its_figures_from_the_run(run_dir: Path) -> None:
    from deploymtl import demo
    from deploymtl.config import load_recipe
    from deploymtl.pipeline import run_pipeline

    result = run_pipeline(load_recipe(RECIPE), run_dir, progress=False, log=lambda _m: None)  # all up to date
    fam = demo._family_summary(result)
    prune = _json(run_dir / "prune/prune_report.json")
    assert fam["params"]["after"] == prune["params"]["after"]["total"]
    assert fam["flops"]["before"] == prune["flops"]["before"]["total"] > fam["flops"]["after"]
    # the static model and the fp32 ONNX compute what the supernet computes: identical metrics
    for task, metrics in fam["metrics"]["supernet"].items():
        assert fam["metrics"]["static"][task] == pytest.approx(metrics, rel=1e-4)
        assert fam["metrics"]["onnx-fp32"][task] == pytest.approx(metrics, rel=1e-4)
    assert set(fam["metrics"]) >= {"untrained", "supernet", "static", "onnx-fp32", "onnx-int8"}
    summary = {"families": [fam], "failed": [], "tensorrt": False}
    md, page = demo.render_markdown(summary), demo.render_html(summary)
    assert f"| params | {prune['params']['before']['total']} |" in md
    assert page.count("data:image/png;base64,") == len(fam["pictures"]) >= 4


def test_static_graph_shares_a_layer_emitted_twice() -> None:
    import torch
    from torch import nn

    from deploymtl.ir import build_static
    from deploymtl.surgery.builder import GraphBuilder

    conv, bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4).eval()
    b = GraphBuilder()
    left = b.conv_module("left", "image", conv, bn)
    right = b.conv_module("right", b.relu("r", "image"), conv, bn)  # same layer on another branch
    b.output("a", b.add("sum", left, right))
    model = b.build()
    assert sum(p.numel() for p in model.parameters()) == 4 * 3 * 9 + 4  # stored once
    assert [n.get("shares") for n in model.spec["nodes"]] == [None, None, "left", None]
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = bn(conv(x)) + bn(conv(torch.relu(x)))
        torch.testing.assert_close(model(x)["a"], expected, atol=1e-5, rtol=1e-5)
        rebuilt = build_static(model.spec, model.state_dict())
        torch.testing.assert_close(rebuilt(x)["a"], expected, atol=1e-5, rtol=1e-5)
