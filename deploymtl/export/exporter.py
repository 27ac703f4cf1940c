"""`export_model`: a static model (`pruned.pt`) -> verified ONNX (fp32/fp16/int8) or TensorRT engine, as stages.

Before any work (`begin`): the output directory can be replaced as a whole, and `--target trt` finds TensorRT.
Then, on the loaded static artifact (`run_export`), with the options completed from the model's own recipe (and,
with `bake_preprocessing`, the input normalisation put into the graph first: `preprocess.py`):
1. fp32 (`fp32.py`): torch.onnx export, interface check, removed-parts check;
2. simplify (`simplify.py`): onnxslim passes, each re-verified on ONNX Runtime;
3. precision (`precision.py`): fp16, or int8 Q/DQ calibrated on the training split;
4. shaping (`shaping.py`): the graph in the form of the runtime it is written for (`--for`: ort-cpu padding and
   uint8 folding, or the TensorRT form as it is);
5. lint (`verification.lint_graph`): the TensorRT lint, whose Q/DQ rules check the int8 graph against its scheme;
6. the final graph gets its `deploymtl.*` metadata and is written; verification (`verification.py`): structure,
   parity at batch 1 and MAX against the PyTorch static model on real validation samples (the parity set saved
   beside it), localisation on failure, metric gate, all on that file as written;
7. TensorRT (`trt/engine.py`): the engine built from that ONNX, parity through its runner.
Each stage returns its section of the `ExportReport` (`report.py`), written as `export_report.json`.

Everything is written into a staging directory beside `out_dir` that replaces it as a whole at the end
(`deploymtl.outdir.output_set`), so bad input, Ctrl-C or a kill leaves the previous export untouched and never a
mix of two. A failed verification still ships the artifact and its report for inspection, then raises
VerificationError (exit 1). A supernet is pruned first by whoever composes the two (`deploymtl export
supernet.pt`, `cli/export.py`), into `pruned/` of the same output set, and handed to `run_export`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx

from .. import __version__
from ..backends import trt_env
from ..config import PIXEL_SCALE, ExportConfig
from ..errors import VerificationError
from ..formats.onnx_metadata import INPUT_NAME, set_metadata
from ..formats.static import StaticArtifact, load_static
from ..io import write_json
from ..outdir import check_output_dir, output_set
from ..verify.compare import resolve_tolerances
from .context import ExportContext
from .fp32 import export_fp32
from .onnx import opset_of
from .options import ExportOptions
from .precision import convert_precision
from .preprocess import baked
from .report import ONNX_NAME, REPORT_NAME, ExportReport, SimplifySection, Source
from .samples import ExportSamples
from .shaping import RuntimeSection, shape_for_runtime
from .simplify import simplify_stage
from .trt.engine import build_engine
from .verification import lint_graph, verify_onnx

# Everything an export may write: a name of these the new export does not write is dropped from the directory
# (an ONNX export after a TensorRT one leaves no engine of another graph behind); other files are kept.
EXPORT_FILES = (ONNX_NAME, "model.parity.npz", REPORT_NAME, "recipe.json", "model.plan", "model.plan.json",
                "model.plan.layers.json", "pruned")


def _echo_none(_: str) -> None:
    pass


def export_model(model: str | Path, out_dir: str | Path, options: ExportOptions | None = None, *,
                 log: Callable[[str], None] = _echo_none) -> ExportReport:
    """Export, verify and write `out_dir/{model.onnx|model.plan, model.parity.npz, export_report.json}`.

    `model` is a `pruned.pt`; options left unset (batch, opset, calibration samples, max metric drop) come from its
    recipe. Returns the report (also written). Raises DeploymtlError (exit 2) on bad input or an export the tools
    cannot do, VerificationError (exit 1) after writing everything when parity, the metric gate or a structural
    check fails.
    """
    started = time.perf_counter()
    options = options or ExportOptions()
    out = begin(out_dir, options)
    with output_set(out, owned=EXPORT_FILES) as staging:
        art = load_static(model)
        report = run_export(art, staging, out, options, Source(model=str(model)), log=log, started=started)
    return check_passed(report, out)


def begin(out_dir: str | Path, options: ExportOptions) -> Path:
    """Checks before any work: the output directory can be replaced as a whole; `--target trt` has TensorRT."""
    check_output_dir(out_dir)
    if options.target == "trt":
        trt_env.require_tensorrt()
    return Path(out_dir)


def run_export(art: StaticArtifact, staging: Path, out: Path, options: ExportOptions, source: Source, *,
               log: Callable[[str], None] = _echo_none, started: float | None = None) -> ExportReport:
    """The stages of the module docstring on a loaded artifact, writing into `staging` (the set being made for
    `out`); `started` is when the command began (the report's total time)."""
    started = time.perf_counter() if started is None else started
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    options = options.with_recipe(art.recipe_section("export", ExportConfig, source.model))
    if options.bake_preprocessing:
        art = baked(art, source.model)
    names = art.task_names
    options.max_metric_drop.check_tasks(names, "--max-metric-drop / export.max_metric_drop")
    # auto is checked as int8 until the precision stage has chosen (`ExportContext.choose_precision`)
    checked_as = "int8" if options.precision == "auto" else options.precision
    tolerances = resolve_tolerances(checked_as, names, atol=options.atol, rtol=options.rtol,
                                    per_output=options.per_output)
    n_train = options.calibration_samples if options.precision in ("int8", "auto") else 1
    samples = ExportSamples.load(art, options.batch.max, n_train, source.model)
    timings["load"] = round(time.perf_counter() - t0, 3)
    ctx = ExportContext(art, options, samples, tolerances, staging, source.model, log, timings)

    log(f"exporting {source.model} ({art.family}, tasks {', '.join(names)}) to ONNX, batch {options.batch}")
    proto, fp32 = export_fp32(ctx)
    proto, simplified = simplify_stage(ctx, proto) if options.simplify else (proto, SimplifySection())
    proto, precision = convert_precision(ctx, proto)
    options = ctx.options  # auto: now the precision it chose
    proto, runtime = shape_for_runtime(ctx, proto)
    lint = lint_graph(ctx, proto)
    set_metadata(proto, onnx_metadata(art, options, runtime))
    onnx_path = staging / ONNX_NAME
    onnx.save(proto, str(onnx_path))
    verification = verify_onnx(ctx, proto, onnx_path)
    engine = build_engine(ctx, onnx_path, out) if options.target == "trt" else None

    report = ExportReport(options, art.family, art.plan_hash, names, opset_of(proto), source, fp32, simplified,
                          precision, runtime, lint, verification, engine, timings)
    timings["total"] = round(time.perf_counter() - started, 3)
    write_json(staging / "recipe.json", art.recipe)
    write_json(staging / REPORT_NAME, report.to_dict())
    log(f"export {'passed' if report.passed else 'FAILED'}: {out / report.artifact} ({timings['total']:.1f} s)")
    return report


def onnx_metadata(art: StaticArtifact, options: ExportOptions, runtime: RuntimeSection) -> dict[str, Any]:
    """The `deploymtl.*` metadata the ONNX file describes itself with (`formats.onnx_metadata`)."""
    i = art.input
    return {"version": __version__, "family": art.family, "tasks": [t.model_dump() for t in art.tasks],
            "input": {"name": INPUT_NAME, "layout": "NCHW", "dtype": i.get("dtype", "float32"),
                      "channels": i["channels"], "height": i["height"], "width": i["width"],
                      "mean": list(i.get("mean") or []), "std": list(i.get("std") or []),
                      "channel_order": i.get("channel_order", "RGB"), "scale": i.get("scale", PIXEL_SCALE),
                      "preprocessing": "graph" if i.get("dtype") == "uint8" else "caller"},
            "precision": options.precision, "batch": options.batch.to_dict(), "plan_hash": art.plan_hash,
            "removed_prefixes": art.removed_prefixes, "runtime": runtime.metadata()}


def check_passed(report: ExportReport, out: Path) -> ExportReport:
    """The report, or VerificationError (exit 1) naming what failed once the set is written."""
    if not report.passed:
        raise VerificationError(f"export verification failed: {'; '.join(report.failures)}",
                                hint=f"see {out / REPORT_NAME}")
    return report
