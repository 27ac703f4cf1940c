"""The serving pieces that need no server: port probes, the stub's environment and the numpy guard, start-failure
messages, Triton URLs and statistics deltas, the batcher-setting resolution, and the load patterns on a fake
service."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from deploymtl.errors import DeploymtlError
from deploymtl.profile.loadgen import closed_loop, open_loop
from deploymtl.profile.remote import _sum_versions, parse_url, stats_delta
from deploymtl.profile.sweep import SweepSettings
from deploymtl.serve.batching import resolve_batching
from deploymtl.serve.environment import check_numpy, explain_start_failure, shared_libpython, stub_environment
from deploymtl.serve.ports import Ports, check_ports, port_in_use


def _listening() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def test_port_probe_sees_listeners_and_names_the_option():
    with _listening() as s:
        port = s.getsockname()[1]
        assert port_in_use("127.0.0.1", port)
        with pytest.raises(DeploymtlError) as err:
            check_ports(Ports("127.0.0.1", 1024 + (port + 1) % 60000, port, 1024 + (port + 2) % 60000))
    assert err.value.one_line() == (f"port {port} (grpc) on 127.0.0.1 is already in use (stop what listens there "
                                    "or pick another with --grpc-port)")
    assert not port_in_use("127.0.0.1", port)  # closed: free again


def test_port_options_are_checked_before_probing():
    with pytest.raises(DeploymtlError, match="ports must differ"):
        check_ports(Ports("127.0.0.1", 18000, 18000, 18002))
    with pytest.raises(DeploymtlError) as err:
        check_ports(Ports("127.0.0.1", 18000, 18001, 70000))
    assert err.value.one_line() == "--metrics-port 70000 (expected a port number 1..65535)"
    with pytest.raises(DeploymtlError, match="--host 10.255.255.1 is not an address of this machine"):
        check_ports(Ports("10.255.255.1", 18000, 18001, 18002))
    assert Ports("0.0.0.0", 1, 2, 3).urls() == {"http": "http://127.0.0.1:1", "grpc": "127.0.0.1:2",
                                                 "metrics": "http://127.0.0.1:3/metrics"}


def test_stub_environment_puts_this_interpreters_libdir_first_and_the_bundled_libs_last(tmp_path):
    import deploymtl

    lib = shared_libpython()
    if lib is None:
        pytest.skip("this interpreter has no shared libpython")
    libdir = str(lib.parent)
    assert lib.name == sysconfig.get_config_var("INSTSONAME")
    base = {"LD_LIBRARY_PATH": f"/opt/a:{libdir}:/opt/b", "PATH": "/usr/bin", "PYTHONPATH": "/opt/py", "HOME": "/h"}
    env = stub_environment(tmp_path / "libs", base)
    assert env["LD_LIBRARY_PATH"] == f"{libdir}:/opt/a:/opt/b:{tmp_path / 'libs'}"
    assert env["PATH"] == f"{os.path.dirname(sys.executable)}:/usr/bin" and env["HOME"] == "/h"
    pythonpath = env["PYTHONPATH"].split(":")
    assert pythonpath[0] == str(Path(deploymtl.__file__).resolve().parent.parent) and pythonpath[-1] == "/opt/py"
    assert sysconfig.get_paths()["purelib"] in pythonpath
    assert base["LD_LIBRARY_PATH"] == f"/opt/a:{libdir}:/opt/b"  # the caller's mapping is not changed
    assert "LD_LIBRARY_PATH" in stub_environment(tmp_path, {})


def test_numpy_2_is_refused_with_the_fix():
    with pytest.raises(DeploymtlError) as err:
        check_numpy("2.4.6")
    assert "needs numpy < 2 (installed: 2.4.6)" in err.value.one_line()
    assert "pip install 'numpy<2'" in err.value.one_line()
    check_numpy("1.26.4")


def test_start_failures_are_one_line_with_the_cause():
    log = ('I1202 05:21:19.95 1 server.cc:1] "started"\n'
           'E1202 05:21:19.95 1 server.cc:241] "CudaDriverHelper has not been initialized."\n'
           "E1202 05:21:20.10 1 main.cc:257] \"failed to start HTTP service: Unavailable - Socket "
           "'127.0.0.1:18000' already in use \"\n")
    assert explain_start_failure(TimeoutError("timed out"), log).one_line() == (
        "tritonserver could not listen on 127.0.0.1:18000 (HTTP): already in use (pick another with --http-port)")
    rlock = RuntimeError("[400] load failed: AttributeError: '_thread.RLock' object has no attribute "
                         "'_recursion_count'")
    assert "Triton's python backend cannot run with this interpreter" in explain_start_failure(rlock, "").one_line()
    other = explain_start_failure(RuntimeError("x"), log.replace("failed to start HTTP service", "model broke"))
    assert other.one_line().startswith("Triton failed to start: model broke: Unavailable")  # CUDA noise skipped


def test_urls():
    assert parse_url("http://127.0.0.1:18000") == ("http", "127.0.0.1:18000")
    assert parse_url("grpc://localhost") == ("grpc", "localhost:8001")
    assert parse_url("127.0.0.1:9") == ("http", "127.0.0.1:9")
    for bad in ("ftp://x:1", "http://", "http://h:1/v2/models"):
        with pytest.raises(DeploymtlError, match="is not a Triton endpoint"):
            parse_url(bad)


def _stats(n_req, queue_ns, infer_ns, batches, *, grpc=False):
    conv = str if grpc else int  # gRPC's JSON writes 64-bit numbers as strings
    return {"inference_count": conv(n_req), "execution_count": conv(sum(batches.values())),
            "inference_stats": {"success": {"count": conv(n_req), "ns": conv(n_req * 3_000_000)},
                                "queue": {"count": conv(n_req), "ns": conv(queue_ns)},
                                "compute_infer": {"count": conv(n_req), "ns": conv(infer_ns)}},
            "batch_stats": [{"batch_size": conv(b), "compute_infer": {"count": conv(n), "ns": conv(n * b * 1_000_000)}}
                            for b, n in batches.items()]}


@pytest.mark.parametrize("grpc", [False, True])
def test_statistics_deltas_per_window(grpc):
    before = _sum_versions([_stats(10, 10_000_000, 20_000_000, {1: 10}, grpc=grpc)])
    after = _sum_versions([_stats(30, 30_000_000, 60_000_000, {1: 12, 4: 4, 2: 1}, grpc=grpc)])
    d = stats_delta(before, after)
    assert d["requests"] == 20 and d["inferences"] == 20 and d["executions"] == 7
    assert d["avg_batch"] == pytest.approx(20 / 7)
    assert d["batch_histogram"] == {1: 2, 2: 1, 4: 4}
    assert d["queue_ms"] == pytest.approx(1.0) and d["compute_infer_ms"] == pytest.approx(2.0)
    assert d["request_ms"] == pytest.approx(3.0) and d["compute_input_ms"] is None
    busy_ms = 2 * 1 + 1 * 2 + 4 * 4  # new executions x batch x 1 ms
    assert d["busy_s"] == pytest.approx(busy_ms / 1000) and d["compute_per_execution_ms"] == pytest.approx(busy_ms / 7)


def test_batching_comes_from_the_profile_then_the_recipe_then_defaults(tmp_path):
    art = tmp_path / "export" / "model.onnx"
    art.parent.mkdir()
    art.write_bytes(b"onnx")
    b = resolve_batching(art, 8)
    assert (b.preferred, b.max_queue_delay_us, b.source) == ((4,), 5000, "recipe defaults")
    (art.parent / "recipe.json").write_text(json.dumps({"name": "r", "profile": {"max_batch": 2,
                                                                                 "max_delay_ms": 1.5}}))
    b = resolve_batching(art, 8)
    assert (b.preferred, b.max_queue_delay_us) == ((2,), 1500) and "recipe r" in b.source
    best = {"max_batch": 16, "max_delay_ms": 2.0}
    profile = {"artifacts": [{"path": str(art), "edge": {"settings": {"best": best}}}]}
    (art.parent / "profile.json").write_text(json.dumps(profile))
    b = resolve_batching(art, 8)  # capped at the batch specification's maximum
    assert (b.max_batch_size, b.preferred, b.max_queue_delay_us) == (8, (8,), 2000) and "profile" in b.source
    b = resolve_batching(art, 8, preferred=[2, 4], max_delay_ms=0.25)
    assert (b.preferred, b.max_queue_delay_us, b.source) == ((2, 4), 250, "command line")
    with pytest.raises(DeploymtlError, match=r"preferred batch sizes \[16\] are outside 1..8"):
        resolve_batching(art, 8, preferred=[16])


class FakeService:
    """Answers after `service_s`, several callers at once (a server with free capacity)."""

    def __init__(self, service_s: float) -> None:
        self.service_s = service_s
        self.calls = 0
        self.lock = threading.Lock()

    def factory(self):
        def call():
            time.sleep(self.service_s)
            with self.lock:
                self.calls += 1
        return call


def test_closed_loop_measures_concurrency_by_the_stability_rule():
    svc = FakeService(0.004)
    started = []
    settings = SweepSettings(duration_s=0.15, warmup=2, min_calls=3, max_windows=4, tolerance=0.5)
    r = closed_loop(svc.factory, 4, settings, on_start=lambda: started.append(svc.calls))
    assert started == [8]  # four workers x two warm-up calls, all before the first window
    assert r["concurrency"] == 4 and r["errors"] == 0 and r["windows"] >= 2
    assert 3.5 <= r["latency_ms"]["p50_ms"] < 40
    assert 4 / 0.04 < r["throughput_rps"] <= 4 / 0.0035  # four requests in flight, each >= 4 ms


def test_closed_loop_counts_errors_and_fails_when_nothing_completes():
    def broken():
        def call():
            time.sleep(0.001)
            raise RuntimeError("Traceback ...\n  File x\nValueError: toy: NaN in input")
        return call
    settings = SweepSettings(duration_s=0.05, warmup=0, min_calls=1, max_windows=2)
    import deploymtl.profile.loadgen as loadgen
    old, loadgen.STALL_S = loadgen.STALL_S, 0.2
    try:
        with pytest.raises(DeploymtlError, match="RuntimeError: ValueError: toy: NaN in input"):
            closed_loop(broken, 2, settings)
    finally:
        loadgen.STALL_S = old


def test_open_loop_releases_requests_on_time_and_marks_failures():
    state = {"n": 0}

    def factory():
        def call():
            state["n"] += 1
            if state["n"] == 6:  # the fifth request after the warm-up call
                raise RuntimeError("boom")
            time.sleep(0.002)
        return call
    arrivals = np.arange(10) * 0.01
    t0 = time.perf_counter()
    latency, errors = open_loop(factory, arrivals, workers=1)
    assert time.perf_counter() - t0 >= 0.09  # paced by the arrival times, not run back to back
    assert errors == ["RuntimeError: boom"] and np.isnan(latency).sum() == 1 and np.isnan(latency[4])
    ok = latency[~np.isnan(latency)]
    assert (ok >= 0.002).all() and (ok < 0.5).all()


def test_stale_serve_folders_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    from deploymtl.serve.server import TMP_PREFIX, remove_stale_folders

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = tmp_path / f"{TMP_PREFIX}{os.getpid()}-abc"
    stale = tmp_path / f"{TMP_PREFIX}{dead.pid}-def"
    other = tmp_path / f"{TMP_PREFIX}xyz"  # not ours to judge
    for d in (live, stale, other):
        (d / "models").mkdir(parents=True)
    assert remove_stale_folders(tmp_path) == [stale]
    assert live.is_dir() and other.is_dir() and not stale.exists()
