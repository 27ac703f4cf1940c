"""ONNX Runtime latency of the deployed Aux-NAS ViT primary (`deploymtl import auxnas` + `deploymtl export`), fp32
and int8, batch 1 and 8. Writes one JSON document.

    python benchmarks/bench_auxnas.py [CKPT --config CONFIG.json] [--model vit_tiny_patch16_224]
        [-o artifacts/bench/auxnas_latency.json] [--threads 2] [--repeats 10] [--precisions fp32,int8]

Without CKPT a release-layout supernet of `--model` (decoder width 64 for Tiny, the release's 192 otherwise) is
built with seeded random weights at timm's init scales (latency does not depend on the values). Each precision is
exported as `deploymtl export` writes it by default (`--for ort-cpu`, batch 1:8:8); int8 also `--for trt` (the
TensorRT-ready symmetric Q/DQ form). Every file runs in a *plain* onnxruntime session (`InferenceSession(path)` with
`intra_op_num_threads` = `--threads` and nothing else, what a user's service or Triton's onnxruntime backend
opens): median of `--repeats` timed runs after 2 untimed ones, per batch size. The export's own verdict (parity,
lint) is recorded beside each latency: an int8 file that failed parity is timed but marked so.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deploymtl import __version__
from deploymtl.errors import VerificationError
from deploymtl.export.exporter import export_model
from deploymtl.export.options import ExportOptions
from deploymtl.importers.auxnas import import_auxnas
from deploymtl.importers.auxnas.checkpoint import supernet_shapes
from deploymtl.importers.auxnas.config import TIMM_VITS, parse_config
from deploymtl.io import write_json


def _config(model: str) -> dict[str, Any]:
    width = TIMM_VITS[model][1]
    resample = 64 if width <= 192 else 192
    return {"General": {"model_timm": model, "emb_dim": width, "resample_dim": resample, "hooks": [2, 5, 8, 11],
                        "read": "ignore", "patch_size": 16, "tasks": ["normal", "segmentation"], "seg_nclasses": 40},
            "Aux": {"prim_task": "normal"}, "Dataset": {"transforms": {"resize": 224}}}


def _checkpoint(cfg: dict[str, Any], path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in supernet_shapes(parse_config(cfg, "bench config")).items():
        scale = 0.02 if ("stages." in key or "model." in key) else 1.0 / math.sqrt(max(1, math.prod(shape[1:])))
        state[key] = torch.randn(shape, generator=g) * (2.0 if key.endswith("alphas") else scale)
        if ".norm" in key and key.endswith(".weight"):
            state[key] = 1.0 + state[key]
    torch.save({"model_state_dict": state}, path)
    return path


def _latency(path: Path, threads: int, batch: int, repeats: int) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    for _ in range(2):
        sess.run(None, {"image": x})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, {"image": x})
        times.append((time.perf_counter() - t0) * 1e3)
    return round(statistics.median(times), 2)


def _export(pruned: Path, out: Path, precision: str, runtime: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        export_model(pruned, out, ExportOptions(precision=precision, batch="1:8:8", runtime=runtime))
    except VerificationError as exc:  # the file and its report are written: time it, mark it
        print(f"{precision} {runtime}: {exc}", file=sys.stderr)
    report = json.loads((out / "export_report.json").read_text())
    lint = report.get("lint") or []
    parity = {k: {m: v[m] for m in ("max_abs", "cosine", "passed")} for k, v in (report.get("outputs") or {}).items()}
    return {"passed": report["passed"], "failures": report.get("failures"), "seconds": round(time.perf_counter() - t0),
            "lint_errors": sum(1 for f in lint if isinstance(f, dict) and f.get("severity") == "error"),
            "parity": parity, "bytes": (out / "model.onnx").stat().st_size}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path, nargs="?")
    ap.add_argument("--config", type=Path)
    ap.add_argument("--model", default="vit_tiny_patch16_224", choices=sorted(TIMM_VITS))
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("-o", "--out", type=Path, default=Path("artifacts/bench/auxnas_latency.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"model": args.model, "threads": args.threads, "repeats": args.repeats,
                              "machine": platform.processor() or platform.machine(), "deploymtl_version": __version__,
                              "files": {}}
    with tempfile.TemporaryDirectory(prefix="auxnas-bench-") as tmp:
        root = Path(tmp)
        if args.checkpoint is None:
            cfg_path = root / "config.json"
            cfg_path.write_text(json.dumps(_config(args.model)))
            ckpt = _checkpoint(_config(args.model), root / "supernet.pt")
        else:
            ckpt, cfg_path = args.checkpoint, args.config
        imp = import_auxnas(ckpt, cfg_path, root / "imp")
        result["cost"] = imp["cost"]
        result["source"] = str(args.checkpoint or f"random release-layout {args.model}")
        forms = [(p, "ort-cpu") for p in args.precisions.split(",")]
        forms += [("int8", "trt")] if "int8" in args.precisions else []
        for precision, runtime in forms:
            out = root / f"{precision}_{runtime}"
            entry = _export(root / "imp" / "pruned.pt", out, precision, runtime)
            entry["latency_ms"] = {f"batch{b}": _latency(out / "model.onnx", args.threads, b, args.repeats)
                                   for b in (1, 8)}
            result["files"][f"{precision}_{runtime}"] = entry
            print(f"{args.model} {precision} --for {runtime}: {entry['latency_ms']} passed={entry['passed']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
