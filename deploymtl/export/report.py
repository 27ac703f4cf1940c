"""`ExportReport`: what one export did, one typed section per stage; `to_dict()` is `export_report.json`.

The sections come from the stages in order (fp32 -> simplify -> precision -> shaping -> lint -> verification ->
engine) and each
carries the failures it found, so the report's `failures` keep that order. The JSON keys are a contract (the demo,
the pipeline and users read them): `to_dict` writes exactly these, in this order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .. import __version__
from ..formats.onnx_metadata import BATCH_DIM, INPUT_NAME
from ..verify.compare import CompareReport
from .options import ExportOptions
from .shaping import RuntimeSection

ONNX_NAME = "model.onnx"
REPORT_NAME = "export_report.json"


@dataclass
class Source:
    """What was exported: the path the user gave and whether it was a supernet pruned on the way."""

    model: str
    pruned: bool = False
    prune_passed: bool | None = None


@dataclass
class Fp32Section:
    """torch -> ONNX: the exported graph's opset and the check that nothing removed by the surgeon is in it."""

    channels: int
    height: int
    width: int
    removed_parts_check: dict[str, Any]
    failures: list[str] = field(default_factory=list)


@dataclass
class SimplifySection:
    passes: list[dict[str, Any]] = field(default_factory=list)  # one entry per onnxslim pass, accepted or not


@dataclass
class PrecisionSection:
    quantization: dict[str, Any] | None = None  # int8 only: calibration, scheme, quantised nodes
    failures: list[str] = field(default_factory=list)
    mix: dict[str, Any] | None = None  # int8/auto: every group's precision, timings, accuracy control (`mixed.py`)
    requested: str | None = None  # the precision asked for when it differs from the file's (auto)


@dataclass
class LintSection:
    """The TensorRT lint of the final graph, and (int8) the violations of the export's Q/DQ scheme among its
    findings: reported as the quantisation's `issues`."""

    issues: list[dict[str, Any]]
    qdq_issues: list[str] | None = None
    failures: list[str] = field(default_factory=list)


@dataclass
class VerificationSection:
    """The final ONNX file: interface, parity on ONNX Runtime, localisation, metric gate."""

    structure: list[str]
    parity: CompareReport
    batch_sizes: list[int]
    localization: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    failures: list[str] = field(default_factory=list)


@dataclass
class EngineSection:
    """`--target trt`: the engine built from the verified ONNX and its parity through the engine runner."""

    engine: str  # the engine file's name (model.plan)
    manifest: dict[str, Any]
    precision_not_honoured: str | None
    parity: CompareReport
    batch_sizes: list[int]
    failures: list[str] = field(default_factory=list)


@dataclass
class ExportReport:
    options: ExportOptions
    family: str
    plan_hash: str
    tasks: list[str]
    opset: int  # of the final graph (the exporter emits >= 18 whatever was requested)
    source: Source
    fp32: Fp32Section
    simplify: SimplifySection
    precision: PrecisionSection
    runtime: RuntimeSection
    lint: LintSection
    verification: VerificationSection
    engine: EngineSection | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def failures(self) -> list[str]:
        stages = [self.fp32, self.precision, self.runtime, self.lint, self.verification,
                  *([self.engine] if self.engine else [])]
        return [f for s in stages for f in s.failures]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def artifact(self) -> str:
        """The file the export delivers: the engine for `--target trt`, else the ONNX model."""
        return self.engine.engine if self.engine else ONNX_NAME

    def to_dict(self) -> dict[str, Any]:
        o, v, e, f, q = self.options, self.verification, self.engine, self.fp32, self.precision.quantization
        return {
            "target": o.target, "precision": o.precision, "runtime": self.runtime.to_dict(),
            "batch": o.batch.to_dict(), "artifact": self.artifact,
            "onnx": ONNX_NAME, "opset": self.opset, "requested_opset": o.opset,
            "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
            "inputs": {"name": INPUT_NAME, "shape": [BATCH_DIM, f.channels, f.height, f.width],
                       "dtype": "uint8" if o.bake_preprocessing else "float32"},
            "tasks": self.tasks, "outputs": outputs_dict(e.parity if e else v.parity),
            "batch_sizes_checked": e.batch_sizes if e else v.batch_sizes,
            "onnx_outputs": outputs_dict(v.parity) if e else None,
            "metrics": v.metrics, "passes": self.simplify.passes, "removed_parts_check": f.removed_parts_check,
            "structure": v.structure, "lint": self.lint.issues,
            "quantization": None if q is None else {**q, "issues": self.lint.qdq_issues},
            # what deploymtl's ONNX Runtime session ran differently from the file: nothing since files are shaped
            # at export (`runtime`); kept for readers of earlier reports
            "onnxruntime_cpu_lowering": {}, "localization": v.localization,
            "trt": None if e is None else {"plan": e.engine, "manifest": e.manifest,
                                           "precision_not_honoured": e.precision_not_honoured},
            "source": {"model": self.source.model, "family": self.family, "plan_hash": self.plan_hash,
                       "pruned": self.source.pruned, "prune_passed": self.source.prune_passed},
            "options": {"target": o.target, "precision": o.precision, "batch": str(o.batch), "atol": o.atol,
                        "rtol": o.rtol, "per_output": dict(o.per_output), "simplify": o.simplify, "opset": o.opset,
                        "calibration_samples": o.calibration_samples, "max_metric_drop": _budgets_value(o),
                        "workspace_mb": o.workspace_mb, "int8_activations": o.int8_activations,
                        "threads": o.threads, "bake_preprocessing": o.bake_preprocessing, "runtime": o.runtime,
                        "accuracy_control": o.accuracy_control},
            "deploymtl_version": __version__, "failures": self.failures, "passed": self.passed,
            "timings": dict(self.timings),
            # added with per-task budgets and the precision mix (keys are only ever appended)
            "requested_precision": self.precision.requested or o.precision,
            "budgets": o.max_metric_drop.to_dict(self.tasks) if o.max_metric_drop is not None else None,
            "precision_mix": self.precision.mix,
        }


def _budgets_value(o: ExportOptions) -> float | str | None:
    """The budgets in the options as a person wrote them: the one relative fraction, or the per-task text."""
    b = o.max_metric_drop
    if b is None:
        return None
    uniform = b.uniform_relative()
    return uniform if uniform is not None else b.text()


def outputs_dict(report: CompareReport) -> dict[str, dict[str, Any]]:
    """Per output: the comparison's statistics, its tolerance and verdict."""
    return {k: {"max_abs": r.max_abs, "max_rel": r.max_rel, "mean_abs": r.mean_abs, "cosine": r.cosine,
                "nan_inf": r.nan_inf, "atol_needed": r.atol_needed, "tolerance": r.tolerance.to_dict(),
                "passed": r.passed, "reason": r.reason} for k, r in report.results.items()}
