"""examples/service.py under concurrent HTTP load: results equal direct inference; bad input and a full queue
are answered on their own while the service keeps serving."""

from __future__ import annotations

import importlib.util
import io
import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from deploymtl.runtime import Batcher, load
from deploymtl.runtime.toy import toy_onnx

ROOT = Path(__file__).resolve().parents[1]


def _service_module():
    spec = importlib.util.spec_from_file_location("example_service", ROOT / "examples" / "service.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _post(url: str, body: bytes) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return toy_onnx(tmp_path_factory.mktemp("svc") / "model.onnx", max_batch=8)


def test_concurrent_clients_get_exactly_their_own_results(artifact):
    svc_mod = _service_module()
    service = svc_mod.InferenceService.from_artifact(artifact, max_batch=8, max_delay_ms=5.0, threads=1)
    host, port = service.serve()
    url = f"http://{host}:{port}"
    direct = load(artifact, threads=1)
    images = [direct.example(1, seed=i)[0] for i in range(32)]
    bodies = [_npy(x) for x in images]
    bodies[5] = _npy(np.zeros((3, 40, 64), np.float32))  # wrong shape
    bodies[17] = b"definitely not npy"
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda b: _post(url + "/infer", b), bodies))
        with urllib.request.urlopen(url + "/health", timeout=30) as r:
            health = json.loads(r.read())
    finally:
        service.close()
    for i, (status, payload) in enumerate(answers):
        if i == 5:
            assert status == 400 and "one image of shape (3, 40, 64)" in json.loads(payload)["error"]
            continue
        if i == 17:
            assert status == 400 and "not a .npy array" in json.loads(payload)["error"]
            continue
        assert status == 200, payload
        got = dict(np.load(io.BytesIO(payload), allow_pickle=False))
        expected = direct.infer(images[i][None])
        assert sorted(got) == sorted(expected)
        for k in expected:
            np.testing.assert_allclose(got[k], expected[k][0], rtol=1e-4, atol=1e-5)
    assert health["tasks"] == ["seg", "depth", "count"]
    assert health["batcher"]["requests"] == 30 and health["batcher"]["images"] == 30
    assert health["batcher"]["batches"] <= 30  # concurrent requests shared batches (usually far fewer)


def test_full_queue_answers_503_and_the_service_recovers(artifact):
    """A stalled batcher (start=False, driven by step()) fills its queue: the next client gets 503 at once."""
    svc_mod = _service_module()
    session = load(artifact, threads=1)
    batcher = Batcher(session, max_batch=2, max_delay_ms=0.0, max_queue=2, start=False)
    service = svc_mod.InferenceService(session, batcher, timeout_s=60)
    host, port = service.serve()
    url = f"http://{host}:{port}/infer"
    body = _npy(session.example(1)[0])
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            waiting = [pool.submit(_post, url, body) for _ in range(2)]
            deadline = time.monotonic() + 30
            while batcher.queued_images < 2 and time.monotonic() < deadline:
                time.sleep(0.005)  # polling for the two requests to arrive; no fixed sleep
            status, payload = _post(url, body)
            assert status == 503 and "queue is full" in json.loads(payload)["error"]
            assert batcher.step() == 1  # run the queued pair
            assert [f.result(timeout=60)[0] for f in waiting] == [200, 200]
        status, payload = _post(url, _npy(np.zeros((3, 48, 64), np.float64)))
        assert status == 400 and "dtype is float64" in json.loads(payload)["error"]
        assert batcher.queued_images == 0
    finally:
        service.close()
    assert batcher.stats()["rejected"] == 1


def test_oversized_body_is_refused(artifact):
    svc_mod = _service_module()
    service = svc_mod.InferenceService.from_artifact(artifact, max_batch=2, threads=1)
    host, port = service.serve()
    try:
        status, payload = _post(f"http://{host}:{port}/infer", b"\0" * (service.max_body + 1))
    finally:
        service.close()
    assert status == 413 and "exceeds" in json.loads(payload)["error"]
