"""`deploymtl serve` as a user runs it: a separate process that is ready, answers, and on SIGTERM exits 0 within
a bound leaving no tritonserver behind; a taken port is one line and exit 2 before anything starts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from deploymtl.cli.main import main
from deploymtl.runtime.toy import toy_onnx
from deploymtl.serve.ports import free_ports

pytestmark = pytest.mark.slow
READY_S = 120  # start-up is about 3 s on a quiet machine; the bound only stops a hang
STOP_S = 20  # stop takes about 4 s (tritonserver's graceful exit)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_onnx(tmp_path_factory.mktemp("serve_cli") / "model.onnx", max_batch=4)


def _children(pid: int) -> list[int]:
    """Every live descendant of `pid` (from /proc)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found += kids
        frontier += kids
    return found


class _Output:
    """Every line the process prints, collected by a thread (select() on a buffered pipe can miss lines)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.thread = threading.Thread(target=lambda: self.lines.extend(proc.stdout), daemon=True)
        self.thread.start()

    def wait_for(self, words: str, timeout: float) -> str:
        end = time.monotonic() + timeout
        while not any(words in line for line in list(self.lines)):
            if time.monotonic() > end or self.proc.poll() is not None:
                raise AssertionError(f"no '{words}' from deploymtl serve (rc {self.proc.poll()}): {self.text()}")
            time.sleep(0.05)
        return self.text()

    def text(self) -> str:
        return "".join(list(self.lines))


def test_serve_process_stops_cleanly_on_sigterm(toy, tmp_path):
    pytest.importorskip("pytriton", reason="needs the [serve] extra (nvidia-pytriton)")
    ports = free_ports()
    cmd = [sys.executable, "-m", "deploymtl.cli.main", "serve", str(toy), "--name", "toy", "--threads", "1",
           "--http-port", str(ports.http), "--grpc-port", str(ports.grpc), "--metrics-port", str(ports.metrics),
           "--log-file", str(tmp_path / "triton.log")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output = _Output(proc)
        out = output.wait_for("ready: http", READY_S)
        assert f"serving toy ({toy}, tasks seg, depth, count): max batch 4" in out
        with urllib.request.urlopen(f"http://127.0.0.1:{ports.http}/v2/health/ready", timeout=30) as r:
            assert r.status == 200
        children = _children(proc.pid)
        servers = [c for c in children if "tritonserver" in Path(f"/proc/{c}/cmdline").read_bytes().decode()]
        assert servers, "tritonserver runs as a child of deploymtl serve"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=STOP_S)
        elapsed = time.monotonic() - t0
        output.thread.join(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert rc == 0 and elapsed < STOP_S and output.text().rstrip().endswith("stopped")
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{c}").exists() for c in children) and time.monotonic() < deadline:
        time.sleep(0.1)  # reparented leftovers would still show here
    assert not [c for c in children if Path(f"/proc/{c}").exists()]
    with socket.socket() as s:  # the port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", ports.http))


def test_a_killed_serve_process_takes_tritonserver_and_its_stubs_down(toy, tmp_path):
    pytest.importorskip("pytriton", reason="needs the [serve] extra (nvidia-pytriton)")
    ports = free_ports()
    cmd = [sys.executable, "-m", "deploymtl.cli.main", "serve", str(toy), "--name", "toy", "--threads", "1",
           "--http-port", str(ports.http), "--grpc-port", str(ports.grpc), "--metrics-port", str(ports.metrics)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output = _Output(proc)
        output.wait_for("ready: http", READY_S)
        children = _children(proc.pid)
        names = [Path(f"/proc/{c}/cmdline").read_bytes().decode(errors="replace") for c in children]
        assert any("python_backend_stub" in n for n in names), "the model runs in a python-backend stub"
        proc.kill()  # no handler runs: PR_SET_PDEATHSIG must stop tritonserver, which stops its stubs
        proc.wait(timeout=10)
        deadline = time.monotonic() + STOP_S
        while any(Path(f"/proc/{c}").exists() for c in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [c for c in children if Path(f"/proc/{c}").exists()]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for c in _children(proc.pid):
            os.kill(c, signal.SIGKILL)


def test_a_taken_port_is_one_line_and_exit_2_at_once(toy, capsys):
    pytest.importorskip("pytriton", reason="needs the [serve] extra (nvidia-pytriton)")
    ports = free_ports()
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports.grpc))
        s.listen()
        t0 = time.monotonic()
        rc = main(["serve", str(toy), "--http-port", str(ports.http), "--grpc-port", str(ports.grpc),
                   "--metrics-port", str(ports.metrics)])
        elapsed = time.monotonic() - t0
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and elapsed < 10
    assert err == [f"error: port {ports.grpc} (grpc) on 127.0.0.1 is already in use (stop what listens there or "
                   "pick another with --grpc-port)"]


def test_serve_needs_an_artifact_or_a_repository(tmp_path, capsys):
    rc = main(["serve", str(tmp_path), "--check"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "holds 0 models" in err[0]
    rc = main(["serve", str(tmp_path / "model.txt"), "--check"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--check validates a model repository" in err[0]
