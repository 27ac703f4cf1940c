"""Benchmark of serving on Triton: the tiny demo models through a real tritonserver (`deploymtl serve`'s code path)
against deploymtl's in-process `Batcher` on the same artifact, with the same batching; writes JSON.

    python benchmarks/bench_serve.py [--demo artifacts/demo] [--threads 2] [--concurrency 1,2,4,8,16] [--duration 1]
                                     [--edge-duration 10] [--protocol http] [--out artifacts/bench/serve.json]

Models: `<demo>/<family>/export/<precision>/model.onnx` of the three tiny recipes (`deploymtl demo` writes them;
a missing family is built with `deploymtl run recipes/<family>_tiny.yaml` under artifacts/bench/serve_runs).
Each is packaged with `deploymtl export --target triton` (its batcher setting: the profiler's best one from the
run's profile.json, else the recipe's) and all three are served by one Triton (PyTriton's tritonserver,
`--threads` intra-op threads per model). Per model, `deploymtl profile --url` semantics (deploymtl.profile.served):

1. **Concurrency sweep** 1..16, one-image requests in closed loop, windows of `--duration` s by the profiler's
   stability rule: served throughput and p99, Triton's queue/compute times and executed batch sizes; the same
   levels on the in-process Batcher (threads calling `Batcher.infer`, same max batch, preferred sizes and delay,
   `--threads` threads). Target: served throughput >= 80 % of in-process at every level.
2. **Edge scenario** 4 streams x 30 fps (periodic, 2 ms jitter) for `--edge-duration` s, open loop through
   Triton, and replayed in real time through the in-process Batcher. Target: 0 deadline misses (frame period).

The machine's load average is sampled during the run and written beside the figures: the CPUs may be shared,
and client, server and in-process runs all compete for them; ratios within one run are what to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("adashare", "gated", "auxnas")
TARGET_RATIO = 0.8


def demo_model(demo: Path, family: str, precision: str) -> Path:
    """The family's exported tiny model: from the demo, else built by `deploymtl run`."""
    path = demo / family / "export" / precision / "model.onnx"
    if path.is_file():
        return path
    run_dir = ROOT / "artifacts" / "bench" / "serve_runs" / family
    path = run_dir / "export" / precision / "model.onnx"
    if not path.is_file():
        print(f"building {family} with deploymtl run (no demo artifacts at {demo})", file=sys.stderr, flush=True)
        recipe = ROOT / "recipes" / f"{family}_tiny.yaml"
        subprocess.run([sys.executable, "-m", "deploymtl.cli.main", "run", str(recipe), "-o", str(run_dir), "-q"],
                       check=True)
    return path


class LoadSampler:
    """`os.getloadavg()` every `period_s` in a background thread, plus `uptime` at start and end."""

    def __init__(self, period_s: float = 5.0) -> None:
        self.period_s = period_s
        self.samples: list[dict[str, Any]] = []
        self.uptime: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(self.period_s):
            self.samples.append({"t_s": round(time.monotonic() - t0, 1), "loadavg": os.getloadavg()})

    def _uptime(self) -> None:
        self.uptime.append(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())

    def __enter__(self) -> LoadSampler:
        self._uptime()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._uptime()

    def to_dict(self) -> dict[str, Any]:
        one_min = [s["loadavg"][0] for s in self.samples]
        return {"uptime": self.uptime, "samples": self.samples, "cpu_count": os.cpu_count(),
                "loadavg_1min": {"min": min(one_min), "max": max(one_min),
                                 "mean": sum(one_min) / len(one_min)} if one_min else None}


