"""Exactness of imported Aux-NAS ViT release checkpoints against the public code's own outputs. Writes one JSON
document.

    python benchmarks/auxnas_exactness.py CKPT --config CONFIG.json --reference REF.npz
        [-o artifacts/bench/auxnas_exactness.json] [--name vit_tiny] [--keep-links] [--no-onnx]

CKPT and CONFIG are what a user of the release holds (`torch.save({'model_state_dict': ...})` and the JSON config);
REF.npz was written by running the public code beside this project on the same checkpoint: `image` (N, 3, 224,
224) float32, the release's preprocessing of RGB pixels ((x / 255 - 0.5) / 0.5), and the public outputs
`prim_net` (= `model.prim_net(x)[prim]`, what the evaluation reads), optionally `supernet_eval` (the supernet's
forward with `set_zero_connectivity`, the same value computed through the fusions), `soft_prim` / `soft_aux` (the
supernet with every link at sigmoid(alpha)); a key may hold every k-th pixel only (its size says which). This script
never imports the public code. It runs what a user runs -- `deploymtl import auxnas` (the library call), `deploymtl
export` (ONNX fp32, batch 1:N:N) -- and compares the static model (`StaticModel.forward` and `.infer`) and the ONNX
file (a plain ONNX Runtime session) with each public output:

    error = max |ours - public| / max |public|     (pass: <= 1e-4)

`--keep-links` also imports with `--keep-links` and compares both of its outputs with `soft_prim` / `soft_aux`.
The import report's cost figures (parameters and FLOPs of the public evaluation vs the primary) are copied in.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deploymtl import __version__
from deploymtl.export.exporter import export_model
from deploymtl.export.options import ExportOptions
from deploymtl.formats.static import load_static
from deploymtl.importers.auxnas import ImportOptions, import_auxnas
from deploymtl.io import write_json

LIMIT = 1e-4


def _error(ours: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """Compare at the public array's sampling (every k-th pixel when it was stored subsampled)."""
    k = ours.shape[-1] // ref.shape[-1]
    ours = np.asarray(ours, np.float64)[..., ::k, ::k]
    peak = float(np.abs(ref).max())
    err = float(np.abs(ours - ref).max())
    return {"max_abs": err, "peak": peak, "error": err / peak, "pass": err / peak <= LIMIT, "every": k}


def _static(pruned: Path, image: torch.Tensor) -> dict[str, dict[str, np.ndarray]]:
    model = load_static(pruned).model
    with torch.no_grad():
        fwd = {k: v.numpy() for k, v in model(image).items()}
    return {"forward": fwd, "infer": {k: v.numpy() for k, v in model.infer(image).items()}}


def _onnx(pruned: Path, out: Path, image: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    import onnxruntime as ort

    n = image.shape[0]
    t0 = time.perf_counter()
    report = export_model(pruned, out, ExportOptions(precision="fp32", batch=f"1:{n}:{n}"))
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(None, {"image": image}), strict=True))
    return got, {"passed": report.passed, "seconds": round(time.perf_counter() - t0, 1)}


def _compare(outputs: dict[str, dict[str, np.ndarray]], refs: dict[str, tuple[str, np.ndarray]]) -> dict[str, Any]:
    """{runner: {reference key: error}} for each output name -> (reference key, array)."""
    return {runner: {key: _error(got[name], ref) for name, (key, ref) in refs.items() if name in got}
            for runner, got in outputs.items()}


def _case(args: argparse.Namespace, work: Path, ref: dict[str, np.ndarray], keep: bool) -> dict[str, Any]:
    out = work / ("keep" if keep else "cut")
    report = import_auxnas(args.checkpoint, args.config, out, ImportOptions(keep_links=keep))
    prim, aux = report["architecture"]["primary"]["name"], report["architecture"]["auxiliary"]["name"]
    image = ref["image"].astype(np.float32)
    outputs = _static(out / "pruned.pt", torch.from_numpy(image))
    export = None
    if not args.no_onnx:
        outputs["onnx"], export = _onnx(out / "pruned.pt", work / ("onnx_keep" if keep else "onnx"), image)
    if keep:
        refs = {prim: ("soft_prim", ref["soft_prim"]), aux: ("soft_aux", ref["soft_aux"])}
        comparisons = _compare(outputs, refs)
    else:
        comparisons = {}
        for key in ("prim_net", "supernet_eval"):
            if key in ref:
                for runner, res in _compare(outputs, {prim: (key, ref[key])}).items():
                    comparisons.setdefault(runner, {}).update(res)
    ok = all(r["pass"] for by_key in comparisons.values() for r in by_key.values())
    return {"import_seconds": report["seconds"], "cost": report["cost"], "links": report["links"],
            "keep_links": report.get("keep_links"), "export": export, "comparisons": comparisons, "pass": ok}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--reference", type=Path, required=True)
    ap.add_argument("--name", default=None, help="case name in the JSON (default: the checkpoint's stem)")
    ap.add_argument("--keep-links", action="store_true")
    ap.add_argument("--no-onnx", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--out", type=Path, default=Path("artifacts/bench/auxnas_exactness.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    with np.load(args.reference, allow_pickle=False) as z:
        ref = {k: z[k] for k in z.files}
    if "image" not in ref and "pixels" in ref:
        ref["image"] = ((ref["pixels"].astype(np.float32) / 255.0 - 0.5) / 0.5).astype(np.float32)
    result: dict[str, Any] = {"name": args.name or args.checkpoint.stem, "checkpoint": str(args.checkpoint),
                              "config": str(args.config), "reference": str(args.reference),
                              "samples": int(ref["image"].shape[0]), "limit": LIMIT, "deploymtl_version": __version__,
                              "torch": torch.__version__, "machine": platform.machine(), "threads": args.threads}
    with tempfile.TemporaryDirectory(prefix="auxnas-exact-") as tmp:
        result["cut"] = _case(args, Path(tmp), ref, keep=False)
        if args.keep_links:
            result["keep"] = _case(args, Path(tmp), ref, keep=True)
    result["pass"] = all(result[k]["pass"] for k in ("cut", "keep") if k in result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    for case in ("cut", "keep"):
        for runner, by_key in result.get(case, {}).get("comparisons", {}).items():
            for key, r in by_key.items():
                print(f"{result['name']} {case} {runner} vs {key}: error {r['error']:.3g} (max_abs {r['max_abs']:.3g}, "
                      f"peak {r['peak']:.3g}) {'ok' if r['pass'] else 'FAIL'}")
    print(f"wrote {args.out}")
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
