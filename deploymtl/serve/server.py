"""A real Triton Inference Server in front of deploymtl sessions, started through PyTriton, stopped once.

`TritonServer(models, ports)`: `start()` probes the ports (ports.py), makes a temporary folder this server owns
(PyTriton's workspace, with the tritonserver copy and its sockets, and the server log unless `log_file` is
given), binds every model (binding.py), and starts tritonserver with LD_LIBRARY_PATH fixed for the python
backend (environment.py); it returns once every model is ready (about 3 s). `stop()` stops tritonserver
(about 4 s: in-flight requests finish within `exit_timeout_secs`) and removes the folder; it runs once, however
often it is called. Endpoints listen on `ports.host` only (loopback by default: PyTriton's own default is every
interface). Every endpoint but statistics stays behind PyTriton's access token (model control, shared memory,
trace, logging), so a second server cannot load models into this one; statistics stay open for
`deploymtl profile --url`.

PyTriton ties tritonserver's life to the thread that started it (PR_SET_PDEATHSIG), so `start()` must run on a
thread that outlives the server: the main thread in `deploymtl serve`. `serve_until_signal` installs SIGINT and
SIGTERM handlers before the start (a signal during the start stops the server right after it), waits, watches
the server, ignores further signals while it stops, and restores the previous handlers.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import DeploymtlError
from .binding import ServedModel, bind
from .environment import explain_start_failure, last_log_error, libpython_first, require_pytriton
from .ports import Ports, check_ports

EXIT_TIMEOUT_S = 5  # below ~2 s tritonserver exits non-gracefully and leaks shared memory
OPEN_ENDPOINTS = ("statistics",)
RESTRICTED = ["shared-memory", "model-repository", "trace", "logging"]


class TritonServer:
    def __init__(self, models: Sequence[ServedModel], ports: Ports = Ports(), *, log_file: Path | None = None) -> None:
        if not models:
            raise DeploymtlError("no model to serve")
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise DeploymtlError(f"model names repeat: {names}", hint="give each model its own --name")
        self.models = list(models)
        self.ports = ports
        self.log_file = log_file
        self._triton: Any = None
        self._tmp: Path | None = None
        self._stopped = False
        self._lock = threading.Lock()

    @property
    def urls(self) -> dict[str, str]:
        return self.ports.urls()

    @property
    def log_path(self) -> Path | None:
        return self.log_file or (self._tmp / "triton.log" if self._tmp else None)

    def start(self) -> TritonServer:
        triton_mod = require_pytriton()
        check_ports(self.ports)
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix="deploymtl-serve-"))
        try:
            h = self.ports.host
            config = triton_mod.TritonConfig(
                http_address=h, http_port=self.ports.http, grpc_address=h, grpc_port=self.ports.grpc,
                allow_metrics=True, metrics_address=h, metrics_port=self.ports.metrics, allow_gpu_metrics=False,
                exit_timeout_secs=EXIT_TIMEOUT_S, log_file=str(self.log_path))
            self._triton = triton_mod.Triton(config=config, workspace=str(self._tmp / "workspace"),
                                             security_config=triton_mod.TritonSecurityConfig(
                                                 restricted_endpoints=RESTRICTED))
            for m in self.models:
                bind(self._triton, m)
            with libpython_first():
                self._triton.run()
        except BaseException as exc:
            log_text = self._read_log()
            self.stop()
            if isinstance(exc, DeploymtlError | KeyboardInterrupt):
                raise
            raise explain_start_failure(exc, log_text) from None
        return self

    def is_alive(self) -> bool:
        return self._triton is not None and not self._stopped and self._triton.is_alive()

    def last_error(self) -> str:
        """The last error line of the server log, for a server that died."""
        return last_log_error(self._read_log()) or "tritonserver exited without logging an error"

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        try:
            if self._triton is not None:
                self._triton.stop()
        finally:
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)

    def _read_log(self) -> str:
        path = self.log_path
        try:
            return path.read_text(errors="replace") if path is not None and path.is_file() else ""
        except OSError:
            return ""

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_until_signal(server: TritonServer, on_ready: Callable[[TritonServer], None] = lambda _s: None,
                       poll_s: float = 0.5) -> None:
    """Start `server`, call `on_ready`, serve until SIGINT/SIGTERM, stop once (module docstring)."""
    stop_requested = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda *_: stop_requested.set())
    died: str | None = None
    try:
        server.start()
        if not stop_requested.is_set():
            on_ready(server)
        while not stop_requested.wait(poll_s):
            if not server.is_alive():
                died = server.last_error()
                break
    finally:
        for sig in previous:  # a second signal must not interrupt the stop
            signal.signal(sig, signal.SIG_IGN)
        try:
            server.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if died is not None:
        raise DeploymtlError(f"the server stopped unexpectedly: {died}")
