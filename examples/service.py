"""Embedding deploymtl's runtime in a web application you already run: a Session behind the dynamic Batcher.

deploymtl ships one serving path, Triton's (`deploymtl serve`, KServe v2 over HTTP and gRPC, metrics, model
repositories). This example is for the other case: the model lives inside an existing application, here stood
in for by the standard library's HTTP server. What carries over to any framework: one `Session` and one
`Batcher` per process, created at start-up and closed on shutdown; each request handler validates its input,
calls `Batcher.infer` (or `await batcher.infer_async` in asyncio frameworks) with a timeout, and maps the
runtime's exceptions to answers (bad input 400, `QueueFullError` / `BatcherClosedError` 503,
`RequestTimeoutError` 504); and every request gets an answer, however malformed, slow or short it arrives.

    python examples/service.py artifacts/export/adashare_tiny/model.onnx --port 8000 --max-batch 8 --max-delay-ms 5
    python examples/service.py --toy            # an untrained toy model, to try it without artifacts

    POST /infer   body: a .npy file (np.save) of one image C x H x W, or N x C x H x W, in the model's dtype
                  200 -> a .npz file, one array per task
    GET  /health  JSON: artifact, tasks, input specification, batcher counters

Every request gets an answer, errors as one line of JSON {"error": "..."}:
400 bad input (not .npy, wrong shape or dtype, bad or conflicting Content-Length, a body shorter than announced,
a malformed request line), 404 unknown path, 408 request (headers and body) not received within
`read_timeout_s`, 411 no Content-Length (chunked bodies are not accepted), 413 body too large, 500 the model
failed, 501 unknown method, 503 queue full or shutting down (retry later), 504 timed out in the batcher.
After an error that leaves the body unread the connection is closed, so stray bytes are never read as a request.

Each HTTP request runs in its own thread (ThreadingHTTPServer) and blocks on `Batcher.infer`, so concurrent
clients are grouped into batches; a bad request is answered on its own and the others keep being served.

    client:  buf = io.BytesIO(); np.save(buf, image); r = urllib.request.urlopen(url + "/infer", buf.getvalue())
             outputs = dict(np.load(io.BytesIO(r.read()), allow_pickle=False))
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import sys
import tempfile
import threading
import time
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from deploymtl.errors import DeploymtlError
from deploymtl.runtime import Batcher, BatcherClosedError, QueueFullError, RequestTimeoutError, Session, load


class HttpError(Exception):
    """A request answered with `status` and a one-line JSON error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def content_length(headers: Message, limit: int) -> int:
    """The body size a request announces, or HttpError 400 / 411 / 413."""
    if headers.get("Transfer-Encoding") is not None:
        raise HttpError(411, "chunked request bodies are not accepted; send the body with a Content-Length")
    values = {v.strip() for v in headers.get_all("Content-Length") or []}
    if not values:
        raise HttpError(411, "request has no Content-Length header; expected the body size in bytes")
    if len(values) > 1:
        raise HttpError(400, f"conflicting Content-Length headers {sorted(values)}; expected one")
    value = values.pop()
    if not (value.isascii() and value.isdigit()):
        raise HttpError(400, f"Content-Length {value[:40]!r} is not a byte count; expected an integer >= 0")
    if int(value) > limit:
        raise HttpError(413, f"body of {value[:40]} bytes exceeds {limit}")
    return int(value)


