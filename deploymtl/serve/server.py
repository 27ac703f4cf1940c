"""A real Triton Inference Server in front of deploymtl sessions: PyTriton's bundled tritonserver, started once,
stopped once.

`TritonServer(models, ports)`: `start()` probes the ports (ports.py), makes a temporary folder this server owns
(the python backend's folder of links, bundled.py; the model store, model_store.py; the server log unless
`log_file` is given), and starts tritonserver on that store, with every served model a python-backend model
whose instances run deploymtl's session inside the backend's stub (python_model.py). It returns once Triton
reports ready (every model loaded, about 3 s). `stop()` sends SIGTERM (in-flight requests finish within
`exit_timeout_secs`), kills what is left after a grace period, and removes the folder; it runs once, however often
it is called. Endpoints listen on `ports.host` only (loopback by default). Model control, shared memory, trace and
logging stay behind an access token this server draws and never prints, so no other process can load models
into it; statistics stay open for `deploymtl profile --url`.

Why not PyTriton's own `Triton.bind`: its proxy model relays every batch from the stub to the binding process
over ZeroMQ and a shared-memory tensor store (four thread hand-overs and two manager round trips per batch);
measured on the tiny demo models that path cost 6-8 ms per execution against 0.1-0.3 ms for the stub running
the session itself (benchmarks/bench_serve.py), more than the models compute.

tritonserver dies with the thread that started it (PR_SET_PDEATHSIG), so that no server outlives a killed
`deploymtl serve`: `start()` must run on a thread that outlives the server, the main thread in `deploymtl serve`.
`serve_until_signal` installs SIGINT and SIGTERM handlers before the start (a signal during the start stops the
server right after it), waits, watches the server, ignores further signals while it stops, and restores the
previous handlers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from ..errors import DeploymtlError
from .binding import ServedModel
from .environment import explain_start_failure, last_log_error, require_serving, stub_environment
from .model_store import write_model_store
from .ports import Ports, check_ports

EXIT_TIMEOUT_S = 5  # below ~2 s tritonserver exits non-gracefully and leaks shared memory
KILL_AFTER_S = EXIT_TIMEOUT_S + 15
READY_TIMEOUT_S = 120.0
RESTRICTED = "shared-memory,model-repository,trace,logging"
TMP_PREFIX = "deploymtl-serve-"  # + the owning process id: folders of dead owners are removed at the next start


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
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
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
        bundled = require_serving()
        check_ports(self.ports)
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_folders()
        self._tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-"))
        try:
            backends = bundled.backend_directory(self._tmp)
            store = write_model_store(self.models, self._tmp / "models")
            self._log = open(self.log_path, "wb")  # noqa: SIM115 - tritonserver writes to it until stop(); a fresh log,
            # so that a failed start is explained by this run's lines only
            self._proc = subprocess.Popen(self._command(bundled.binary, store, backends), stdin=subprocess.DEVNULL,
                                          stdout=self._log, stderr=subprocess.STDOUT,
                                          env=stub_environment(bundled.libs), preexec_fn=_die_with_parent)
            self._wait_ready()
        except BaseException as exc:
            log_text = self._read_log()
            self.stop()
            if isinstance(exc, DeploymtlError | KeyboardInterrupt):
                raise
            raise explain_start_failure(exc, log_text) from None
        return self

    def _command(self, binary: Path, store: Path, backends: Path) -> list[str]:
        h, p = self.ports.host, self.ports
        token = f"triton-access-token={secrets.token_urlsafe(24)}"
        return [str(binary), f"--model-repository={store}", f"--backend-directory={backends}",
                f"--http-address={h}", f"--http-port={p.http}", f"--grpc-address={h}", f"--grpc-port={p.grpc}",
                "--allow-metrics=true", "--allow-gpu-metrics=false", f"--metrics-address={h}",
                f"--metrics-port={p.metrics}", f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
                f"--backend-config=python,shm-region-prefix-name=deploymtl{secrets.token_hex(6)}_",
                f"--http-restricted-api={RESTRICTED}:{token}", f"--grpc-restricted-protocol={RESTRICTED}:{token}"]

    def _wait_ready(self) -> None:
        url = f"{self.urls['http']}/v2/health/ready"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = self._proc.returncode if self._proc is not None else None
                raise RuntimeError(f"tritonserver exited with status {code} while starting")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass  # not listening yet, or models still loading (400)
            time.sleep(0.1)
        raise DeploymtlError(f"tritonserver was not ready within {READY_TIMEOUT_S:g} s",
                             hint="see the tritonserver log (--log-file)")

    def is_alive(self) -> bool:
        return self._proc is not None and not self._stopped and self._proc.poll() is None

    def last_error(self) -> str:
        """The last error line of the server log, for a server that died."""
        return last_log_error(self._read_log()) or "tritonserver exited without logging an error"

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        try:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)
                try:
                    self._proc.wait(timeout=KILL_AFTER_S)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
        finally:
            if self._log is not None:
                self._log.close()
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


def remove_stale_folders(root: Path | None = None) -> list[Path]:
    """Remove the temporary folders of `deploymtl serve` processes that no longer exist (a killed serve cannot
    clean up; its tritonserver stops with it); returns what was removed."""
    removed = []
    for d in Path(root or tempfile.gettempdir()).glob(f"{TMP_PREFIX}*-*"):
        pid = d.name[len(TMP_PREFIX):].split("-", 1)[0]
        if d.is_dir() and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the thread that started it ends (a killed `deploymtl serve`)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


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
