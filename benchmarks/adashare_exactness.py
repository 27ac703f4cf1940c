"""Exactness of imported public AdaShare checkpoints against the public code's own outputs. Writes one JSON document.

    python benchmarks/adashare_exactness.py CASE_DIR --config nyu_v2_2task.yml [--sizes 64x96,321x321]
        [-o artifacts/bench/adashare_exactness.json] [--variants] [--latency-repeats 3]
    python benchmarks/adashare_exactness.py CASE_DIR --config Y --sizes 480x640 --pruned pruned.pt --onnx model.onnx

CASE_DIR holds what a user of the public code has -- `*_model.pth.tar` (and optionally its `.legacy` / `.cudatag`
forms) and `policy*.pickle` -- plus `reference.npz`: per input size S the public-preprocessed input `input_{S}` (BGR,
0..255 minus the Caffe means, NCHW float32) and the public code's hard-policy outputs `out_{S}_task{t}_{name}` (raw,
at feature resolution), produced by running the public code on the side. This script never imports the public code:
it reads those files, then for each size S runs what a user runs -- `deploymtl import adashare` (the library call),
`deploymtl prune`, `deploymtl export` (ONNX fp32, batch 1:N:N) -- and compares, per task, the static model
(`StaticModel.infer`) and the ONNX file (ONNX Runtime, as `deploymtl verify` opens it) with the public output:

    error = max |ours - public| / max |public|     (pass: <= 1e-4)

`--variants` also imports every checkpoint form found (zip, legacy, cuda-tagged) and checks that each gives the
same supernet weights bit for bit. `--pruned` / `--onnx` compare artifacts made already (by the commands of the
README, say) at the one size given, instead of running the pipeline.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deploymtl import __version__
from deploymtl.backends.load import open_runner
from deploymtl.export.exporter import export_model
from deploymtl.export.options import ExportOptions
from deploymtl.formats.static import load_static
from deploymtl.importers.adashare import ImportOptions, import_adashare, parse_size
from deploymtl.io import load_torch, write_json
from deploymtl.surgery.prune import prune_checkpoint

LIMIT = 1e-4


def _files(case: Path) -> tuple[Path, Path]:
    ckpts = sorted(p for p in case.glob("*_model.pth.tar"))
    policies = sorted(case.glob("policy*.pickle"))
    if not ckpts or not policies:
        sys.exit(f"{case}: expected *_model.pth.tar and policy*.pickle")
    return ckpts[0], policies[0]


def _compare(ours: dict[str, np.ndarray], ref: np.lib.npyio.NpzFile, size: str, tasks: list[str]) -> dict:
    out = {}
    for t, name in enumerate(tasks, start=1):
        public = ref[f"out_{size}_task{t}_{name}"].astype(np.float64)
        mine = np.asarray(ours[name], dtype=np.float64)
        if mine.shape != public.shape:
            out[name] = {"shape": list(mine.shape), "public_shape": list(public.shape), "passed": False}
            continue
        err = float(np.abs(mine - public).max())
        peak = float(np.abs(public).max())
        out[name] = {"max_abs": err, "max_abs_public": peak, "error": err / peak, "passed": err <= LIMIT * peak}
    return out


def _outputs(pruned: Path, onnx_path: Path, x: np.ndarray) -> tuple[dict, dict]:
    static = load_static(pruned).model
    with torch.inference_mode():
        static_out = {k: v.numpy() for k, v in static.infer(torch.from_numpy(x)).items()}
    runner = open_runner(onnx_path)
    try:
        return static_out, runner.infer(x)
    finally:
        runner.close()


def _size_case(ckpt: Path, policy: Path, config: Path, size: str, ref: np.lib.npyio.NpzFile, work: Path,
               repeats: int) -> dict:
    h, w = parse_size(size)
    batch = int(ref[f"input_{size}"].shape[0])
    t0 = time.perf_counter()
    report = import_adashare(ckpt, policy, work / "import", ImportOptions(config=config, input_size=(h, w),
                                                                         latency_repeats=repeats))
    tasks = [t["name"] for t in report["architecture"]["tasks"]]
    _, prune_report = prune_checkpoint(work / "import" / "supernet.pt", work / "pruned")
    export_model(work / "pruned" / "pruned.pt", work / "onnx",
                 ExportOptions.parse({"batch": f"1:{batch}:{max(batch, 2)}"}))
    x = np.ascontiguousarray(ref[f"input_{size}"], dtype=np.float32)
    static_out, onnx_out = _outputs(work / "pruned" / "pruned.pt", work / "onnx" / "model.onnx", x)
    return {"batch": batch, "static": _compare(static_out, ref, size, tasks),
            "onnx": _compare(onnx_out, ref, size, tasks), "prune_parity": prune_report["parity"],
            "cost": report["cost"], "policy": report["policy"]["tasks"],
            "seconds": round(time.perf_counter() - t0, 1)}


def _given_case(pruned: Path, onnx_path: Path, size: str, ref: np.lib.npyio.NpzFile) -> dict:
    """Artifacts made already: compare them at `size`."""
    tasks = load_static(pruned).task_names
    x = np.ascontiguousarray(ref[f"input_{size}"], dtype=np.float32)
    static_out, onnx_out = _outputs(pruned, onnx_path, x)
    return {"batch": int(x.shape[0]), "static": _compare(static_out, ref, size, tasks),
            "onnx": _compare(onnx_out, ref, size, tasks), "artifacts": {"pruned": str(pruned), "onnx": str(onnx_path)}}


def _variants(case: Path, policy: Path, config: Path, work: Path) -> dict:
    """Every checkpoint form imports to the same supernet weights."""
    base, out = None, {}
    for ckpt in sorted(case.glob("*_model*.pth.tar")):
        import_adashare(ckpt, policy, work / "v", ImportOptions(config=config, input_size=(64, 96),
                                                               latency_repeats=0))
        state = load_torch(work / "v" / "supernet.pt")["state_dict"]
        if base is None:
            base = state
        same = state.keys() == base.keys() and all(torch.equal(state[k], base[k]) for k in base)
        out[ckpt.name] = {"imported": True, "identical_weights": same}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("case", type=Path)
    ap.add_argument("--config", type=Path, required=True, help="the public YAML the checkpoint was trained with")
    ap.add_argument("--sizes", default="64x96", help="comma-separated sizes present in reference.npz")
    ap.add_argument("-o", "--out", type=Path, default=Path("artifacts/bench/adashare_exactness.json"))
    ap.add_argument("--variants", action="store_true")
    ap.add_argument("--latency-repeats", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pruned", type=Path, help="compare this pruned.pt (with --onnx) instead of running the pipeline")
    ap.add_argument("--onnx", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ckpt, policy = _files(args.case)
    ref = np.load(args.case / "reference.npz", allow_pickle=False)
    result = {"case": str(args.case), "checkpoint": ckpt.name, "policy": policy.name, "config": str(args.config),
              "limit": LIMIT, "torch": torch.__version__, "deploymtl": __version__, "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
            result["sizes"][size] = _given_case(args.pruned, args.onnx, size, ref) if args.pruned else \
                _size_case(ckpt, policy, args.config, size, ref, Path(tmp) / size, args.latency_repeats)
            print(json.dumps({size: {k: result["sizes"][size][k] for k in ("static", "onnx")}}, indent=1))
        if args.variants:
            result["variants"] = _variants(args.case, policy, args.config, Path(tmp))
    result["passed"] = all(r["passed"] for s in result["sizes"].values() for k in ("static", "onnx")
                           for r in s[k].values()) and all(v["identical_weights"]
                                                           for v in result.get("variants", {}).values())
    write_json(args.out, result)
    print(f"passed: {result['passed']}; wrote {args.out}")


if __name__ == "__main__":
    main()