class DeadlineReader:
    """The connection's input with one deadline per request: headers and body must arrive within `timeout_s`
    of the request's start, however slowly a client trickles bytes (a per-read socket timeout alone would let
    a byte every few seconds hold the connection forever). Past the deadline, reads raise TimeoutError."""

    def __init__(self, raw: Any, sock: socket.socket) -> None:
        self._raw, self._sock = raw, sock
        self._deadline = 0.0
        self.received = 0  # bytes of the current request so far

    def begin(self, timeout_s: float) -> None:
        self._deadline = time.monotonic() + timeout_s
        self.received = 0

    def _arm(self) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request not received in time")
        self._sock.settimeout(left)

    def read1(self, n: int) -> bytes:
        self._arm()
        data = self._raw.read1(n)  # at most one recv
        self.received += len(data)
        return data

    def readline(self, limit: int = -1) -> bytes:
        line = bytearray()
        while limit < 0 or len(line) < limit:
            self._arm()
            chunk = self._raw.peek(1)  # what is buffered, or one recv
            if not chunk:
                break
            n = chunk.find(b"\n") + 1 or len(chunk)
            line += self._raw.read(n if limit < 0 else min(n, limit - len(line)))
            if line.endswith(b"\n"):
                break
        self.received += len(line)
        return bytes(line)

    def read(self, n: int = -1) -> bytes:
        """Up to n bytes, fewer only at end of stream (what http.server's callers expect)."""
        parts, got = [], 0
        while n < 0 or got < n:
            data = self.read1(65536 if n < 0 else n - got)
            if not data:
                break
            parts.append(data)
            got += len(data)
        return b"".join(parts)

    def close(self) -> None:
        self._raw.close()


class InferenceService:
    """Session + Batcher + HTTP. `handle_infer(body)` is the whole request path, usable without HTTP.

    timeout_s: longest wait in the batcher (504 after). read_timeout_s: longest time to receive one request,
    headers and body (408 after); also how long an idle keep-alive connection stays open.
    """

    def __init__(self, session: Session, batcher: Batcher, timeout_s: float = 5.0,
                 read_timeout_s: float = 10.0) -> None:
        self.session = session
        self.batcher = batcher
        self.timeout_s = timeout_s
        self.read_timeout_s = read_timeout_s
        s = session.input_spec
        # a body can hold at most max_batch images plus the .npy header
        self.max_body = 4096 + batcher.policy.max_batch * s.channels * s.height * s.width * np.dtype(s.dtype).itemsize
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_artifact(cls, artifact: str | Path, *, max_batch: int = 8, max_delay_ms: float = 5.0,
                      max_queue: int | None = None, timeout_s: float = 5.0, read_timeout_s: float = 10.0,
                      threads: int | None = None, provider: str = "cpu") -> InferenceService:
        """Load `artifact` and batch it; the settings as for Batcher, `load` and the class."""
        session = load(artifact, provider=provider, threads=threads)
        batcher = Batcher(session, max_batch=max_batch, max_delay_ms=max_delay_ms, max_queue=max_queue)
        return cls(session, batcher, timeout_s, read_timeout_s)

    def handle_infer(self, body: bytes) -> tuple[int, str, bytes]:
        """(HTTP status, content type, payload) for one /infer body."""
        try:
            x = np.load(io.BytesIO(body), allow_pickle=False)
        except (ValueError, OSError, EOFError, MemoryError) as exc:
            return _error(400, f"request body is not a .npy array ({(str(exc).splitlines() or [''])[0][:120]})")
        if not isinstance(x, np.ndarray):  # np.load also opens .npz archives
            return _error(400, "request body is a .npz archive; expected one .npy array")
        try:
            outputs = self.batcher.infer(x, timeout=self.timeout_s)
        except (QueueFullError, BatcherClosedError) as exc:
            return _error(503, exc.one_line())
        except RequestTimeoutError as exc:
            return _error(504, exc.one_line())
        except DeploymtlError as exc:  # wrong shape/dtype, too many images
            return _error(400, exc.one_line())
        except Exception as exc:  # noqa: BLE001 - the model failed on this request: answer it, keep serving
            return _error(500, f"inference failed: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}")
        buf = io.BytesIO()
        np.savez(buf, **outputs)
        return 200, "application/octet-stream", buf.getvalue()

    def health(self) -> dict[str, Any]:
        return {"artifact": str(self.session.path), "tasks": self.session.tasks,
                "input": self.session.input_spec.to_dict(), "batcher": self.batcher.stats()}

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Start serving in a background thread; returns the bound (host, port)."""
        self._server = _Server((host, port), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, name="service", daemon=True)
        self._thread.start()
        return self._server.server_address[:2]

    def close(self) -> None:
        """Stop accepting connections, then drain the batcher (queued requests still get their answers)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self.batcher.close(drain=True)
        self.session.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # the client left or stalled mid-answer: nothing to answer
        super().handle_error(request, client_address)


