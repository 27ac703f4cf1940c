"""`deploymtl profile`: report files, their stable keys and plots; bad input -> one line, exit 2, nothing written."""

from __future__ import annotations

import json

import pytest

from deploymtl.cli.main import main
from deploymtl.runtime.toy import toy_onnx, toy_static

FAST = ["--threads", "1", "--duration", "0.02", "--edge-duration", "1", "--no-memory", "-q"]


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    return {"wide": toy_static(d / "wide" / "pruned.pt", width=16), "onnx": toy_onnx(d / "fp32" / "model.onnx"),
            "seg": toy_onnx(d / "seg" / "model.onnx", tasks=["seg"])}


def test_profile_writes_json_markdown_and_plots(tmp_path, toys, capsys):
    out = tmp_path / "report"
    rc = main(["profile", str(toys["wide"]), str(toys["onnx"]), str(toys["seg"]), "-o", str(out),
               "--batch-sizes", "1,2", "--streams", "2", "--fps", "30", "--max-batch", "2", "--max-delay-ms", "4",
               "--budget-ms", "30", *FAST])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    for name in ("profile.json", "profile.md", "latency_vs_batch.png", "edge_latency_cdf.png", "flops_vs_latency.png"):
        assert (out / name).is_file()
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    p = json.loads((out / "profile.json").read_text())
    assert list(p) == ["format", "deploymtl_version", "options", "environment", "artifacts", "comparison", "warnings"]
    assert p["format"] == "deploymtl.profile/1" and p["options"]["batch_sizes"] == [1, 2]
    names = [a["name"] for a in p["artifacts"]]
    assert names == ["pruned.pt", "fp32/model.onnx", "seg/model.onnx"]  # repeated file names get their folder
    for a in p["artifacts"]:
        assert [r["batch"] for r in a["sweep"]] == [1, 2]
        assert set(a["sweep"][0]["latency_ms"]) >= {"min_ms", "mean_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms"}
        e = a["edge"]
        assert e["scenario"]["streams"] == 2 and e["scenario"]["max_batch"] == 2
        assert e["result"]["frames"] == 60 and len(e["result"]["cdf_ms"]) == 101
        assert sum(int(k) * v for k, v in e["result"]["batch_histogram"].items()) == e["result"]["completed"]
        assert e["settings"]["budget_ms"] == 30 and a["cost"]["flops"] > 0 and a["size_bytes"] > 0
    cmp = p["comparison"]
    assert cmp["reference"] == "pruned.pt"  # the most FLOPs
    fp32 = cmp["rows"][1]
    assert fp32["flops_ratio"] == pytest.approx(2_175_040 / p["artifacts"][0]["cost"]["flops"])
    assert set(fp32["latency_ratio"]) == {"1", "2"}  # JSON keys
    assert [t["tasks"] for t in cmp["task_sets"]] == [["seg", "depth", "count"], ["seg"]]
    md = (out / "profile.md").read_text()
    for section in ("## Batch sweep", "## Edge scenario", "## Comparison (reference: pruned.pt)",
                    "Per-task cost", "![edge latency CDF](edge_latency_cdf.png)"):
        assert section in md
    assert captured.out.count("p50") == 3 and f"wrote {out / 'profile.json'}" in captured.out


def test_profile_measures_peak_memory_in_a_child_process(tmp_path, toys, capsys):
    out = tmp_path / "mem"
    rc = main(["profile", str(toys["onnx"]), "-o", str(out), "--batch-sizes", "4", "--no-edge", "--threads", "1",
               "--duration", "0.01", "-q"])
    assert rc == 0, capsys.readouterr().err
    a = json.loads((out / "profile.json").read_text())["artifacts"][0]
    assert "edge" not in a
    m = a["memory"]
    assert m["batch"] == 4 and m["baseline_mb"] > 10 and m["peak_mb"] >= m["baseline_mb"]
    assert m["model_peak_mb"] == pytest.approx(m["peak_mb"] - m["baseline_mb"], abs=0.02)


@pytest.mark.parametrize("args, message", [
    (["{dir}/model.bin"], "unknown artifact type '.bin'"),
    (["{dir}/corrupt.onnx"], "cannot load ONNX model"),
    (["{dir}/missing.pt"], "artifact not found"),
    (["{onnx}", "--batch-sizes", "1,x"], "--batch-sizes: '1,x' is not a comma-separated list of integers"),
    (["{onnx}", "--batch-sizes", "1,16"], "batch sizes [16] exceed the maximum batch 8"),
    (["{onnx}", "--max-batch", "16"], "--max-batch 16 exceeds the maximum batch 8"),
    (["{onnx}", "--provider", "gpu"], "profile options: provider:"),
    (["{onnx}", "--fps", "0"], "profile options: fps:"),
    (["{onnx}", "--arrival", "bursty"], "profile options: arrival:"),
    (["{onnx}", "--preferred", "16"], "preferred batch sizes [16] are outside 1..4"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, toys, capsys, args, message):
    (tmp_path / "model.bin").write_bytes(b"x")
    (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x01garbage")
    out = tmp_path / "out"
    argv = [a.format(dir=tmp_path, onnx=toys["onnx"]) for a in args]
    rc = main(["profile", *argv, "-o", str(out), *FAST])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (out / "profile.json").exists()


def test_cuda_provider_without_gpu_is_refused(tmp_path, toys, capsys):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this installation has the CUDA provider")
    rc = main(["profile", str(toys["onnx"]), "--provider", "cuda", "-o", str(tmp_path / "o"), *FAST])
    assert rc == 2 and "CUDAExecutionProvider is not available" in capsys.readouterr().err
