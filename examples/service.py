"""A small inference service: deploymtl's runtime behind the dynamic batcher, on the standard library's HTTP server.

    python examples/service.py artifacts/export/adashare_tiny/model.onnx --port 8000 --max-batch 8 --max-delay-ms 5
    python examples/service.py --toy            # an untrained toy model, to try it without artifacts

    POST /infer   body: a .npy file (np.save) of one image C x H x W, or N x C x H x W, in the model's dtype
                  200 -> a .npz file, one array per task;   400 bad input, 413 body too large,
                  503 queue full (retry later), 504 timed out; errors are JSON {"error": "<one line>"}
    GET  /health  JSON: artifact, tasks, input specification, batcher counters

Each HTTP request runs in its own thread (ThreadingHTTPServer) and blocks on `Batcher.infer`, so concurrent
clients are grouped into batches; a bad request is answered on its own and the others keep being served.

    client:  buf = io.BytesIO(); np.save(buf, image); r = urllib.request.urlopen(url + "/infer", buf.getvalue())
             outputs = dict(np.load(io.BytesIO(r.read()), allow_pickle=False))
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from deploymtl.errors import DeploymtlError
from deploymtl.runtime import Batcher, QueueFullError, RequestTimeoutError, Session, load


class InferenceService:
    """Session + Batcher + HTTP. `handle_infer(body)` is the whole request path, usable without HTTP."""

    def __init__(self, session: Session, batcher: Batcher, timeout_s: float = 5.0) -> None:
        self.session = session
        self.batcher = batcher
        self.timeout_s = timeout_s
        s = session.input_spec
        # a body can hold at most max_batch images plus the .npy header
        self.max_body = 4096 + batcher.policy.max_batch * s.channels * s.height * s.width * np.dtype(s.dtype).itemsize
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_artifact(cls, artifact: str | Path, *, max_batch: int = 8, max_delay_ms: float = 5.0,
                      max_queue: int | None = None, timeout_s: float = 5.0, threads: int | None = None,
                      provider: str = "cpu") -> InferenceService:
        session = load(artifact, provider=provider, threads=threads)
        batcher = Batcher(session, max_batch=max_batch, max_delay_ms=max_delay_ms, max_queue=max_queue)
        return cls(session, batcher, timeout_s)

    def handle_infer(self, body: bytes) -> tuple[int, str, bytes]:
        """(HTTP status, content type, payload) for one /infer body."""
        try:
            x = np.load(io.BytesIO(body), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            return _error(400, f"request body is not a .npy array ({str(exc).splitlines()[0][:120]})")
        try:
            outputs = self.batcher.infer(x, timeout=self.timeout_s)
        except QueueFullError as exc:
            return _error(503, exc.one_line())
        except RequestTimeoutError as exc:
            return _error(504, exc.one_line())
        except DeploymtlError as exc:  # wrong shape/dtype, too many images, closed
            return _error(400, exc.one_line())
        buf = io.BytesIO()
        np.savez(buf, **outputs)
        return 200, "application/octet-stream", buf.getvalue()

    def health(self) -> dict[str, Any]:
        return {"artifact": str(self.session.path), "tasks": self.session.tasks,
                "input": self.session.input_spec.to_dict(), "batcher": self.batcher.stats()}

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Start serving in a background thread; returns the bound (host, port)."""
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                if self.path != "/infer":
                    return self._send(*_error(404, f"unknown path {self.path}; POST /infer"))
                length = int(self.headers.get("Content-Length") or 0)
                if length > service.max_body:
                    self.close_connection = True  # the unread body must not be parsed as a next request
                    return self._send(*_error(413, f"body of {length} bytes exceeds {service.max_body}"))
                self._send(*service.handle_infer(self.rfile.read(length)))

            def do_GET(self) -> None:
                if self.path != "/health":
                    return self._send(*_error(404, f"unknown path {self.path}; GET /health"))
                self._send(200, "application/json", json.dumps(service.health()).encode())

            def _send(self, status: int, ctype: str, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:  # quiet: a service logs through its own logger
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
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


def _error(status: int, message: str) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps({"error": message}).encode()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", nargs="?", help="pruned.pt, model.onnx or model.plan")
    ap.add_argument("--toy", action="store_true", help="serve an untrained toy model (no artifact needed)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-delay-ms", type=float, default=5.0)
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
                                                 threads=args.threads, provider=args.provider)
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