def _handler(service: InferenceService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        default_request_version = "HTTP/1.0"  # errors before the version is parsed still get a status line

        def setup(self) -> None:
            super().setup()
            self.rfile = DeadlineReader(self.rfile, self.connection)

        def handle_one_request(self) -> None:
            self.rfile.begin(service.read_timeout_s)
            self._answered = False
            super().handle_one_request()  # a read timeout in the headers ends here, unanswered
            if not self._answered and self.rfile.received:
                self.close_connection = True
                self._send(*_error(408, f"request not received within {service.read_timeout_s} s"))

        def do_POST(self) -> None:
            try:
                if self.path != "/infer":
                    raise HttpError(404, f"unknown path {self.path[:100]}; POST /infer")
                self._send(*service.handle_infer(self._body(content_length(self.headers, service.max_body))))
            except HttpError as exc:
                self.close_connection = True  # an unread body must not be parsed as the next request
                self._send(*_error(exc.status, str(exc)))
            except Exception as exc:  # noqa: BLE001 - every request gets an answer
                self.close_connection = True
                self._send(*_error(500, f"internal error: {type(exc).__name__}: {exc}"))

        def _body(self, length: int) -> bytes:
            try:
                body = self.rfile.read(length)
            except TimeoutError:
                raise HttpError(408, f"request body not received within {service.read_timeout_s} s "
                                f"({length} bytes announced)") from None
            if len(body) < length:
                raise HttpError(400, f"request body ended after {len(body)} of {length} bytes (Content-Length)")
            return body

        def do_GET(self) -> None:
            if self.path != "/health":
                return self._send(*_error(404, f"unknown path {self.path[:100]}; GET /health"))
            self._send(200, "application/json", json.dumps(service.health()).encode())

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            """http.server's own errors (bad request line, 501, 414, 431) in the service's JSON form."""
            self.close_connection = True
            self._send(*_error(code, message or self.responses.get(code, ("error",))[0]))

        def _send(self, status: int, ctype: str, payload: bytes) -> None:
            self._answered = True
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:  # quiet: a service logs through its own logger
            pass

    return Handler


def _error(status: int, message: str) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps({"error": " ".join(message.split())}).encode()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", nargs="?", help="pruned.pt, model.onnx or model.plan")
    ap.add_argument("--toy", action="store_true", help="serve an untrained toy model (no artifact needed)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-delay-ms", type=float, default=5.0)
    ap.add_argument("--read-timeout-s", type=float, default=10.0, help="longest time to receive one request")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--provider", default="cpu", choices=["cpu", "cuda", "trt"])
    args = ap.parse_args(argv)
    artifact = args.artifact
    if args.toy:
        from deploymtl.runtime.toy import toy_onnx

        artifact = toy_onnx(Path(tempfile.mkdtemp()) / "toy.onnx", max_batch=args.max_batch)
    if not artifact:
        ap.error("give an ARTIFACT or --toy")
    try:
        service = InferenceService.from_artifact(artifact, max_batch=args.max_batch, max_delay_ms=args.max_delay_ms,
                                                 read_timeout_s=args.read_timeout_s, threads=args.threads,
                                                 provider=args.provider)
    except DeploymtlError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return 2
    host, port = service.serve(args.host, args.port)
    print(f"serving {artifact} (tasks {', '.join(service.session.tasks)}) on http://{host}:{port}; Ctrl-C stops")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        service.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
