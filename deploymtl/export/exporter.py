"""`export_model`: static model (or supernet, pruned on the way) -> verified ONNX (fp32/fp16/int8) or TensorRT plan.

Order of work (each step checked before the next):
1. options: target, precision, batch spec, output directory; `--target trt` asks `require_tensorrt()` first;
2. model: `pruned.pt` (load_static) or `supernet.pt` (`deploymtl.surgery.prune.prune_checkpoint`, output kept under
   `pruned/`); the recipe embedded in it gives the data (`build_datasets`) and the export defaults;
3. fp32 ONNX (`export.onnx`), interface check (names, symbolic batch, opset, checker), removed-parts check;
4. onnxslim passes, each re-verified on ONNX Runtime at batch 1 and >1 (`export.simplify`);
5. precision: fp16 (`export.fp16`) or int8 Q/DQ calibrated on the training split (`export.quantize`);
6. metadata, TensorRT lint warnings, parity on ONNX Runtime at batch 1 and MAX against the PyTorch static model
   on real validation samples (saved beside the artifact, `verify.parity`), localisation of the first diverging
   layer on failure (`verify.localize`), task-metric gate for fp16/int8 (`verify.metrics_gate`);
7. TensorRT: `export_trt` on that ONNX, parity through `open_runner(plan)`.

Everything is written into a staging directory beside `out_dir` that replaces it as a whole at the end
(`deploymtl.outdir.output_set`), so bad input, Ctrl-C or a kill leaves the previous export untouched and never a
mix of two. A failed verification still ships the artifact and its report for inspection, then raises
VerificationError (exit 1); so does a supernet whose pruning on the way fails (its report under `pruned/`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from pydantic import ValidationError

from .. import __version__
from ..backends.base import InputSpec, Runner
from ..backends.torch_runner import TorchRunner
from ..config import DataConfig, ExportConfig
from ..errors import DeploymtlError, InternalError, VerificationError
from ..io import load_torch, write_json
from ..onnxkit.index import GraphIndex
from ..onnxkit.qdq import QdqFinding, scheme_for, violations
from ..outdir import check_output_dir, link_or_copy, output_set
from ..surgery.artifact import STATIC_FORMAT, StaticArtifact, load_static
from ..verify.compare import CompareReport, compare_outputs, resolve_tolerances
from ..verify.localize import localize
from ..verify.metrics_gate import evaluate, metric_gate
from ..verify.parity import compare_runner, parity_path, save_parity
from ..verify.removed import check_removed_parts
from . import onnx as onnx_export
from .batch import BatchSpec, parse_batch
from .simplify import PASSES, simplify

TARGETS = ("onnx", "trt")
PRECISIONS = ("fp32", "fp16", "int8")
INT8_ACTIVATIONS = ("symmetric", "asymmetric")
INT8_OUTPUT_LAYERS = ("fp32", "int8")
SUPERNET_FORMAT = "deploymtl.supernet/1"
ONNX_NAME = "model.onnx"
REPORT_NAME = "export_report.json"
CALIBRATION_BATCH = 8
PASS_CHECK_SAMPLES = 4
# Everything an export may write: a name of these the new export does not write is dropped from the directory
# (an ONNX export after a TensorRT one leaves no engine of another graph behind); other files are kept.
EXPORT_FILES = (ONNX_NAME, "model.parity.npz", REPORT_NAME, "recipe.json", "model.plan", "model.plan.json",
                "model.plan.layers.json", "pruned")
TIMING_CACHE = "timing.cache"


class _PruneFailed(Exception):
    """The supernet's pruning on the way failed verification; its report is staged under `pruned/`."""

    def __init__(self, error: VerificationError) -> None:
        super().__init__(str(error))
        self.error = error


def _echo_none(_: str) -> None:
    pass


class _SessionRunner(Runner):
    """ONNX Runtime on an in-memory graph (simplification candidates are never written to disk)."""

    backend = "onnxruntime"

    def __init__(self, proto: onnx.ModelProto, spec: InputSpec, outputs: list[str], threads: int | None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        self.session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        super().__init__(spec, outputs, "<in-memory graph>")

    def _infer(self, image: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, {"image": image}), strict=True))


