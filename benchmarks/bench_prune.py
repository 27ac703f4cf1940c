"""Does pruning pay? Static model vs masked supernet: latency ratio against FLOPs ratio, on CPU.

For each configuration (the three tiny recipes, and paper-scale ResNet-34 AdaShare / GatedMTL / Aux-NAS with random
decisions of typical sparsity, built directly with `build_supernet`, no training) the script

1. fixes the decisions (seeded): AdaShare executes the first quarter of the blocks for every task and each later
   block with probability 0.65 per task; GatedMTL makes each channel task-specific with probability 0.25; Aux-NAS
   removes every aux->primary link (weight exactly 0, what the ramped L1 penalty drives them to);
2. builds the static model with the family's surgeon and checks it against the supernet in deployed mode;
3. counts FLOPs (torch.utils.flop_counter, batch 1) of the masked supernet (deployed forward) and the static model;
4. times both at batch 1 and 8 (warm-up, then the median of interleaved repeats, so that load on a shared machine
   hits both alike, at least `--repeats` and as many as take `--min-seconds` in all; the minimum is recorded too)
   and reports latency(static) / latency(masked) against FLOPs(static) / FLOPs(masked): the target is a latency
   ratio within 15% of the FLOPs ratio;
5. for AdaShare, also times the tree (one pass computing every task) against one static pass per task;
6. repeats 4. in ONNX Runtime CPU, the deployment runtime (`ort`, skipped with --no-ort): the masked supernet
   exported in deployed mode (torch.export-based exporter, else the TorchScript tracer; `ort.masked_export` says
   which, or why neither could export it) and the static model as `deploymtl export` writes it for ort-cpu (the
   same stages: `export_onnx`, the onnxslim passes, `export.lowering.shape_for_ort_cpu`; without verification),
   both with a symbolic batch, timed interleaved in plain sessions: the caller's intra_op threads (--threads) and
   thread spinning off (two sessions' spinning pools would otherwise steal the 2 cores from each other), nothing
   else. `latency_ratio` is static (the written file) / masked (as exported: what a user of the public code runs);
   `latency_ratio_same_form` divides by the masked file shaped for ort-cpu by the same passes (the head resizes
   then cost the masked model less too: the pruning's own saving), `latency_ratio_as_is` times the static file
   before shaping. With --profile, `ort.profile` gives ONNX Runtime's own per-operator shares (`enable_profiling`,
   each node's minimum over the runs, 1 thread) of the static and masked files: where the time goes.

`within_target` is the issue's two-sided criterion (|latency ratio / FLOPs ratio - 1| <= 15%); `not_slower` is the
one-sided half (the static model is at most 15% slower than its FLOPs promise; being faster is not a failure of
pruning: the masked supernet also pays for BatchNorm and blends that FLOPs do not count).

    python benchmarks/bench_prune.py [--out artifacts/bench/prune.json] [--threads 2] [--only tiny] [--no-ort]
                                     [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import logging
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from deploymtl.config import load_recipe
from deploymtl.families import build_supernet, family_spec
from deploymtl.flops import measure
from deploymtl.io import write_json
from deploymtl.surgery.plan import make_plan
from deploymtl.tasks import TaskSpec

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.15
PAPER_TASKS = [TaskSpec(name="seg", kind="segmentation", channels=13), TaskSpec(name="depth", kind="depth"),
               TaskSpec(name="normal", kind="normals")]
PAPER_MODEL = {"blocks": "resnet34", "width": 64, "head": "aspp", "head_hidden": 256}


def configs(height: int, width: int) -> list[dict[str, Any]]:
    out = []
    for family in ("adashare", "gated", "auxnas"):
        rec = load_recipe(ROOT / "recipes" / f"{family}_tiny.yaml")
        out.append({"name": f"{family}_tiny", "family": family, "tasks": rec.tasks, "model": rec.model,
                    "search": rec.search, "shape": (rec.data.height, rec.data.width)})
    for family in ("adashare", "gated", "auxnas"):
        model = dict(PAPER_MODEL) | ({"primary": ["seg"]} if family == "auxnas" else {})
        out.append({"name": f"{family}_resnet34", "family": family, "tasks": PAPER_TASKS, "model": model,
                    "search": {}, "shape": (height, width)})
    return out


def random_decisions(family: str, model: Any, seed: int) -> None:
    """Seeded decisions of typical sparsity (module docstring), applied to `model`."""
    g = torch.Generator().manual_seed(seed)
    names = model.task_names
    if family == "adashare":
        d = model.decisions()
        n, shared = model.num_blocks, model.num_blocks // 4
        d["policy"] = {t: [1] * shared + [int(v) for v in (torch.rand(n - shared, generator=g) < 0.65).tolist()]
                       for t in names}
        model.set_decisions(d)
    elif family == "gated":
        d = model.decisions()
        d["gates"] = {t: [[int(v) for v in (torch.rand(s.cout, generator=g) < 0.25).tolist()] for s in model.slots]
                      for t in names}
        model.set_decisions(d)
    elif family == "auxnas":
        with torch.no_grad():
            model.alpha_p.fill_(-1e4)  # sigmoid underflows to exactly 0: the removal is exact
        model.set_decisions(model.decisions())


def randomise_bn(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))


MIN_SECONDS = 1.0  # timed wall time per batch size, all models together, at least (--min-seconds)
MAX_REPEATS = 1000


def time_ms(fns: dict[str, Callable[[], Any]], warmup: int, repeats: int,
            min_seconds: float = MIN_SECONDS) -> dict[str, dict[str, float]]:
    """Median and minimum wall time of each function, interleaved so that background load hits them alike (on a
    shared machine the minimum is the better estimate of the cost itself: other processes only add time), and how
    many runs: `repeats`, or more where one interleaved round is short, so that the runs take `min_seconds` in all
    (a tiny model at batch 1 runs in half a millisecond: 15 runs of it are 8 ms of samples, which one burst of
    background load shifts; its median moved 1.8x between runs)."""
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        t0 = time.perf_counter()
        for fn in fns.values():
            fn()
        round_s = time.perf_counter() - t0
        runs = min(MAX_REPEATS, max(repeats, math.ceil(min_seconds / max(round_s, 1e-6))))
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(runs):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: {"median": round(statistics.median(v), 3), "min": round(min(v), 3), "runs": runs}
            for k, v in times.items()}


def bench(cfg: dict[str, Any], batches: list[int], warmup: int, repeats: int, seed: int, ort_threads: int = 0,
          profile: bool = False, min_seconds: float = MIN_SECONDS) -> dict[str, Any]:
    family = cfg["family"]
    torch.manual_seed(seed)
    model = build_supernet(family, cfg["tasks"], cfg["model"], cfg["search"]).eval()
    randomise_bn(model, seed)
    random_decisions(family, model, seed)
    sur = family_spec(family).surgeon
    cut = sur.prepare(model, make_plan(model, family))  # the family's default tasks: Aux-NAS's primary ones
    deployed = cut.tasks
    cut.apply()
    static = cut.build().build()
    h, w = cfg["shape"]
    x1 = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        ref, ours = model(x1), static.infer(x1)
    max_abs = max(float((ours[t] - ref[t]).abs().max()) for t in deployed)
    masked_cost = measure(model.forward, model, x1, deployed)
    static_cost = measure(static.forward, static, x1, deployed)
    flops_ratio = static_cost.flops["total"] / masked_cost.flops["total"]
    result: dict[str, Any] = {
        "name": cfg["name"], "family": family, "tasks": deployed, "input": [3, h, w], "parity_max_abs": max_abs,
        "summary": cut.summary(),
        "flops": {"masked": masked_cost.flops, "static": static_cost.flops},
        "params": {"masked": masked_cost.params["total"], "static": static_cost.params["total"]},
        "flops_ratio": round(flops_ratio, 4), "runs": {}, "latency_ms": {}, "latency_min_ms": {}, "latency_ratio": {},
        "latency_ratio_min": {}, "gap": {}, "within_target": {}, "not_slower": {},
    }
    per_task = None
    if family == "adashare":
        per_task = {t: sur.prepare(model, make_plan(model, family, tasks=[t])).build().build() for t in deployed}
        single = sum(measure(m.forward, m, x1, [t]).flops["total"] for t, m in per_task.items())
        result["tree"] = {"flops_tree": static_cost.flops["total"], "flops_per_task_passes": single,
                          "latency_ms": {}}
    for batch in batches:
        x = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed + batch))
        fns: dict[str, Callable[[], Any]] = {"masked": lambda x=x: model(x), "static": lambda x=x: static.infer(x)}
        if per_task is not None:
            fns["per_task"] = lambda x=x: [m.infer(x) for m in per_task.values()]
        t = time_ms(fns, warmup, repeats, min_seconds)
        ms = {k: v["median"] for k, v in t.items()}
        ratio = ms["static"] / ms["masked"]
        key = str(batch)
        result["runs"][key] = t["static"]["runs"]
        result["latency_ms"][key] = {"masked": ms["masked"], "static": ms["static"]}
        result["latency_min_ms"][key] = {"masked": t["masked"]["min"], "static": t["static"]["min"]}
        result["latency_ratio"][key] = round(ratio, 4)
        result["latency_ratio_min"][key] = round(t["static"]["min"] / t["masked"]["min"], 4)
        result["gap"][key] = round(ratio / flops_ratio - 1.0, 4)  # > 0: static slower than its FLOPs promise
        result["within_target"][key] = abs(ratio / flops_ratio - 1.0) <= TARGET
        result["not_slower"][key] = ratio / flops_ratio - 1.0 <= TARGET
        if per_task is not None:
            result["tree"]["latency_ms"][key] = {"tree": ms["static"], "per_task_passes": ms["per_task"],
                                                 "speedup": round(ms["per_task"] / ms["static"], 3)}
    if ort_threads:
        result["ort"] = bench_ort(model, static, deployed, cfg, batches, warmup, repeats, seed, flops_ratio,
                                  ort_threads, profile, min_seconds)
    return result


def export_masked(model: torch.nn.Module, deployed: list[str], shape: tuple[int, int]) -> tuple[Any, str]:
    """The masked supernet (deployed mode) as an ONNX ModelProto with a symbolic batch, and how it was exported.
    Raises with both exporters' first error lines when neither can export it."""
    import onnx

    from deploymtl.export.onnx import export_onnx

    h, w = shape
    logging.disable(logging.CRITICAL)  # a failed torch.export logs the whole traced graph; its cause is kept below
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            return export_onnx(model, channels=3, height=h, width=w, outputs=deployed), "torch.export (dynamo=True)"
    except Exception as exc:  # noqa: BLE001 - recorded, then the tracer gets its chance
        first = str(exc).splitlines()[0][:300]
    finally:
        logging.disable(logging.NOTSET)

    class Outputs(torch.nn.Module):  # the tracer wants a tuple of outputs
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = self.model(image)
            return tuple(out[t] for t in deployed)

    buf = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer warns about the Python bool() it bakes in
            torch.onnx.export(Outputs().eval(), (torch.zeros(2, 3, h, w),), buf, dynamo=False, input_names=["image"],
                              output_names=deployed, opset_version=18,
                              dynamic_axes={"image": {0: "batch"}} | {t: {0: "batch"} for t in deployed})
    except Exception as exc:  # noqa: BLE001 - reported in the JSON, not faked
        raise RuntimeError(f"torch.export: {first}; TorchScript tracer: {str(exc).splitlines()[0][:300]}") from None
    return onnx.load_from_string(buf.getvalue()), f"TorchScript tracer (torch.export failed: {first})"


