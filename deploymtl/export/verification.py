"""The checks of the final graph: the TensorRT lint with the Q/DQ scheme (`lint_graph`), then on the written file
(`verify_onnx`) the interface, parity on ONNX Runtime at batch 1 and MAX against the PyTorch static model (the
parity set is saved beside the file), the first diverging layer named when parity fails (`verify.localize`), and
the task-metric gate for fp16/int8 (`verify.metrics_gate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from ..backends.base import InputSpec, Runner
from ..backends.torch_runner import TorchRunner
from ..formats.parity import parity_path, save_parity
from ..onnxkit.index import GraphIndex
from ..onnxkit.qdq import scheme_for, violations
from ..verify.localize import localize
from ..verify.metrics_gate import evaluate, metric_gate
from ..verify.parity import compare_runner
from .context import ExportContext
from .onnx import check_structure
from .report import LintSection, VerificationSection


def verify_onnx(ctx: ExportContext, proto: onnx.ModelProto, onnx_path: Path) -> VerificationSection:
    """Check the graph written at `onnx_path` (`proto` is its content)."""
    from ..backends.load import open_runner

    o, s = ctx.options, ctx.samples
    structure = check_structure(proto, outputs=ctx.names, **ctx.chw)
    failures = [f"final graph: {structure[0]}"] if structure else []
    with ctx.timed("parity"):
        runner = open_runner(onnx_path, threads=o.threads)  # the written file, as every reader opens it
        parity, sizes = compare_runner(runner, s.inputs, s.reference, ctx.tolerances)
    try:
        for line in parity.summary().splitlines():
            ctx.log(f"parity ({o.precision}, onnxruntime): {line}")
        save_parity(ctx.staging / parity_path(onnx_path).name, s.inputs, s.reference,
                    {"precision": o.precision, "tolerances": {k: v.to_dict() for k, v in ctx.tolerances.items()},
                     "batch": o.batch.to_dict(), "split": "val", "reference": "pytorch static model",
                     "plan_hash": ctx.art.plan_hash, "runtime": o.shaped_for})
        localization = None
        if not parity:
            failures.append(f"ONNX parity failed for {', '.join(parity.failed)}")
            with ctx.timed("localize"):
                loc = localize(proto, ctx.art.model, s.check_inputs, parity.failed[0], ctx.tolerances)
                localization = loc.to_dict()
                ctx.log(f"localise: {loc.summary()}")
        metrics = None
        if o.precision != "fp32":
            with ctx.timed("metrics"):
                metrics = _metric_gate(ctx, runner, failures)
    finally:
        runner.close()
    return VerificationSection(structure, parity, sizes, localization, metrics, failures)


def lint_graph(ctx: ExportContext, proto: onnx.ModelProto) -> LintSection:
    """The TensorRT lint of the final graph (each issue logged as a warning); for int8, the violations of the export's
    Q/DQ scheme among its findings: the rules run once, inside the lint (`onnxkit.qdq`), with one wording. A graph
    shaped for trt must have no lint error at all."""
    from .trt.lint import errors, lint_with_qdq

    o = ctx.options
    issues, findings = lint_with_qdq(proto)
    if o.shaped_for != "trt" and issues and issues[0].op == "form":
        # a file written for ONNX Runtime CPU is not a TensorRT graph by design: its form says so in one line,
        # and the per-node findings it explains (every uint8 quantiser) stay in the report, not on the console
        more = f" ({len(issues) - 1} per-node finding(s) it explains in export_report.json)" if len(issues) > 1 else ""
        ctx.log(f"note: TensorRT lint: {issues[0].message}{more}")
    else:
        for issue in issues:
            ctx.log(f"warning: TensorRT lint: {issue}")
    qdq_issues, failures = None, []
    if o.precision == "int8":
        qdq_issues = violations(findings, scheme_for(o.symmetric, o.shaped_for), GraphIndex(proto.graph))
        if qdq_issues:
            failures.append(f"Q/DQ graph violates its quantisation scheme: {qdq_issues[0]}")
    if o.shaped_for == "trt" and o.target == "onnx" and errors(issues):  # --target trt refuses them before building
        failures.append(f"the graph shaped for trt fails the TensorRT lint: {errors(issues)[0]}")
    return LintSection([i.to_dict() for i in issues], qdq_issues, failures)


def _metric_gate(ctx: ExportContext, runner: Runner, failures: list[str]) -> dict[str, Any]:
    """Each task's primary metric on the whole validation split: the candidate against the fp32 static model.
    Skipped, and said so, when the data has no targets for the tasks (an imported model's synthetic images): parity
    is then the only check, and no metric is made up."""
    o, art, val = ctx.options, ctx.art, ctx.samples.sets["val"]
    missing = [t for t in ctx.names if t not in val.targets]
    if missing:
        reason = (f"the recipe's data ({ctx.samples.data_source}) has no targets for {', '.join(missing)}: task "
                  "metrics cannot be computed, parity is the check")
        ctx.log(f"metrics: skipped: {reason}")
        return {"skipped": True, "reason": reason, "passed": None, "samples": len(val), "split": "val"}
    reference = TorchRunner(art.model, InputSpec(**ctx.chw, dtype=ctx.input_dtype, max_batch=o.batch.max), ctx.names,
                            "static model")
    ref_metrics = evaluate(reference, val.images, val.targets, art.tasks, o.batch.max)
    cand_metrics = evaluate(runner, val.images, val.targets, art.tasks, o.batch.max)
    gate = metric_gate(art.tasks, ref_metrics, cand_metrics, precision=o.precision, budgets=o.max_metric_drop)
    for line in gate.summary().splitlines():
        ctx.log(f"metrics: {line}")
    if not gate:
        failures.append(f"{o.precision} loses more than its budget of " + ", ".join(
            f"{k} ({t.budget['text']})" for k, t in gate.tasks.items() if not t.passed) + " (metric gate)")
    return gate.to_dict() | {"samples": len(val), "split": "val"}
