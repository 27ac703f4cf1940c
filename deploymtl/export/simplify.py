"""Graph simplification with re-verification after every pass (onnxslim).

onnxslim's optimisations run one at a time, in its own order: constant folding, graph fusion (its pattern
registry: Conv+BN/Add/Mul, Pad+Conv, Gemm, Reshape/Slice/Transpose eliminations, ...), dead-node elimination,
common-subexpression elimination and weight tying. After each pass the candidate graph must
1. keep the interface: the same input and output names, a symbolic batch axis on the input and every output, and
   pass `onnx.checker`;
2. compute what the graph before it computed: a caller-supplied `verify(model) -> CompareReport` (ONNX Runtime on
   real batches against the PyTorch reference, at more than one batch size) must pass.
A pass that fails either is rejected and reported with its reason; the graph before it goes on to the next pass.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import onnx

from ..backends.base import InputSpec, Runner
from ..formats.onnx_metadata import node_scope
from ..onnxkit.session import QUIET, open_session
from ..verify.compare import CompareReport, compare_outputs, resolve_tolerances
from .context import ExportContext
from .onnx import check_structure
from .report import SimplifySection

# onnxslim's OptimizationSettings keys, in the order its `optimize` applies them.
PASSES = ("constant_folding", "graph_fusion", "dead_node_elimination", "subexpression_elimination", "weight_tying")


@dataclass
class PassResult:
    name: str
    accepted: bool
    reason: str
    nodes_before: int
    nodes_after: int
    max_abs: float | None
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def run_pass(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """Apply one onnxslim optimisation (all others skipped) to a copy of `model`."""
    import onnxslim

    if name not in PASSES:
        raise ValueError(f"unknown onnxslim pass {name}")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    logging.getLogger("onnxslim").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        out = onnxslim.slim(copy, skip_optimizations=[p for p in PASSES if p != name])
    if out is None:
        raise RuntimeError("onnxslim returned no model")
    carry_scope_names(model, out)
    # onnxslim rebuilds the graph; metadata_props and the model-level fields must survive it.
    if not out.metadata_props and model.metadata_props:
        out.metadata_props.extend(model.metadata_props)
    return out


def carry_scope_names(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    """A node a pass created (e.g. Conv fused with the following Mul) gets the module scope of the node that
    produced its output before the pass, so `layers.<n>/<Op>` names keep mapping onto static modules."""
    scope_of_tensor = {t: node_scope(n) for n in before.graph.node for t in n.output if node_scope(n)}
    names = {n.name for n in after.graph.node}
    for node in after.graph.node:
        if node_scope(node):
            continue
        scope = next((scope_of_tensor[t] for t in node.output if t in scope_of_tensor), None)
        if scope:
            base, k = f"{scope}/{node.op_type}", 0
            name = base
            while name in names:
                k += 1
                name = f"{base}_{k}"
            names.add(name)
            node.name = name


def simplify(model: onnx.ModelProto, verify: Callable[[onnx.ModelProto], object], *, outputs: list[str],
             channels: int, height: int, width: int, passes: tuple[str, ...] = PASSES,
             pass_fn: Callable[[onnx.ModelProto, str], onnx.ModelProto] = run_pass
             ) -> tuple[onnx.ModelProto, list[PassResult]]:
    """Run `passes` in order, keeping each only if the interface holds and `verify` passes.

    `verify(candidate)` returns a truthy report when the candidate matches the reference; the report's
    `results[...].max_abs` values are recorded when present. Returns the final model and one result per pass.
    """
    current = model
    results: list[PassResult] = []
    for name in passes:
        t0 = time.perf_counter()
        before = len(current.graph.node)
        try:
            candidate = pass_fn(current, name)
        except Exception as exc:  # noqa: BLE001 - a crashing pass is rejected like a wrong one
            results.append(PassResult(name, False, f"pass failed: {type(exc).__name__}: {str(exc)[:160]}", before,
                                      before, None, time.perf_counter() - t0))
            continue
        after = len(candidate.graph.node)
        if candidate.graph.SerializeToString() == current.graph.SerializeToString():
            results.append(PassResult(name, True, "no change", before, after, None, time.perf_counter() - t0))
            continue  # nothing to re-verify: the graph is byte-identical
        problems = check_structure(candidate, outputs=outputs, channels=channels, height=height, width=width)
        if problems:
            results.append(PassResult(name, False, "; ".join(problems), before, after, None,
                                      time.perf_counter() - t0))
            continue
        try:
            report = verify(candidate)
        except Exception as exc:  # noqa: BLE001 - a graph ONNX Runtime cannot run is a rejected graph
            results.append(PassResult(name, False, f"does not run: {str(exc).splitlines()[0][:160]}", before, after,
                                      None, time.perf_counter() - t0))
            continue
        stats = getattr(report, "results", {})
        max_abs = max((r.max_abs for r in stats.values()), default=None)
        if not report:
            failed = ", ".join(getattr(report, "failed", [])) or "outputs"
            results.append(PassResult(name, False, f"changes {failed} beyond tolerance", before, after, max_abs,
                                      time.perf_counter() - t0))
            continue
        results.append(PassResult(name, True, "", before, after, max_abs, time.perf_counter() - t0))
        current = candidate
    return current, results


class _SessionRunner(Runner):
    """ONNX Runtime on an in-memory graph (simplification candidates are never written to disk)."""

    backend = "onnxruntime"

    def __init__(self, proto: onnx.ModelProto, spec: InputSpec, outputs: list[str], threads: int | None) -> None:
        self.session = open_session(proto, threads=threads, log_severity=QUIET, label="<in-memory graph>")
        super().__init__(spec, outputs, "<in-memory graph>")

    def _infer(self, image: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, {"image": image}), strict=True))


def simplify_stage(ctx: ExportContext, proto: onnx.ModelProto) -> tuple[onnx.ModelProto, SimplifySection]:
    """The export's simplify stage: every pass checked on ONNX Runtime against the PyTorch reference on a few real
    samples in one batch > 1, at fp32 tolerances (`ExportSamples.check_inputs`)."""
    names, s, o = ctx.names, ctx.samples, ctx.options
    fp32_tol = resolve_tolerances("fp32", names, atol=o.atol, rtol=o.rtol)

    def verify_candidate(candidate: onnx.ModelProto) -> CompareReport:
        spec = InputSpec(**ctx.chw, dtype=ctx.input_dtype, max_batch=len(s.check_inputs))
        runner = _SessionRunner(candidate, spec, names, o.threads)
        return compare_outputs(runner.infer(s.check_inputs), s.check_reference, fp32_tol)

    with ctx.timed("simplify"):
        proto, results = simplify(proto, verify_candidate, outputs=names, passes=PASSES, **ctx.chw)
        for r in results:
            ctx.log(f"simplify: {r.name}: {'accepted' if r.accepted else 'rejected: ' + r.reason} "
                    f"({r.nodes_before} -> {r.nodes_after} nodes)")
    return proto, SimplifySection([r.to_dict() for r in results])