def check_options(target: str, precision: str, out_dir: str | Path) -> Path:
    """Reject unknown target/precision and an output directory that cannot be written, before any work (exit 2)."""
    if target not in TARGETS:
        raise DeploymtlError(f"--target: unknown target '{target}'", hint=f"expected one of {', '.join(TARGETS)}")
    if precision not in PRECISIONS:
        raise DeploymtlError(f"--precision: unknown precision '{precision}'",
                             hint=f"expected one of {', '.join(PRECISIONS)}")
    check_output_dir(out_dir)
    return Path(out_dir)


def _require_trt() -> None:
    try:
        from .trt.build import require_tensorrt
    except ImportError:
        raise DeploymtlError("--target trt: the TensorRT exporter (deploymtl.export.trt) is not part of this build",
                             hint="use --target onnx") from None
    require_tensorrt()


def load_model(model_path: str | Path, staging: Path) -> tuple[StaticArtifact, dict | None]:
    """A static artifact from `pruned.pt`, or from `supernet.pt` by pruning it into `staging/pruned`."""
    data = load_torch(model_path, what="model")
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt == STATIC_FORMAT:
        return load_static(model_path), None
    if fmt == SUPERNET_FORMAT:
        try:
            from ..surgery.prune import prune_checkpoint
        except ImportError:
            raise DeploymtlError(f"{model_path} is a supernet checkpoint and the surgeon (deploymtl.surgery.prune) "
                                 "is not part of this build", hint="prune it first: deploymtl prune CKPT") from None
        art, report = prune_checkpoint(model_path, staging / "pruned")
        return art, report
    raise DeploymtlError(f"{model_path} is neither a static model nor a supernet checkpoint",
                         hint=f"expected pruned.pt ({STATIC_FORMAT}) or supernet.pt ({SUPERNET_FORMAT})")


def _sections(art: StaticArtifact, model_path: str | Path) -> tuple[DataConfig, ExportConfig]:
    try:
        return (DataConfig.model_validate(art.recipe.get("data", {})),
                ExportConfig.model_validate(art.recipe.get("export", {})))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise DeploymtlError(f"{model_path}: embedded recipe: {loc}: {err['msg']}") from None


def _data(art: StaticArtifact, data_cfg: DataConfig, n_train: int, where: str) -> dict:
    from ..data import build_datasets

    # Only the first samples are used (verification, calibration); synthetic samples are indexed by seed and
    # position and NYUv2 takes the first files, so a smaller train_size gives the same first samples, faster.
    cfg = data_cfg.model_copy(update={"train_size": max(1, n_train)})
    sets = build_datasets(cfg, art.tasks, where=where)
    i = art.input
    shape = tuple(sets["val"].images.shape[1:])
    if shape != (i["channels"], i["height"], i["width"]):
        raise DeploymtlError(f"{where}: data gives images {shape} but the model expects "
                             f"{(i['channels'], i['height'], i['width'])}", hint="export with the model's own recipe")
    if len(sets["val"]) == 0:
        raise DeploymtlError(f"{where}: the validation split is empty", hint="set data.val_size >= 1")
    return sets


def _take(images: torch.Tensor, n: int) -> np.ndarray:
    idx = np.arange(n) % images.shape[0]
    return np.ascontiguousarray(images[idx].numpy(), dtype=np.float32)


