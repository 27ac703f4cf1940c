"""The int8 precision mix: which quantised groups (`qdq_groups`) stay int8 and which go back to float.

`--precision int8` (accuracy control on, the default): the all-int8 graph, then groups reverted to float until
every task keeps its budget (`accuracy_control`, on the validation split with each task's own metric).

`--precision auto`: speed first, then accuracy, then the whole graph:
1. time, on the target, the fp32 graph, the all-int8 graph and, per group, the all-int8 graph with that group in
   float (`group_timing`); a group whose float version makes the graph faster (by more than `SPEED_MARGIN`)
   starts in float;
2. accuracy control from there, until every budget holds;
3. time the candidates as whole graphs, in one run: fp32, int8 (with its own accuracy control when all-int8
   misses a budget) and the mix; ship the fastest of those that keep every budget (fp32 always does). So `auto` is
   never slower than fp32 or than int8 on the machine that measured it, within the timing's noise.

Every variant is the fp32 graph quantised again with the float groups excluded (calibration ranges computed once,
`quantize_int8(calibration_cache=...)`), then shaped for the export's runtime exactly as the file will be
(`shaping.shaped_graph`), so what is measured and validated here is the graph the file will hold. A graph shaped
for TensorRT cannot be timed without TensorRT: auto then keeps int8 wherever the budgets allow and says why.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from ..backends.base import InputSpec
from ..backends.torch_runner import TorchRunner
from ..onnxkit.session import QUIET, open_session
from ..verify.metrics_gate import GateReport, evaluate, metric_gate
from .accuracy_control import ControlResult, accuracy_control
from .context import ExportContext
from .group_timing import relative_cost, time_graphs
from .qdq_groups import QdqGroup, qdq_groups
from .quantize import quantize_int8
from .shaping import shaped_graph

SPEED_MARGIN = 0.01  # a group starts float when that makes the graph at least 1% faster (below: timing noise)
FINAL_ROUNDS = 9  # the last comparison is of three graphs: more rounds, less noise
MIN_SUBSET = 8  # ranking items at least; else a quarter of the validation split


@dataclass
class MixResult:
    proto: onnx.ModelProto  # the chosen graph, unshaped (the shaping stage shapes it)
    precision: str  # what the file is: "int8" (possibly with float groups) or "fp32"
    report: dict[str, Any]


class _Session:
    """`infer` over an in-memory graph on ONNX Runtime CPU: outputs by name, as `metrics_gate.evaluate` reads."""

    def __init__(self, graph: bytes, threads: int | None) -> None:
        self._s = open_session(graph, threads=threads, log_severity=QUIET)
        self._input = self._s.get_inputs()[0].name
        self._names = [o.name for o in self._s.get_outputs()]

    def infer(self, image: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self._names, self._s.run(None, {self._input: image}), strict=True))


class _Variants:
    """The fp32 graph quantised with some groups kept float, each made once; its shaped bytes and its metrics."""

    def __init__(self, ctx: ExportContext, fp32: onnx.ModelProto, batches: list[np.ndarray],
                 base_float: list[str], cache: Path) -> None:
        self.ctx, self.fp32, self.batches, self.base_float, self.cache = ctx, fp32, batches, base_float, cache
        self._protos: dict[frozenset[str], onnx.ModelProto] = {}
        self._bytes: dict[frozenset[str], bytes] = {}
        self.groups: dict[str, QdqGroup] = {}

    def proto(self, float_groups: frozenset[str]) -> onnx.ModelProto:
        if float_groups not in self._protos:
            nodes = [n for g in sorted(float_groups) for n in self.groups[g].nodes]
            self._protos[float_groups] = quantize_int8(
                self.fp32, self.batches, symmetric_activations=self.ctx.options.symmetric,
                exclude_nodes=self.base_float + nodes, calibration_cache=self.cache)
        return self._protos[float_groups]

    def shaped(self, float_groups: frozenset[str] | None) -> bytes:
        """The graph as the file would hold it; None is the fp32 graph."""
        key = frozenset({"<fp32>"}) if float_groups is None else float_groups
        if key not in self._bytes:
            proto = self.fp32 if float_groups is None else self.proto(float_groups)
            precision = "fp32" if float_groups is None else "int8"
            self._bytes[key] = shaped_graph(proto, self.ctx.options.shaped_for, precision).SerializeToString()
        return self._bytes[key]


class _Validation:
    """Task metrics of the variants on the validation split (whole, and the ranking subset), against the fp32
    static model's; each graph evaluated once per set."""

    def __init__(self, ctx: ExportContext, variants: _Variants) -> None:
        o, art, val = ctx.options, ctx.art, ctx.samples.sets["val"]
        self.ctx, self.variants, self.tasks, self.budgets = ctx, variants, art.tasks, o.max_metric_drop
        self.batch = o.batch.max
        self.images, self.targets = val.images, {t: val.targets[t] for t in ctx.names}
        ref = TorchRunner(art.model, InputSpec(**ctx.chw, dtype=ctx.input_dtype, max_batch=self.batch), ctx.names,
                          "static model")
        self.reference = self._outputs(ref, self.images)
        self.subset = self._hardest(variants.shaped(frozenset()))
        self.ref_metrics = {"full": evaluate(ref, self.images, self.targets, self.tasks, self.batch),
                            "subset": evaluate(ref, *self._pick(self.subset), self.tasks, self.batch)}
        self._gates: dict[tuple[frozenset[str], str], GateReport] = {}

    def _outputs(self, runner: Any, images: torch.Tensor) -> dict[str, np.ndarray]:
        outs: dict[str, list[np.ndarray]] = {n: [] for n in self.ctx.names}
        for i in range(0, images.shape[0], self.batch):
            got = runner.infer(np.ascontiguousarray(images[i:i + self.batch].numpy()))
            for n in outs:
                outs[n].append(np.asarray(got[n], dtype=np.float32))
        return {n: np.concatenate(v) for n, v in outs.items()}

    def _hardest(self, int8_graph: bytes) -> np.ndarray:
        """Indices of the items whose outputs the all-int8 graph moves most (the worst task's mean error over its
        mean reference magnitude): the ranking subset, a quarter of the split (at least `MIN_SUBSET` items)."""
        got = self._outputs(_Session(int8_graph, self.ctx.options.threads), self.images)
        n = self.images.shape[0]
        score = np.zeros(n)
        for name, ref in self.reference.items():
            axes = tuple(range(1, ref.ndim))
            err = np.abs(got[name] - ref).mean(axis=axes) / (np.abs(ref).mean(axis=axes) + 1e-6)
            score = np.maximum(score, err)
        k = min(n, max(MIN_SUBSET, n // 4))
        return np.sort(np.argsort(-score, kind="stable")[:k])

    def _pick(self, idx: np.ndarray) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        t = torch.from_numpy(idx)
        return self.images[t], {k: v[t] for k, v in self.targets.items()}

    def gate(self, float_groups: frozenset[str], which: str = "full") -> GateReport:
        key = (float_groups, which)
        if key not in self._gates:
            session = _Session(self.variants.shaped(float_groups), self.ctx.options.threads)
            images, targets = (self.images, self.targets) if which == "full" else self._pick(self.subset)
            metrics = evaluate(session, images, targets, self.tasks, self.batch)
            self._gates[key] = metric_gate(self.tasks, self.ref_metrics[which], metrics, precision="int8",
                                           budgets=self.budgets)
        return self._gates[key]


def mixed_int8(ctx: ExportContext, fp32: onnx.ModelProto, batches: list[np.ndarray], base_float: list[str],
               *, auto: bool) -> MixResult:
    """The precision stage's int8 (`auto=False`) or auto graph: see the module docstring."""
    o, log = ctx.options, ctx.log
    with tempfile.TemporaryDirectory(prefix="deploymtl-mix-") as tmp:
        variants = _Variants(ctx, fp32, batches, base_float, Path(tmp) / "calibration.json")
        all_int8 = variants.proto(frozenset())
        groups = qdq_groups(fp32, all_int8)
        variants.groups = {g.name: g for g in groups}
        names = [g.name for g in groups]
        log(f"precision mix: {len(groups)} quantised group(s)")
        report: dict[str, Any] = {"mode": "auto" if auto else "int8", "groups": [],
                                  "budgets": o.max_metric_drop.to_dict(ctx.names)}
        missing = [t for t in ctx.names if t not in ctx.samples.sets["val"].targets]
        validation = None if missing or not o.accuracy_control else _Validation(ctx, variants)
        if validation is None:
            report["accuracy_control"] = {"skipped": True, "reason": (
                "--no-accuracy-control" if not o.accuracy_control else
                f"the data has no targets for {', '.join(missing)}: no task metric to keep")}

        timing, start = _speed(ctx, variants, names, report) if auto else (None, frozenset())

        def control(begin: frozenset[str]) -> ControlResult | None:
            if validation is None:
                return None
            return accuracy_control(names, validation.gate, lambda f: validation.gate(f, "subset"), start=begin,
                                    log=log)

        mix = control(start)
        mix_float = frozenset(mix.float_groups) if mix else start
        if mix:
            report["accuracy_control"] = mix.to_dict() | {"started_float": sorted(start)}
        candidates = {"mix": mix_float}
        chosen, precision = "mix", "int8"
        if timing is not None:
            if mix_float != frozenset():
                int8 = control(frozenset())
                candidates["int8"] = frozenset(int8.float_groups) if int8 else frozenset()
            final = time_graphs({"fp32": variants.shaped(None)} |
                                {k: variants.shaped(v) for k, v in candidates.items()},
                                **(timing | {"batches": sorted({1, o.batch.opt, o.batch.max})}), rounds=FINAL_ROUNDS)
            costs = {k: relative_cost(v, final["fp32"]) for k, v in final.items()}
            chosen = min(costs, key=lambda k: (costs[k], k != "fp32"))  # a tie goes to fp32: nothing to lose
            report["candidates"] = {k: {"ms": final[k], "cost_vs_fp32": round(costs[k], 4),
                                        "float_groups": sorted(candidates.get(k, names))} for k in final}
            report["chosen"] = chosen
            log("precision auto: " + ", ".join(f"{k} {costs[k]:.3f}x fp32 time" for k in costs) + f"; {chosen}")
            precision = "fp32" if chosen == "fp32" else "int8"
        float_groups = frozenset(names) if chosen == "fp32" else candidates[chosen]
        for g in groups:
            entry = report["groups_timing"].get(g.name, {}) if "groups_timing" in report else {}
            speed = start if chosen == "mix" else frozenset()
            reason = ("fp32 chosen" if chosen == "fp32" else "speed" if g.name in speed
                      else "budget" if g.name in float_groups else "int8")
            report["groups"].append(g.to_dict() | {"precision": "float" if g.name in float_groups else "int8",
                                                   "reason": reason} | entry)
        report.pop("groups_timing", None)
        report["float_groups"] = len(float_groups)
        report["int8_groups"] = len(groups) - len(float_groups)
        if validation is not None:
            final_gate = validation.gate(float_groups) if precision == "int8" else None
            report["final_metrics"] = None if final_gate is None else {
                k: {"metric": t.metric, "fp32": t.fp32, "value": t.candidate, "loss": t.loss, "budget": t.budget,
                    "passed": t.passed} for k, t in final_gate.tasks.items()}
        proto = fp32 if precision == "fp32" else variants.proto(float_groups)
    return MixResult(proto, precision, report)


def _speed(ctx: ExportContext, variants: _Variants, names: list[str],
           report: dict[str, Any]) -> tuple[dict[str, Any] | None, frozenset[str]]:
    """Step 1 of auto: per-group timings, and the groups that start float because int8 is slower there."""
    o = ctx.options
    if o.shaped_for == "trt":
        report["timing"] = {"skipped": True, "reason": "the graph is shaped for TensorRT, which is not timed here "
                            "(TensorRT runs it, not ONNX Runtime): groups stay int8 unless a budget reverts them"}
        ctx.log(f"precision auto: {report['timing']['reason']}")
        return None, frozenset()
    timing = {"image": (ctx.chw["channels"], ctx.chw["height"], ctx.chw["width"]),
              "batches": sorted({1, o.batch.opt}), "dtype": ctx.input_dtype, "threads": o.threads}
    graphs: dict[str, bytes] = {"<fp32>": variants.shaped(None), "<int8>": variants.shaped(frozenset())}
    graphs |= {n: variants.shaped(frozenset({n})) for n in names}
    with ctx.timed("mix_timing"):
        times = time_graphs(graphs, **timing)
    base = times["<int8>"]
    start = frozenset(n for n in names if relative_cost(times[n], base) < 1 - SPEED_MARGIN)
    report["timing"] = {"target": f"onnxruntime CPU, {o.threads or 'default'} threads", "batches": timing["batches"],
                        "fp32_ms": times["<fp32>"], "int8_ms": base, "margin": SPEED_MARGIN}
    report["groups_timing"] = {n: {"graph_ms_group_int8": base, "graph_ms_group_float": times[n],
                                   "float_vs_int8": round(relative_cost(times[n], base), 4)} for n in names}
    ctx.log(f"precision auto: all-int8 {relative_cost(base, times['<fp32>']):.3f}x fp32 time; {len(start)} of "
            f"{len(names)} group(s) faster in float")
    return timing, start

