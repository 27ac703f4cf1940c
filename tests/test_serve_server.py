"""One real Triton (the tritonserver PyTriton bundles, deploymtl's session in its python backend) serving a toy
artifact and a model repository written by `deploymtl export --target triton`: answers over HTTP and gRPC equal
`session.infer`, concurrent clients are batched by Triton, malformed requests get 4xx while the server keeps
serving, and `deploymtl profile --url` measures it with Triton's statistics."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

from deploymtl.cli.main import main
from deploymtl.runtime.toy import toy_onnx
from deploymtl.serve.ports import free_ports

pytest.importorskip("pytriton", reason="needs the [serve] extra (nvidia-pytriton)")
import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from deploymtl.serve.binding import ServeOptions, load_served  # noqa: E402
from deploymtl.serve.repository import RepositoryOptions, write_repository  # noqa: E402
from deploymtl.serve.server import TritonServer  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_onnx):
    root = tmp_path_factory.mktemp("served")
    repo = root / "repo"
    write_repository(tiny_onnx, repo, RepositoryOptions(name="tiny"))
    toy = toy_onnx(root / "toy" / "model.onnx", max_batch=8)
    models = load_served(toy, ServeOptions(name="toy", threads=1, preferred=[4, 8], max_delay_ms=20.0))
    models += load_served(repo, ServeOptions(threads=1))
    pruned = tiny_onnx.parent.parent / "pruned.pt"  # a torch artifact: the stub imports torch and runs it
    models += load_served(pruned, ServeOptions(name="torch", threads=1, max_batch=4))
    server = TritonServer(models, free_ports())
    server.start()
    sessions = {m.name: m.open_session() for m in models}  # the served files, opened as each instance opens them
    try:
        yield {"server": server, "models": {m.name: m for m in models}, "sessions": sessions, "repo": repo}
    finally:
        server.stop()
        for s in sessions.values():
            s.close()


def _http(served):
    return httpclient.InferenceServerClient(served["server"].urls["http"].removeprefix("http://"))


def _grpc(served):
    return grpcclient.InferenceServerClient(served["server"].urls["grpc"])


def _infer(client, module, model, x, outputs):
    inp = module.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(model, [inp], outputs=[module.InferRequestedOutput(n) for n in outputs])
    return {n: result.as_numpy(n) for n in outputs}


@pytest.mark.parametrize("model", ["toy", "tiny", "torch"])
def test_http_and_grpc_answers_equal_session_infer(served, model):
    session = served["sessions"][model]
    x = session.example(3, seed=7)
    expected = session.infer(x)
    for client, module in ((_http(served), httpclient), (_grpc(served), grpcclient)):
        got = _infer(client, module, model, x, list(expected))
        for task, ref in expected.items():
            assert got[task].dtype == ref.dtype and np.array_equal(got[task], ref), (model, task)
        client.close()


def test_concurrent_clients_are_batched_by_triton(served):
    session = served["sessions"]["toy"]
    images = [session.example(1, seed=i) for i in range(24)]
    answers = [None] * len(images)
    before = _http(served).get_inference_statistics("toy")["model_stats"][0]

    def client(k):
        c = _http(served)  # one client per thread: tritonclient's HTTP client is thread-bound
        for i in range(k, len(images), 8):
            answers[i] = _infer(c, httpclient, "toy", images[i], ["seg", "count"])
        c.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    after = _http(served).get_inference_statistics("toy")["model_stats"][0]
    assert after["inference_count"] - before["inference_count"] == 24
    executions = after["execution_count"] - before["execution_count"]
    sizes = {b["batch_size"] for b in after["batch_stats"]}
    assert executions < 24 and max(sizes) > 1  # Triton grouped concurrent requests
    for x, got in zip(images, answers, strict=True):
        ref = session.infer(x)
        np.testing.assert_allclose(got["seg"], ref["seg"], rtol=1e-5, atol=1e-5)


def _post_json(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _request(shape, datatype="FP32", name="image"):
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": [0.0] * int(np.prod(shape))}]}


def test_malformed_requests_get_4xx_and_the_server_keeps_serving(served):
    base = served["server"].urls["http"]
    cases = [
        ("tiny", _request([1, 3, 48, 60]), 400, "unexpected shape for input 'image'"),
        ("tiny", _request([1, 3, 48, 64], "FP64"), 400, "data-type is 'FP64', but model 'tiny' expects 'FP32'"),
        ("tiny", _request([1, 3, 48, 64], name="img"), 400, "unexpected inference input 'img'"),
        ("tiny", _request([5, 3, 48, 64]), 400, "batch-size must be <= 4"),
        ("tiny", {"inputs": []}, 400, "expected 1 inputs but got 0"),
        ("nope", _request([1, 3, 48, 64]), 404, "unknown model"),
    ]
    for model, body, status, words in cases:
        code, text = _post_json(f"{base}/v2/models/{model}/infer", body)
        assert (code, words in text) == (status, True), (model, code, text)
    g = _grpc(served)
    bad = grpcclient.InferInput("image", [1, 3, 40, 64], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3, 40, 64), np.float32))
    with pytest.raises(InferenceServerException) as err:
        g.infer("tiny", [bad])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert g.is_server_ready() and g.is_model_ready("tiny")
    session = served["sessions"]["tiny"]
    x = session.example(1, seed=3)
    assert np.array_equal(_infer(g, grpcclient, "tiny", x, ["depth"])["depth"], session.infer(x)["depth"])
    g.close()


def test_health_and_prometheus_metrics(served):
    urls = served["server"].urls
    with urllib.request.urlopen(f"{urls['http']}/v2/health/ready", timeout=30) as r:
        assert r.status == 200
    with urllib.request.urlopen(urls["metrics"], timeout=30) as r:
        text = r.read().decode()
    assert 'nv_inference_count{model="tiny",version="1"}' in text and "nv_inference_queue_duration_us" in text


def test_profile_url_measures_the_served_model_beside_the_in_process_batcher(served, tmp_path, capsys):
    out = tmp_path / "prof"
    model_file = served["repo"] / "tiny" / "1" / "model.onnx"
    rc = main(["profile", "--url", served["server"].urls["http"], "--model", "tiny", str(model_file),
               "--concurrency", "1,4", "--duration", "0.5", "--edge-duration", "1", "--fps", "20", "--threads", "1",
               "-o", str(out), "-q"])
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    assert sorted(p.name for p in out.iterdir()) == ["profile.json", "profile.md", "served_latency_vs_concurrency.png",
                                                     "served_rate_cdf.png"]
    p = json.loads((out / "profile.json").read_text())
    assert p["format"] == "deploymtl.profile.served/1" and p["server"]["batching"]["max_batch_size"] == 4
    sweep = p["served"]["sweep"]
    assert [r["concurrency"] for r in sweep] == [1, 4] and all(r["errors"] == 0 for r in sweep)
    for r in sweep:
        srv = r["server"]
        assert srv["requests"] >= r["requests"] and srv["queue_ms"] is not None and srv["compute_infer_ms"] > 0
        assert r["latency_ms"]["p50_ms"] <= r["latency_ms"]["p99_ms"]
    assert sweep[0]["server"]["avg_batch"] == 1.0  # one client: never two requests to group
    assert sweep[1]["server"]["avg_batch"] > 1.0  # four clients, preferred size 4
    rate = p["served"]["rate"]
    assert rate["frames"] == 80 and rate["completed"] == 80 and rate["failed"] == 0
    assert rate["server"]["requests"] == 80
    inproc = p["in_process"]
    assert [r["concurrency"] for r in inproc["sweep"]] == [1, 4] and inproc["rate"]["frames"] == 80
    assert all(r["throughput_ratio"] > 0 for r in p["comparison"]["rows"])
    assert "concurrency 4: served" in stdout and "served/in-process" in stdout


def test_profile_url_over_grpc_reads_the_statistics_too(served, tmp_path, capsys):
    out = tmp_path / "prof"
    rc = main(["profile", "--url", f"grpc://{served['server'].urls['grpc']}", "--model", "toy", "--concurrency",
               "2", "--duration", "0.3", "--no-edge", "-o", str(out), "-q"])
    assert rc == 0, capsys.readouterr().err
    row = json.loads((out / "profile.json").read_text())["served"]["sweep"][0]
    assert row["server"]["requests"] >= row["requests"] > 0 and row["server"]["executions"] > 0