def _reference(model: torch.nn.Module, inputs: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        out = model.eval()(torch.from_numpy(inputs))
    return {k: out[k].float().numpy() for k in names}


def _meta(art: StaticArtifact, precision: str, batch: BatchSpec, removed: list[str]) -> dict[str, Any]:
    i = art.input
    return {"version": __version__, "family": art.family, "tasks": [t.model_dump() for t in art.tasks],
            "input": {"name": onnx_export.INPUT_NAME, "layout": "NCHW", "dtype": "float32",
                      "channels": i["channels"], "height": i["height"], "width": i["width"],
                      "mean": list(i.get("mean", [])), "std": list(i.get("std", []))},
            "precision": precision, "batch": batch.to_dict(), "plan_hash": art.plan_hash,
            "removed_prefixes": removed}


def _lint(proto: onnx.ModelProto, log: Callable[[str], None]) -> tuple[list[dict], list[QdqFinding]]:
    """The report's `lint` (every TensorRT lint issue, logged as warnings) and the Q/DQ rule findings among them."""
    from .trt.lint import lint_with_qdq

    issues, findings = lint_with_qdq(proto)
    for issue in issues:
        log(f"warning: TensorRT lint: {issue}")
    return [i.to_dict() for i in issues], findings


def _outputs_dict(report: CompareReport) -> dict:
    return {k: {"max_abs": r.max_abs, "max_rel": r.max_rel, "mean_abs": r.mean_abs, "cosine": r.cosine,
                "nan_inf": r.nan_inf, "atol_needed": r.atol_needed, "tolerance": r.tolerance.to_dict(),
                "passed": r.passed, "reason": r.reason} for k, r in report.results.items()}


def export_model(model_path: str | Path, out_dir: str | Path, *, target: str = "onnx", precision: str = "fp32",
                 batch: str | BatchSpec | None = None, atol: float | None = None, rtol: float | None = None,
                 per_output: Mapping[str, Mapping[str, float]] | None = None, simplify_graph: bool = True,
                 opset: int | None = None, calibration_samples: int | None = None,
                 max_metric_drop: float | None = None, workspace_mb: int = 1024,
                 timing_cache: str | Path | None = None, threads: int | None = None,
                 int8_activations: str = "symmetric", int8_output_layers: str = "fp32",
                 log: Callable[[str], None] = _echo_none) -> dict[str, Any]:
    """Export, verify and write `out_dir/{model.onnx|model.plan, model.parity.npz, export_report.json}`.

    Returns the report (also written). Raises DeploymtlError (exit 2) on bad input or an export the tools cannot
    do, VerificationError (exit 1) after writing everything when parity, the metric gate or a structural check
    fails. Defaults for batch, opset, calibration samples and max metric drop come from the model's recipe.
    `int8_activations="asymmetric"` (uint8 activations, ONNX Runtime CPU only) trades TensorRT compatibility for
    a little speed on x86 CPUs (see `export.quantize`). `int8_output_layers="fp32"` (default) keeps the layer that
    writes each task output (the head's last 1x1 conv or classifier) in fp32, "int8" quantises it too.
    """
    t_start = time.perf_counter()
    out = check_options(target, precision, out_dir)
    spec = parse_batch(batch) if batch is not None else None
    if max_metric_drop is not None and not max_metric_drop >= 0:
        raise DeploymtlError(f"--max-metric-drop {max_metric_drop}", hint="expected a fraction >= 0, e.g. 0.01")
    if opset is not None and opset < onnx_export.MIN_OPSET:
        raise DeploymtlError(f"--opset {opset} is too old", hint=f"expected >= {onnx_export.MIN_OPSET}")
    if calibration_samples is not None and calibration_samples < 1:
        raise DeploymtlError(f"--calibration-samples {calibration_samples}", hint="expected >= 1")
    if int8_activations not in INT8_ACTIVATIONS:
        raise DeploymtlError(f"--int8-activations: unknown scheme '{int8_activations}'",
                             hint=f"expected one of {', '.join(INT8_ACTIVATIONS)}")
    if int8_output_layers not in INT8_OUTPUT_LAYERS:
        raise DeploymtlError(f"--int8-output-layers: unknown precision '{int8_output_layers}'",
                             hint=f"expected one of {', '.join(INT8_OUTPUT_LAYERS)}")
    if target == "trt" and int8_activations != "symmetric":
        raise DeploymtlError("--int8-activations asymmetric cannot feed TensorRT (it needs zero points of 0)",
                             hint="use symmetric (the default) with --target trt")
    if target == "trt":
        _require_trt()
    prune_failure: VerificationError | None = None
    with output_set(out, owned=EXPORT_FILES) as staging:
        try:
            report = _export(model_path, out, staging, target=target, precision=precision, spec=spec, atol=atol,
                             rtol=rtol, per_output=per_output, simplify_graph=simplify_graph, opset=opset,
                             calibration_samples=calibration_samples, max_metric_drop=max_metric_drop,
                             workspace_mb=workspace_mb, timing_cache=timing_cache, threads=threads, log=log,
                             t_start=t_start, symmetric=int8_activations == "symmetric",
                             float_output_layers=int8_output_layers == "fp32")
        except _PruneFailed as exc:  # the surgeon's failing report ships (under pruned/) for inspection
            prune_failure = exc.error
    if prune_failure is not None:
        raise prune_failure
    if not report["passed"]:
        raise VerificationError(f"export verification failed: {'; '.join(report['failures'])}",
                                hint=f"see {out / REPORT_NAME}")
    return report


def _export(model_path: str | Path, out: Path, staging: Path, *, target: str, precision: str,
            spec: BatchSpec | None, atol: float | None, rtol: float | None,
            per_output: Mapping[str, Mapping[str, float]] | None, simplify_graph: bool, opset: int | None,
            calibration_samples: int | None, max_metric_drop: float | None, workspace_mb: int,
            timing_cache: str | Path | None, threads: int | None, log: Callable[[str], None],
            t_start: float, symmetric: bool = True, float_output_layers: bool = True) -> dict[str, Any]:
    timings: dict[str, float] = {}
    failures: list[str] = []

    def lap(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 3)

    t0 = time.perf_counter()
    try:
        art, prune_report = load_model(model_path, staging)
    except VerificationError as exc:
        if (staging / "pruned").is_dir():
            raise _PruneFailed(exc) from None
        raise
    data_cfg, export_cfg = _sections(art, model_path)
    spec = spec or parse_batch(export_cfg.batch, where=f"{model_path}: export.batch")
    opset = opset or export_cfg.opset
    n_calib = calibration_samples or export_cfg.calibration_samples
    max_drop = export_cfg.max_metric_drop if max_metric_drop is None else float(max_metric_drop)
    names = art.task_names
    tolerances = resolve_tolerances(precision, names, atol=atol, rtol=rtol, per_output=per_output)
    i = art.input
    chw = {"channels": i["channels"], "height": i["height"], "width": i["width"]}
    removed = list(art.extra.get("removed_prefixes") or (prune_report or {}).get("removal", {})
                   .get("removed_prefixes", []))
    sets = _data(art, data_cfg, n_calib if precision == "int8" else 1, f"{model_path}: recipe data")
    inputs = _take(sets["val"].images, spec.max)
    reference = _reference(art.model, inputs, names)
    lap("load", t0)

    log(f"exporting {model_path} ({art.family}, tasks {', '.join(names)}) to ONNX, batch {spec}")
    t0 = time.perf_counter()
    proto = onnx_export.export_onnx(art.model, outputs=names, opset=opset, **chw)
    lap("export", t0)
    problems = onnx_export.check_structure(proto, outputs=names, **chw)
    if problems:
        raise InternalError(f"the exported ONNX graph of {model_path} is malformed: {problems[0]}")
    removed_check = check_removed_parts(proto, art.model, removed)
    if not removed_check["passed"]:
        failures.append(f"removed-parts check: {removed_check['problems'][0]}")

    fp32_tol = resolve_tolerances("fp32", names, atol=atol, rtol=rtol)
    # Each simplification pass is checked on a few samples in one batch > 1 (structure checks already proved the
    # batch axis symbolic; the final parity runs batch 1 and MAX); the references are slices of the main ones.
    n_check = min(len(inputs), PASS_CHECK_SAMPLES)
    check_inputs = inputs[:n_check]
    check_ref = {k: v[:n_check] for k, v in reference.items()}
    if n_check == 1:  # still prove a batch > 1 runs
        check_inputs = np.concatenate([check_inputs, check_inputs])
        check_ref = {k: np.concatenate([v, v]) for k, v in check_ref.items()}

    def verify_candidate(candidate: onnx.ModelProto) -> CompareReport:
        runner = _SessionRunner(candidate, InputSpec(**chw, max_batch=len(check_inputs)), names, threads)
        return compare_outputs(runner.infer(check_inputs), check_ref, fp32_tol)

    passes: list[dict] = []
    if simplify_graph:
        t0 = time.perf_counter()
        proto, results = simplify(proto, verify_candidate, outputs=names, passes=PASSES, **chw)
        passes = [r.to_dict() for r in results]
        for r in results:
            log(f"simplify: {r.name}: {'accepted' if r.accepted else 'rejected: ' + r.reason} "
                f"({r.nodes_before} -> {r.nodes_after} nodes)")
        lap("simplify", t0)

    t0 = time.perf_counter()
    qdq: dict[str, Any] | None = None
    if precision == "fp16":
        from .fp16 import convert_fp16

        proto = convert_fp16(proto)
    elif precision == "int8":
        from .quantize import output_layers, quantize_int8, quantized_ops

        calib = _take(sets["train"].images, n_calib)
        batches = [calib[k:k + CALIBRATION_BATCH] for k in range(0, len(calib), CALIBRATION_BATCH)]
        float_layers = output_layers(proto) if float_output_layers else []
        proto = quantize_int8(proto, batches, symmetric_activations=symmetric, exclude_nodes=float_layers)
        scheme = "int8 symmetric (TensorRT-ready)" if symmetric else "uint8 asymmetric (ONNX Runtime CPU only)"
        qdq = {"calibration_samples": n_calib, "calibration_split": "train", "method": "minmax",
               "scheme": f"{scheme} activations per tensor, int8 symmetric weights per channel, float bias",
               "activations": "symmetric" if symmetric else "asymmetric",
               "quantized_nodes": len(quantized_ops(proto)), "fp32_output_layers": float_layers}
    lap("precision", t0)
    lint, qdq_findings = _lint(proto, log)  # the Q/DQ rules run once, inside the lint (onnxkit.qdq)
    if qdq is not None:  # the scheme's violations among them: one list, one wording
        qdq["issues"] = violations(qdq_findings, scheme_for(symmetric), GraphIndex(proto.graph))
        if qdq["issues"]:
            failures.append(f"Q/DQ graph violates its quantisation scheme: {qdq['issues'][0]}")

    onnx_export.set_metadata(proto, _meta(art, precision, spec, removed))
    final_problems = onnx_export.check_structure(proto, outputs=names, **chw)
    if final_problems:
        failures.append(f"final graph: {final_problems[0]}")
    onnx_path = staging / ONNX_NAME
    onnx.save(proto, str(onnx_path))

    t0 = time.perf_counter()
    from ..backends.load import open_runner

    runner = open_runner(onnx_path, threads=threads)
    lowering = getattr(runner, "lowering", {})  # what ONNX Runtime CPU runs (backends.ort_lowering)
    onnx_report, sizes = compare_runner(runner, inputs, reference, tolerances)
    lap("parity", t0)
    for line in onnx_report.summary().splitlines():
        log(f"parity ({precision}, onnxruntime): {line}")
    save_parity(staging / parity_path(ONNX_NAME).name, inputs, reference,
                {"precision": precision, "tolerances": {k: v.to_dict() for k, v in tolerances.items()},
                 "batch": spec.to_dict(), "split": "val", "reference": "pytorch static model",
                 "plan_hash": art.plan_hash})
    localization = None
    if not onnx_report:
        failures.append(f"ONNX parity failed for {', '.join(onnx_report.failed)}")
        t0 = time.perf_counter()
        loc = localize(proto, art.model, check_inputs, onnx_report.failed[0], tolerances)
        localization = loc.to_dict()
        log(f"localise: {loc.summary()}")
        lap("localize", t0)

    metrics = None
    if precision != "fp32":
        t0 = time.perf_counter()
        val = sets["val"]
        spec_ref = InputSpec(**chw, max_batch=spec.max)
        ref_metrics = evaluate(TorchRunner(art.model, spec_ref, names, "static model"), val.images, val.targets,
                               art.tasks, spec.max)
        cand_metrics = evaluate(runner, val.images, val.targets, art.tasks, spec.max)
        gate = metric_gate(art.tasks, ref_metrics, cand_metrics, precision=precision, max_drop=max_drop)
        metrics = gate.to_dict() | {"samples": len(val), "split": "val"}
        for line in gate.summary().splitlines():
            log(f"metrics: {line}")
        if not gate:
            failures.append(f"{precision} loses more than {max_drop:.2%} of "
                            f"{', '.join(k for k, t in gate.tasks.items() if not t.passed)} (metric gate)")
        lap("metrics", t0)
    runner.close()

    trt_section = None
    outputs = _outputs_dict(onnx_report)
    artifact = ONNX_NAME
    if target == "trt":
        if timing_cache is None and (out / TIMING_CACHE).is_file():  # the default cache lives in the output set
            link_or_copy(out / TIMING_CACHE, staging / TIMING_CACHE)  # the build replaces it, never writes into it
        trt_section, trt_report, trt_sizes = _export_trt(onnx_path, staging, precision, spec, inputs, reference,
                                                         tolerances, workspace_mb, timing_cache, log, timings)
        outputs, sizes, artifact = _outputs_dict(trt_report), trt_sizes, trt_section["plan"]
        if trt_section["precision_not_honoured"]:
            failures.append(trt_section["precision_not_honoured"])
        if not trt_report:
            failures.append(f"TensorRT parity failed for {', '.join(trt_report.failed)}")

    report = {
        "target": target, "precision": precision, "batch": spec.to_dict(), "artifact": artifact,
        "onnx": ONNX_NAME, "opset": onnx_export.opset_of(proto), "requested_opset": opset,
        "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
        "inputs": {"name": onnx_export.INPUT_NAME, "shape": [onnx_export.BATCH_DIM, *chw.values()]},
        "tasks": names, "outputs": outputs, "batch_sizes_checked": sizes,
        "onnx_outputs": _outputs_dict(onnx_report) if target == "trt" else None,
        "metrics": metrics, "passes": passes, "removed_parts_check": removed_check, "structure": final_problems,
        "lint": lint, "quantization": qdq, "onnxruntime_cpu_lowering": lowering, "localization": localization,
        "trt": trt_section,
        "source": {"model": str(model_path), "family": art.family, "plan_hash": art.plan_hash,
                   "pruned": prune_report is not None,
                   "prune_passed": None if prune_report is None else prune_report.get("passed")},
        "options": {"target": target, "precision": precision, "batch": str(spec), "atol": atol, "rtol": rtol,
                    "per_output": dict(per_output or {}), "simplify": simplify_graph, "opset": opset,
                    "calibration_samples": n_calib, "max_metric_drop": max_drop, "workspace_mb": workspace_mb,
                    "int8_activations": "symmetric" if symmetric else "asymmetric",
                    "threads": threads},
        "deploymtl_version": __version__, "failures": failures, "passed": not failures,
    }
    timings["total"] = round(time.perf_counter() - t_start, 3)
    report["timings"] = timings
    write_json(staging / "recipe.json", art.recipe)
    write_json(staging / REPORT_NAME, report)
    log(f"export {'passed' if report['passed'] else 'FAILED'}: {out / artifact} ({timings['total']:.1f} s)")
    return report


def _export_trt(onnx_path: Path, staging: Path, precision: str, spec: BatchSpec, inputs: np.ndarray,
                reference: dict[str, np.ndarray], tolerances: dict, workspace_mb: int,
                timing_cache: str | Path | None, log: Callable[[str], None], timings: dict[str, float]
                ) -> tuple[dict, CompareReport, list[int]]:
    from ..backends.load import open_runner
    from .trt.build import export_trt

    t0 = time.perf_counter()
    honoured = None
    try:
        manifest = export_trt(onnx_path, staging, precision=precision, batch=spec, workspace_mb=workspace_mb,
                              timing_cache=Path(timing_cache) if timing_cache else None)
    except VerificationError as exc:  # engine built but not in the requested precision: keep it, report it
        if not (staging / "model.plan.json").is_file():
            raise
        manifest = json.loads((staging / "model.plan.json").read_text(encoding="utf-8"))
        honoured = exc.one_line()
    timings["trt_build"] = round(time.perf_counter() - t0, 3)
    plan = staging / str(manifest.get("plan", "model.plan"))
    t0 = time.perf_counter()
    runner = open_runner(plan)
    try:
        report, sizes = compare_runner(runner, inputs, reference, tolerances)
    finally:
        runner.close()
    timings["trt_parity"] = round(time.perf_counter() - t0, 3)
    for line in report.summary().splitlines():
        log(f"parity ({precision}, tensorrt): {line}")
    return {"plan": plan.name, "manifest": manifest, "precision_not_honoured": honoured}, report, sizes