def summarize(family: str, profile: dict[str, Any]) -> dict[str, Any]:
    cmp = profile["comparison"]
    served_rate = profile["served"].get("rate") or {}
    local_rate = (profile.get("in_process") or {}).get("rate") or {}
    rows = []
    for row, srv in zip(cmp["rows"], profile["served"]["sweep"], strict=True):
        server = srv.get("server") or {}
        rows.append(row | {"served_p50_ms": srv["latency_ms"]["p50_ms"], "server_queue_ms": server.get("queue_ms"),
                           "server_compute_per_execution_ms": server.get("compute_per_execution_ms"),
                           "server_avg_batch": server.get("avg_batch"), "stable": srv["stable"]})
    return {"family": family, "batching": profile["server"]["batching"], "rows": rows,
            "min_throughput_ratio": cmp["min_throughput_ratio"],
            "throughput_target_met": cmp["min_throughput_ratio"] is not None
            and cmp["min_throughput_ratio"] >= TARGET_RATIO,
            "edge": {"served": {k: served_rate.get(k) for k in ("frames", "completed", "deadline_missed", "failed",
                                                                 "throughput_fps", "mean_batch")}
                     | {"p99_ms": served_rate.get("latency_ms", {}).get("p99_ms")},
                     "in_process": {k: local_rate.get(k) for k in ("frames", "deadline_missed", "throughput_fps")}
                     | {"p99_ms": local_rate.get("latency_ms", {}).get("p99_ms")},
                     "zero_misses": served_rate.get("deadline_missed") == 0 and not served_rate.get("failed")},
            "warnings": profile["warnings"]}


class ServerProcess:
    """`deploymtl serve REPO` in its own process, as a deployment runs it (its Python threads, and its GIL, are not
    shared with the load generator); ready once it prints its URLs, stopped with SIGTERM."""

    def __init__(self, repo: Path, threads: int, instances: int | None, log: Path) -> None:
        from deploymtl.serve.ports import free_ports

        self.ports = free_ports()
        p = self.ports
        self.cmd = [sys.executable, "-m", "deploymtl.cli.main", "serve", str(repo), "--threads", str(threads),
                    "--http-port", str(p.http), "--grpc-port", str(p.grpc), "--metrics-port", str(p.metrics),
                    "--log-file", str(log)] + (["--instances", str(instances)] if instances else [])
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        seen = []
        for line in self.proc.stdout:
            seen.append(line)
            if line.startswith("ready:"):  # keep draining the pipe, or a chatty server would block on it
                threading.Thread(target=lambda: seen.extend(self.proc.stdout), daemon=True).start()
                return self
        raise RuntimeError(f"deploymtl serve exited ({self.proc.wait()}): {''.join(seen)}")

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def _cpu_s(pid: int) -> float:
    """utime + stime of a live process, in seconds (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> dict[int, str]:
    """`pid` and its live descendants, each with its role: serve (deploymtl serve), tritonserver, stub."""
    parents, names = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                names[int(entry.name)] = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
    found, frontier = {pid: "serve"}, [pid]
    while frontier:
        p = frontier.pop()
        for child, parent in parents.items():
            if parent == p and child not in found:
                cmd = names.get(child, "")
                found[child] = "stub" if "python_backend_stub" in cmd else "tritonserver" if "tritonserver" in cmd \
                    else "other"
                frontier.append(child)
    return found


def _timed_loop(call_factory, concurrency: int, seconds: float) -> int:
    """`concurrency` threads calling in closed loop for `seconds`; the number of completed calls."""
    calls = [call_factory() for _ in range(concurrency)]
    stop_at = time.monotonic() + seconds
    counts = [0] * concurrency

    def work(k: int) -> None:
        while time.monotonic() < stop_at:
            calls[k]()
            counts[k] += 1

    threads = [threading.Thread(target=work, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts)


def cpu_split(server_pid: int, url: str, family: str, model_file: Path, threads: int, batching: dict[str, Any],
              concurrency: int, seconds: float) -> dict[str, Any]:
    """CPU milliseconds per image, by process, served (client = this process, tritonserver, stub) and in-process
    (this process alone), at one concurrency: where a served image's CPU goes on a machine the client shares."""
    from deploymtl.profile.remote import RemoteModel
    from deploymtl.runtime import Batcher, load

    remote = RemoteModel.connect(url, family)
    factory = remote.make_call(remote.example())
    tree = _tree(server_pid)
    me = os.getpid()
    before = {p: _cpu_s(p) for p in [me, *tree]}
    t0 = time.monotonic()
    images = _timed_loop(factory, concurrency, seconds)
    elapsed = time.monotonic() - t0
    served: dict[str, float] = {"client": (_cpu_s(me) - before[me]) * 1e3 / images}
    for pid, role in tree.items():
        served[role] = served.get(role, 0.0) + (_cpu_s(pid) - before[pid]) * 1e3 / images
    with load(model_file, threads=threads) as session:
        x = session.example(1)
        with Batcher(session, max_batch=batching["max_batch_size"],
                     max_delay_ms=batching["max_queue_delay_us"] / 1e3,
                     preferred_batch_sizes=tuple(batching["preferred"])) as batcher:
            c0, t1 = _cpu_s(me), time.monotonic()
            local = _timed_loop(lambda: (lambda: batcher.infer(x)), concurrency, seconds)
            local_elapsed, local_cpu = time.monotonic() - t1, _cpu_s(me) - c0
    return {"concurrency": concurrency, "seconds": seconds,
            "served": {"images_per_s": images / elapsed, "cpu_ms_per_image": served,
                       "cpu_ms_per_image_total": sum(served.values())},
            "in_process": {"images_per_s": local / local_elapsed, "cpu_ms_per_image": local_cpu * 1e3 / local}}


