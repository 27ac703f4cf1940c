"""examples/service.py under concurrent HTTP load: results equal direct inference; bad input and a full queue
are answered on their own while the service keeps serving; malformed, slow and short HTTP requests, spoken over
a raw socket, each get a one-line JSON error in bounded time, and a good request is served after each."""

from __future__ import annotations

import importlib.util
import io
import json
import select
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from deploymtl.runtime import Batcher, BatcherClosedError, load
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


# ------------------------------------------------------------------------------------------- raw HTTP
READ_TIMEOUT_S = 0.5
POST = b"POST /infer HTTP/1.1\r\nHost: test\r\n"


@pytest.fixture(scope="module")
def raw_service(artifact):
    service = _service_module().InferenceService.from_artifact(artifact, max_batch=2, max_delay_ms=1.0, threads=1,
                                                               read_timeout_s=READ_TIMEOUT_S)
    host, port = service.serve()
    yield service, host, port
    service.close()


def _exchange(host: str, port: int, first: bytes, then: str, rest: bytes = b"") -> tuple[float, int, dict, bytes]:
    """Send `first`; then "close" (end of our stream), "stall" (send nothing more) or "trickle" (`rest` one byte
    per 0.1 s). Returns (seconds to the answer, status, headers, body) of the one response."""
    with socket.create_connection((host, port), timeout=30) as sock:
        start = time.monotonic()
        sock.sendall(first)
        if then == "close":
            sock.shutdown(socket.SHUT_WR)
        for byte in rest if then == "trickle" else b"":
            if select.select([sock], [], [], 0.1)[0]:
                break  # answered: stop sending
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed without a response after {data!r}"
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        elapsed = time.monotonic() - start
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        while len(body) < int(headers["content-length"]):
            chunk = sock.recv(65536)
            assert chunk, "connection closed in the middle of the response body"
            body += chunk
    return elapsed, int(lines[0].split()[1]), headers, body


def _npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, a=np.zeros(3))
    return buf.getvalue()