def written_static(static: torch.nn.Module, deployed: list[str], shape: tuple[int, int]) -> tuple[Any, Any, dict]:
    """(the static model exported and simplified, that graph shaped for ort-cpu as `deploymtl export` writes it,
    what the shaping rewrote)."""
    from deploymtl.export.lowering import shape_for_ort_cpu
    from deploymtl.export.onnx import export_onnx
    from deploymtl.export.simplify import PASSES, run_pass

    h, w = shape
    proto = export_onnx(static, channels=3, height=h, width=w, outputs=deployed)
    for name in PASSES:  # the export re-verifies each pass; here they are applied as the export accepts them
        proto = run_pass(proto, name)
    shaped, counts = shape_for_ort_cpu(proto)
    return proto, shaped, counts


def ort_profile(models: dict[str, Any], shape: tuple[int, int], batch: int, runs: int = 60) -> dict[str, Any]:
    """ONNX Runtime's profiler on each model (1 thread): per operator type its share of the kernel time, node count
    and microseconds, from each node's minimum over `runs` runs (robust to a loaded machine)."""
    import json
    import tempfile

    import numpy as np
    import onnxruntime as ort

    x = np.random.default_rng(batch).standard_normal((batch, 3, *shape), dtype=np.float32)
    out: dict[str, Any] = {}
    for name, proto in models.items():
        with tempfile.TemporaryDirectory(prefix="bench-prune-profile-") as tmp:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
            opts.enable_profiling, opts.profile_file_prefix = True, str(Path(tmp) / "p")
            session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            for _ in range(runs):
                session.run(None, {"image": x})
            events = json.loads(Path(session.end_profiling()).read_text())
        per_node: dict[str, list[float]] = {}
        op_of: dict[str, str] = {}
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                per_node.setdefault(e["name"], []).append(e["dur"])
                op_of[e["name"]] = e["args"]["op_name"]
        by_op: dict[str, list[float]] = {}
        for node, durations in per_node.items():
            by_op.setdefault(op_of[node], []).append(min(durations))
        total = sum(sum(v) for v in by_op.values())
        out[name] = {"kernel_us": round(total, 1), "nodes": len(per_node),
                     "ops": {op: {"share": round(sum(v) / total, 4), "nodes": len(v), "us": round(sum(v), 1)}
                             for op, v in sorted(by_op.items(), key=lambda kv: -sum(kv[1]))}}
    return out