def direct_ms(path: Path, threads: int, batches: list[int]) -> dict[int, float]:
    """Median `session.infer` time per batch size in this process (the model's own compute, no serving)."""
    from deploymtl.profile.sweep import SweepSettings, measure
    from deploymtl.runtime import load

    with load(path, threads=threads) as session:
        out = {}
        for b in batches:
            x = session.example(b)
            m = measure(lambda x=x: session.infer(x), SweepSettings(duration_s=0.3, warmup=3))
            out[b] = sorted(m["samples_s"])[len(m["samples_s"]) // 2] * 1e3
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", type=Path, default=ROOT / "artifacts" / "demo")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--instances", type=int, default=None, help="model instances on the server (default: config)")
    ap.add_argument("--concurrency", default="1,2,4,8,16")
    ap.add_argument("--duration", type=float, default=1.0)
    ap.add_argument("--edge-duration", type=float, default=10.0)
    ap.add_argument("--protocol", choices=["http", "grpc"], default="http")
    ap.add_argument("--preferred", default=None, help="override the packaged batcher setting, e.g. 4")
    ap.add_argument("--max-delay-ms", type=float, default=None, help="override the packaged queue delay")
    ap.add_argument("--cpu-concurrency", type=int, default=8, help="concurrency of the CPU-split measurement")
    ap.add_argument("--cpu-seconds", type=float, default=3.0, help="duration of each CPU-split run (0: skip)")
    ap.add_argument("--out", type=Path, default=ROOT / "artifacts" / "bench" / "serve.json")
    args = ap.parse_args(argv)

    from deploymtl.io import write_json
    from deploymtl.profile.profiler import ProfileOptions
    from deploymtl.profile.served import ServedOptions, profile_served
    from deploymtl.serve.repository import RepositoryOptions, write_repository

    families = [f for f in args.families.split(",") if f]
    repo = ROOT / "artifacts" / "bench" / "serve_repo"
    sources = {f: demo_model(args.demo, f, args.precision) for f in families}
    for family, src in sources.items():
        preferred = [int(p) for p in args.preferred.split(",")] if args.preferred else None
        write_repository(src, repo, RepositoryOptions(name=family, threads=args.threads, preferred=preferred,
                                                      max_delay_ms=args.max_delay_ms))
    options = ProfileOptions.parse({"threads": args.threads, "duration_s": args.duration, "streams": 4, "fps": 30.0,
                                    "edge_duration_s": args.edge_duration})
    levels = tuple(int(c) for c in args.concurrency.split(","))
    results = []
    with LoadSampler() as load, ServerProcess(repo, args.threads, args.instances, args.out.with_suffix(".log")) as srv:
        urls = srv.ports.urls()
        url = urls["http"] if args.protocol == "http" else f"grpc://{urls['grpc']}"
        for family in families:
            model_file = repo / family / "1" / "model.onnx"
            log = lambda msg, f=family: print(f"[{f}] {msg}", file=sys.stderr, flush=True)  # noqa: E731
            profile = profile_served(ServedOptions(url, family, levels), options, model_file, log=log)
            summary = summarize(family, profile)
            batches = sorted({int(b) for r in profile["served"]["sweep"]
                              for b in ((r.get("server") or {}).get("batch_histogram") or {})})
            direct = direct_ms(model_file, args.threads, batches)
            for row, srv_row in zip(summary["rows"], profile["served"]["sweep"], strict=True):
                hist = (srv_row.get("server") or {}).get("batch_histogram") or {}
                n = sum(hist.values())
                own = sum(direct[int(b)] * c for b, c in hist.items()) / n if n else None
                row["direct_compute_per_execution_ms"] = own  # the same batches, run directly
                row["serving_overhead_per_execution_ms"] = (row["server_compute_per_execution_ms"] - own
                                                            if own is not None else None)
            if args.cpu_seconds > 0:
                summary["cpu_split"] = cpu_split(srv.proc.pid, url, family, model_file, args.threads,
                                                 profile["server"]["batching"], args.cpu_concurrency, args.cpu_seconds)
            results.append(summary | {"source": str(sources[family]), "direct_ms": direct})
    out = {"benchmark": "serve", "protocol": args.protocol, "threads": args.threads, "instances": args.instances,
           "batching_override": {"preferred": args.preferred, "max_delay_ms": args.max_delay_ms},
           "duration_s": args.duration, "edge_duration_s": args.edge_duration, "target_throughput_ratio": TARGET_RATIO,
           "models": results, "machine_load": load.to_dict()}
    write_json(args.out, out)
    for r in results:
        print(f"{r['family']}: batching {r['batching']}")
        for row in r["rows"]:
            print(f"  c={row['concurrency']:>2}: served {row['served_ips']:7.1f} img/s p99 "
                  f"{row['served_p99_ms']:6.2f} ms | in-process {row['in_process_ips']:7.1f} img/s p99 "
                  f"{row['in_process_p99_ms']:6.2f} ms | ratio {row['throughput_ratio']:.2f} | server batch "
                  f"{row['server_avg_batch'] or 0:.2f}, compute/exec {row['server_compute_per_execution_ms'] or 0:.2f} "
                  f"ms (direct {row['direct_compute_per_execution_ms'] or 0:.2f})")
        if "cpu_split" in r:
            cs = r["cpu_split"]
            parts = ", ".join(f"{k} {v:.2f}" for k, v in cs["served"]["cpu_ms_per_image"].items())
            print(f"  CPU per image at c={cs['concurrency']}: served {cs['served']['cpu_ms_per_image_total']:.2f} ms "
                  f"({parts}) at {cs['served']['images_per_s']:.0f} img/s; in-process "
                  f"{cs['in_process']['cpu_ms_per_image']:.2f} ms at {cs['in_process']['images_per_s']:.0f} img/s")
        e = r["edge"]
        print(f"  edge 4x30 fps: served p99 {e['served']['p99_ms']:.2f} ms, {e['served']['deadline_missed']}/"
              f"{e['served']['frames']} late; in-process p99 {e['in_process']['p99_ms']:.2f} ms, "
              f"{e['in_process']['deadline_missed']}/{e['in_process']['frames']} late")
    print(f"load: {json.dumps(out['machine_load']['loadavg_1min'])}; {' / '.join(out['machine_load']['uptime'])}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