RAW_CASES = [  # (name, first bytes, then, rest, status, words in the error)
    ("Content-Length -1", POST + b"Content-Length: -1\r\n\r\n", "stall", b"", 400,
     "Content-Length '-1' is not a byte count"),
    ("Content-Length abc", POST + b"Content-Length: abc\r\n\r\n", "stall", b"", 400, "'abc' is not a byte count"),
    ("Content-Length 1.5", POST + b"Content-Length: 1.5\r\n\r\n", "stall", b"", 400, "'1.5' is not a byte count"),
    ("Content-Length +5", POST + b"Content-Length: +5\r\n\r\n", "stall", b"", 400, "'+5' is not a byte count"),
    ("conflicting lengths", POST + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n", "stall", b"", 400,
     "conflicting Content-Length headers ['5', '6']"),
    ("no Content-Length", POST + b"\r\n", "stall", b"", 411, "no Content-Length header"),
    ("chunked body", POST + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "stall", b"", 411,
     "chunked request bodies are not accepted"),
    ("body too large", POST + b"Content-Length: 1000000000000\r\n\r\n", "stall", b"", 413,
     "body of 1000000000000 bytes exceeds"),
    ("absurd length", POST + b"Content-Length: " + b"9" * 200 + b"\r\n\r\n", "stall", b"", 413, "exceeds"),
    ("short body", POST + b"Content-Length: 100\r\n\r\n" + b"x" * 10, "close", b"", 400,
     "request body ended after 10 of 100 bytes"),
    ("stalled body", POST + b"Content-Length: 100\r\n\r\n" + b"x" * 10, "stall", b"", 408,
     f"request body not received within {READ_TIMEOUT_S} s (100 bytes announced)"),
    ("trickled body", POST + b"Content-Length: 100\r\n\r\n", "trickle", b"x" * 100, 408,
     "request body not received within"),
    ("stalled headers", POST + b"Content-Len", "stall", b"", 408, f"request not received within {READ_TIMEOUT_S} s"),
    ("trickled headers", POST, "trickle", b"X-Slow: " + b"y" * 100, 408, "request not received within"),
    ("bad request line", b"hello there you\r\n\r\n", "stall", b"", 400, "Bad request version ('you')"),
    ("unknown method", b"PUT /infer HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "stall", b"", 501,
     "Unsupported method ('PUT')"),
    ("unknown path", b"POST /nope HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "stall", b"", 404, "unknown path /nope"),
    ("empty body", POST + b"Content-Length: 0\r\n\r\n", "stall", b"", 400, "not a .npy array"),
    ("npz body", POST + b"Content-Length: %d\r\n\r\n" % len(_npz()) + _npz(), "stall", b"", 400, ".npz archive"),
    ("header line too long", POST + b"X-Big: " + b"z" * 70_000 + b"\r\n\r\n", "stall", b"", 431, "Line too long"),
]


@pytest.mark.parametrize("name, first, then, rest, status, words", RAW_CASES, ids=[c[0] for c in RAW_CASES])
def test_every_malformed_request_gets_a_json_answer_and_the_service_still_serves(raw_service, name, first, then,
                                                                                  rest, status, words):
    service, host, port = raw_service
    elapsed, got, headers, body = _exchange(host, port, first, then, rest)
    assert got == status and headers["content-type"] == "application/json"
    assert b"\n" not in body and words in json.loads(body)["error"]
    assert elapsed < READ_TIMEOUT_S + 5  # bounded: at most the read timeout, plus a loaded machine's slack
    image = service.session.example(1, seed=3)[0]
    ok, payload = _post(f"http://{host}:{port}/infer", _npy(image))
    assert ok == 200
    got_out = dict(np.load(io.BytesIO(payload), allow_pickle=False))
    expected = service.session.infer(image[None])
    assert all(np.allclose(got_out[k], expected[k][0], rtol=1e-4, atol=1e-5) for k in expected)


def test_keep_alive_connection_serves_two_requests_and_idle_connections_close_quietly(raw_service):
    service, host, port = raw_service
    body = _npy(service.session.example(1)[0])
    request = POST + b"Content-Length: %d\r\n\r\n" % len(body) + body
    with socket.create_connection((host, port), timeout=30) as sock:
        for _ in range(2):  # the same connection, one request after the other
            sock.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
            head, rest = data.split(b"\r\n\r\n", 1)
            assert head.startswith(b"HTTP/1.1 200")
            length = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0].split(b":")[1])
            while len(rest) < length:
                rest += sock.recv(65536)
        start = time.monotonic()
        assert sock.recv(65536) == b""  # idle past the read timeout: closed, and no unsolicited answer
        assert time.monotonic() - start < READ_TIMEOUT_S + 5


def _failing(x: np.ndarray) -> dict[str, np.ndarray]:
    raise RuntimeError("kernel exploded\nsecond line")


@pytest.mark.parametrize("make, status, words", [
    (lambda s: Batcher(_failing, input_spec=s.input_spec, max_batch=2), 500,
     "inference failed: RuntimeError: kernel exploded"),
    (lambda s: _closed(Batcher(s, max_batch=2)), 503, "the batcher is closed"),
])
def test_handle_infer_answers_model_failures_and_shutdown(artifact, make, status, words):
    session = load(artifact, threads=1)
    batcher = make(session)
    service = _service_module().InferenceService(session, batcher)
    try:
        got, ctype, payload = service.handle_infer(_npy(session.example(1)[0]))
    finally:
        batcher.close()
        session.close()
    assert (got, ctype) == (status, "application/json") and words in json.loads(payload)["error"]
    assert "\n" not in json.loads(payload)["error"]


def _closed(b: Batcher) -> Batcher:
    b.close()
    with pytest.raises(BatcherClosedError):
        b.submit(np.zeros((3, 48, 64), np.float32))
    return b