def bench_ort(model: torch.nn.Module, static: torch.nn.Module, deployed: list[str], cfg: dict[str, Any],
              batches: list[int], warmup: int, repeats: int, seed: int, flops_ratio: float,
              threads: int, profile: bool = False, min_seconds: float = MIN_SECONDS) -> dict[str, Any]:
    """Step 6 of the module docstring: the same latency ratio in ONNX Runtime CPU."""
    import numpy as np
    import onnxruntime as ort

    from deploymtl.export.lowering import shape_for_ort_cpu

    h, w = cfg["shape"]
    out: dict[str, Any] = {"threads": threads}
    try:
        masked_proto, how = export_masked(model, deployed, (h, w))
    except RuntimeError as exc:
        out["masked_export"] = f"failed: {exc}"
        return out
    out["masked_export"] = how
    static_proto, written, out["static_shaping"] = written_static(static, deployed, (h, w))
    masked_shaped, out["masked_shaping"] = shape_for_ort_cpu(masked_proto)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    models = {"masked": masked_proto, "static": written, "static_as_is": static_proto,
              "masked_shaped": masked_shaped}
    sessions = {name: ort.InferenceSession(proto.SerializeToString(), sess_options=opts,
                                           providers=["CPUExecutionProvider"]) for name, proto in models.items()}
    x1 = np.random.default_rng(seed).standard_normal((1, 3, h, w), dtype=np.float32)
    with torch.inference_mode():
        ref = static.infer(torch.from_numpy(x1))
    got = {name: dict(zip(deployed, s.run(deployed, {"image": x1}), strict=True)) for name, s in sessions.items()}
    out["parity_max_abs_vs_static_torch"] = {
        name: max(float(np.abs(g[t] - ref[t].numpy()).max()) for t in deployed) for name, g in got.items()}
    for key in ("runs", "latency_ms", "latency_min_ms", "latency_ratio", "latency_ratio_same_form",
                "latency_ratio_as_is", "latency_ratio_min", "gap", "gap_same_form", "within_target", "not_slower"):
        out[key] = {}
    for batch in batches:
        x = np.random.default_rng(seed + batch).standard_normal((batch, 3, h, w), dtype=np.float32)
        fns = {name: (lambda s=s, x=x: s.run(deployed, {"image": x})) for name, s in sessions.items()}
        t = time_ms(fns, warmup, repeats, min_seconds)
        ms = {k: v["median"] for k, v in t.items()}
        ratio = ms["static"] / ms["masked"]
        key = str(batch)
        out["runs"][key] = t["static"]["runs"]
        out["latency_ms"][key] = ms
        out["latency_min_ms"][key] = {k: v["min"] for k, v in t.items()}
        out["latency_ratio"][key] = round(ratio, 4)
        out["latency_ratio_same_form"][key] = round(ms["static"] / ms["masked_shaped"], 4)
        out["latency_ratio_as_is"][key] = round(ms["static_as_is"] / ms["masked"], 4)
        out["latency_ratio_min"][key] = round(t["static"]["min"] / t["masked"]["min"], 4)
        out["gap"][key] = round(ratio / flops_ratio - 1.0, 4)
        out["gap_same_form"][key] = round(ms["static"] / ms["masked_shaped"] / flops_ratio - 1.0, 4)
        out["within_target"][key] = abs(ratio / flops_ratio - 1.0) <= TARGET
        out["not_slower"][key] = ratio / flops_ratio - 1.0 <= TARGET
    del sessions
    gc.collect()  # ORT's thread pools go with their sessions, before the next configuration is timed in torch
    if profile:
        out["profile"] = {str(b): ort_profile({"static": written, "static_as_is": static_proto,
                                               "masked": masked_proto}, (h, w), b) for b in batches}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "artifacts" / "bench" / "prune.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--height", type=int, default=64, help="input height of the paper-scale configs")
    ap.add_argument("--width", type=int, default=80, help="input width of the paper-scale configs")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15, help="timed runs per model and batch (interleaved), at least")
    ap.add_argument("--min-seconds", type=float, default=MIN_SECONDS, help="more runs where the models are fast, "
                    "until each batch size's timed runs take this long in all")
    ap.add_argument("--only", default="", help="run configs whose name contains this (e.g. tiny, resnet34, gated)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-ort", action="store_true", help="skip the ONNX Runtime measurement (step 6)")
    ap.add_argument("--profile", action="store_true", help="ONNX Runtime profiler shares of the ORT files")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start = list(os.getloadavg())  # other processes on the machine skew latencies: recorded with them
    batches = [int(b) for b in args.batches.split(",")]
    results = []
    for cfg in configs(args.height, args.width):
        if args.only and args.only not in cfg["name"]:
            continue
        t0 = time.perf_counter()
        r = bench(cfg, batches, args.warmup, args.repeats, args.seed, 0 if args.no_ort else args.threads,
                  args.profile, args.min_seconds)
        r["seconds"] = round(time.perf_counter() - t0, 1)
        results.append(r)
        lat = ", ".join(f"b{b}: {v:.3f} ({r['gap'][b]:+.1%}; from minima {r['latency_ratio_min'][b]:.3f})"
                        for b, v in r["latency_ratio"].items())
        tree = ""
        if "tree" in r:
            tree = "; tree vs per-task passes: " + ", ".join(
                f"b{b} x{v['speedup']}" for b, v in r["tree"]["latency_ms"].items())
        ort_line = ""
        if "ort" in r:
            o = r["ort"]
            ort_line = "\n" + " " * 19 + "ORT: " + (", ".join(
                f"b{b}: {v:.3f} ({o['gap'][b]:+.1%}; same form {o['gap_same_form'][b]:+.1%}; "
                f"as-is {o['latency_ratio_as_is'][b]:.3f})"
                for b, v in o["latency_ratio"].items()) if "latency_ratio" in o else o["masked_export"])
        print(f"{r['name']:18s} flops ratio {r['flops_ratio']:.3f}; latency ratio {lat}{tree} [{r['seconds']}s]"
              f"{ort_line}", flush=True)
    write_json(args.out, {
        "benchmark": "prune", "target": f"latency ratio within {TARGET:.0%} of the FLOPs ratio",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "torch": torch.__version__, "threads": args.threads,
                    "load_average": {"start": load_start, "end": list(os.getloadavg())}},
        "settings": {"batches": batches, "warmup": args.warmup, "repeats": args.repeats,
                     "min_seconds": args.min_seconds, "seed": args.seed,
                     "paper_input": [args.height, args.width], "paper_model": PAPER_MODEL},
        "results": results,
    })
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
