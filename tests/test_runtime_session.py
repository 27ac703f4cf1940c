"""deploymtl.runtime.load / Session: toy static and ONNX artifacts, explicit providers, bad input, threads."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from deploymtl.errors import DeploymtlError
from deploymtl.io import save_torch
from deploymtl.runtime import Session, load
from deploymtl.runtime.toy import toy_onnx, toy_static


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    d = tmp_path_factory.mktemp("toys")
    return {"static": toy_static(d / "pruned.pt"), "onnx": toy_onnx(d / "model.onnx", max_batch=8)}


def test_static_and_onnx_sessions_describe_the_artifact_and_agree(toys):
    with load(toys["static"], threads=1) as st, load(toys["onnx"], threads=1) as ox:
        assert isinstance(st, Session) and st.kind == "static" and st.backend == "torch"
        assert ox.kind == "onnx" and ox.backend == "onnxruntime" and ox.provider == "cpu"
        assert st.tasks == ox.tasks == ["seg", "depth", "count"]
        assert (ox.input_spec.channels, ox.input_spec.height, ox.input_spec.width) == (3, 48, 64)
        assert ox.max_batch == 8 and st.max_batch is None  # the ONNX metadata carries the batch range
        x = st.example(3)
        a, b = st.infer(x), ox.infer(x)
        assert {k: v.shape for k, v in a.items()} == {"seg": (3, 5, 48, 64), "depth": (3, 1, 48, 64),
                                                      "count": (3, 4)}
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5)
        assert ox.info()["input"]["max_batch"] == 8 and st.info()["device"] == "cpu"


def test_torch_max_batch_can_be_set(toys):
    s = load(toys["static"], max_batch=2)
    with pytest.raises(DeploymtlError, match="batch 3 is outside the artifact's range 1..2"):
        s.infer(s.example(3))


@pytest.mark.parametrize("bad, fragment", [
    (np.zeros((2, 3, 48, 64), np.float64), "dtype is float64"),
    (np.zeros((2, 3, 32, 64), np.float32), r"shape \(2, 3, 32, 64\)"),
    (np.zeros((3, 48, 64), np.float32), r"shape \(3, 48, 64\)"),
    (np.zeros((9, 3, 48, 64), np.float32), "batch 9 is outside the artifact's range 1..8"),
])
def test_infer_rejects_bad_input_with_one_line(toys, bad, fragment):
    s = load(toys["onnx"], threads=1)
    with pytest.raises(DeploymtlError, match=fragment) as err:
        s.infer(bad)
    assert "\n" not in err.value.one_line()
    assert s.infer(s.example(1))["count"].shape == (1, 4)  # still serves after the bad call


def test_unknown_missing_and_corrupt_artifacts(tmp_path, toys):
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(DeploymtlError, match="unknown artifact type '.bin'"):
        load(tmp_path / "model.bin")
    with pytest.raises(DeploymtlError, match="artifact not found"):
        load(tmp_path / "absent.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(DeploymtlError, match="cannot load ONNX model"):
        load(tmp_path / "bad.onnx")
    (tmp_path / "bad.pt").write_bytes(toys["static"].read_bytes()[:200])  # truncated zip
    with pytest.raises(DeploymtlError, match="truncated, corrupt or not a weights-only torch file"):
        load(tmp_path / "bad.pt")
    save_torch(tmp_path / "other.pt", {"format": "something/else"})
    with pytest.raises(DeploymtlError, match="is not a deploymtl static model"):
        load(tmp_path / "other.pt")
    (tmp_path / "bad.plan").write_bytes(b"\0" * 16)
    with pytest.raises(DeploymtlError, match="engine manifest not found"):
        load(tmp_path / "bad.plan")


def test_providers_are_explicit(toys):
    with pytest.raises(DeploymtlError, match="unknown provider 'gpu'"):
        load(toys["onnx"], provider="gpu")
    with pytest.raises(DeploymtlError, match="provider 'cuda' applies to ONNX models"):
        load(toys["static"], provider="cuda")
    with pytest.raises(DeploymtlError, match="unknown torch device 'tpu:x'"):
        load(toys["static"], device="tpu:x")
    with pytest.raises(DeploymtlError, match="threads is 0"):
        load(toys["onnx"], threads=0)


def test_requested_cuda_provider_missing_fails_loudly(toys):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this installation has the CUDA provider")
    with pytest.raises(DeploymtlError, match="CUDAExecutionProvider is not available in this installation"):
        load(toys["onnx"], provider="cuda")


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_no_silent_fallback_when_the_provider_does_not_run(toys, monkeypatch):
    """ORT claims CUDA is available but the session runs on the CPU: refuse instead of falling back."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this installation really has the CUDA provider")
    real = ort.get_available_providers
    monkeypatch.setattr(ort, "get_available_providers", lambda: [*real(), "CUDAExecutionProvider"])
    with pytest.raises(DeploymtlError, match="runs CPUExecutionProvider although CUDAExecutionProvider was requested"):
        load(toys["onnx"], provider="cuda")


def test_cuda_device_without_gpu_fails_loudly(toys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(DeploymtlError, match="torch sees no CUDA GPU"):
        load(toys["static"], device="cuda")


@pytest.mark.parametrize("kind", ["static", "onnx"])
def test_one_session_shared_by_threads_gives_sequential_results(toys, kind):
    s = load(toys[kind], threads=1)
    inputs = [s.example(1 + i % 3, seed=i) for i in range(12)]
    expected = [s.infer(x) for x in inputs]
    got: dict[int, dict] = {}

    def worker(i: int) -> None:
        got[i] = s.infer(inputs[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, exp in enumerate(expected):
        for k in exp:
            np.testing.assert_array_equal(got[i][k], exp[k])


def test_subset_toy_shares_the_trunk(tmp_path, toys):
    seg = load(toy_static(tmp_path / "seg.pt", tasks=["seg"]))
    full = load(toys["static"])
    x = full.example(2)
    assert seg.tasks == ["seg"]
    np.testing.assert_allclose(seg.infer(x)["seg"], full.infer(x)["seg"], rtol=1e-5, atol=1e-6)


def test_supernet_checkpoint_runs_in_deployed_mode(tmp_path):
    """supernet.pt (the dense masked baseline of a comparison) loads as a session computing the deployed forward."""
    import torch

    from deploymtl.config import load_recipe
    from deploymtl.families import build_supernet
    from deploymtl.formats.supernet import SUPERNET_FORMAT
    from deploymtl.profile.cost import artifact_cost

    rec = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "gated_tiny.yaml")
    torch.manual_seed(0)
    model = build_supernet("gated", rec.tasks, rec.model, rec.search).eval()
    save_torch(tmp_path / "supernet.pt", {
        "format": SUPERNET_FORMAT, "family": "gated", "recipe": rec.resolved(),
        "tasks": [t.model_dump() for t in rec.tasks], "state_dict": model.state_dict(),
        "decisions": model.decisions(), "metrics": {}})
    s = load(tmp_path / "supernet.pt", threads=1)
    assert s.kind == "supernet" and s.tasks == [t.name for t in rec.tasks]
    assert (s.input_spec.height, s.input_spec.width) == (rec.data.height, rec.data.width)
    x = s.example(2)
    with torch.no_grad():
        expected = model.set_deployed(True)(torch.from_numpy(x))
    got = s.infer(x)
    for k, v in expected.items():
        np.testing.assert_allclose(got[k], v.numpy(), rtol=1e-5, atol=1e-6)
    cost = artifact_cost(tmp_path / "supernet.pt", "supernet")
    assert cost["flops"] > 0 and cost["params"] == sum(p.numel() for p in model.weight_parameters())
