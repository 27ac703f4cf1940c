"""The TensorRT stage: the engine (`model.plan`, the name Triton expects) built from the verified ONNX
(`build.export_trt`), then its parity through the engine runner on the same samples and tolerances as the ONNX."""

from __future__ import annotations

import json
from pathlib import Path

from ...outdir import link_or_copy
from ...verify.parity import compare_runner
from ..context import ExportContext
from ..report import EngineSection
from . import build

TIMING_CACHE = "timing.cache"


def build_engine(ctx: ExportContext, onnx_path: Path, out: Path) -> EngineSection:
    """Build into the staging directory; `out` is the output directory whose `timing.cache` a build reuses."""
    from ...backends import load
    from ...errors import VerificationError

    o, staging = ctx.options, ctx.staging
    if o.timing_cache is None and (out / TIMING_CACHE).is_file():  # the default cache lives in the output set
        link_or_copy(out / TIMING_CACHE, staging / TIMING_CACHE)  # the build replaces it, never writes into it
    honoured = None
    with ctx.timed("trt_build"):
        try:
            manifest = build.export_trt(onnx_path, staging, precision=o.precision, batch=o.batch,
                                        workspace_mb=o.workspace_mb, timing_cache=o.timing_cache)
        except VerificationError as exc:  # built, but not in the requested precision: keep it, report it
            if not (staging / "model.plan.json").is_file():
                raise
            manifest = json.loads((staging / "model.plan.json").read_text(encoding="utf-8"))
            honoured = exc.one_line()
    engine = staging / str(manifest.get("plan", build.ENGINE_NAME))
    with ctx.timed("trt_parity"):
        runner = load.open_runner(engine)
        try:
            parity, sizes = compare_runner(runner, ctx.samples.inputs, ctx.samples.reference, ctx.tolerances)
        finally:
            runner.close()
    for line in parity.summary().splitlines():
        ctx.log(f"parity ({o.precision}, tensorrt): {line}")
    failures = [honoured] if honoured else []
    if not parity:
        failures.append(f"TensorRT parity failed for {', '.join(parity.failed)}")
    return EngineSection(engine.name, manifest, honoured, parity, sizes, failures)
