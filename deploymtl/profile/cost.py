"""Parameters and FLOPs of an artifact, total and per task subset, from its report or from its graph.

FLOPs are per image (batch 1) and count multiply-adds as 2 in convolutions and matrix products only, as
`torch.utils.flop_counter` does (bias adds, activations and resizes are not counted), so a static model and
the ONNX file exported from it report the same number. The sources, in order:

1. the prune report (written by `deploymtl prune`): its `params` / `flops` at the stage matching the artifact
   (`after` for a static model or an export of it, `masked` for a supernet). It is found beside the artifact,
   or, for an exported ONNX/TensorRT artifact, beside the static model its `export_report.json` names;
2. the graph itself: the static model's nodes (per-node FLOPs from `FlopCounterMode`'s module breakdown),
   an ONNX graph (shape inference at batch 1; for an engine, the ONNX it was built from), or the supernet's
   deployed forward (total only).

Per-task-subset cost follows from the graph: the nodes a set of tasks needs are the ancestors of their output
nodes, so `alone` = what a model for that task only costs and `marginal` = what dropping it saves.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import DeploymtlError

REPORT_NAMES = ("prune_report.json", "export_report.json")


def artifact_cost(path: str | Path, kind: str) -> dict[str, Any]:
    """{"params", "flops", "per_task": {task: {"alone": {...}, "marginal": {...}}}, "source"}; kind from Session."""
    p = Path(path)
    graph = _graph_cost(p, kind)
    stage = "masked" if kind == "supernet" else "after"
    reported = _reported_cost(p, stage)
    if reported:
        graph.update({k: v for k, v in reported.items() if v is not None})
    return graph


def read_reports(path: str | Path) -> dict[str, Any]:
    """The deploymtl JSON reports found beside an artifact, by file name (unreadable ones are skipped)."""
    from ..io import read_json

    out = {}
    for name in REPORT_NAMES:
        f = Path(path).parent / name
        if f.is_file():
            try:
                out[name] = read_json(f, what=name)
            except DeploymtlError:
                continue
    return out


def _reported_cost(path: Path, stage: str) -> dict[str, Any] | None:
    reports = read_reports(path)
    report, where = reports.get("prune_report.json"), "prune_report.json"
    source = (reports.get("export_report.json") or {}).get("source")
    if report is None and isinstance(source, dict) and source.get("model"):
        report = read_reports(source["model"]).get("prune_report.json")  # the static model's, for its export
        where = f"{Path(source['model']).parent / 'prune_report.json'} via export_report.json"
    if not isinstance(report, dict):
        return None
    params, flops = _stage_total(report.get("params"), stage), _stage_total(report.get("flops"), stage)
    if params is None and flops is None:
        return None
    return {"params": params, "flops": flops, "source": f"{where} ({stage})"}


def _stage_total(entry: Any, stage: str) -> int | None:
    """A report's count: a number, {stage: number}, or {stage: {"total": number, ...per task}}."""
    if isinstance(entry, dict):
        entry = entry.get(stage, entry.get("total"))
        if isinstance(entry, dict):
            entry = entry.get("total")
    return int(entry) if isinstance(entry, (int, float)) and math.isfinite(entry) else None


def _graph_cost(path: Path, kind: str) -> dict[str, Any]:
    if kind == "static":
        return _static_cost(path)
    if kind == "onnx":
        return _onnx_cost(path)
    if kind == "supernet":
        return _supernet_cost(path)
    onnx_name = (read_reports(path).get("export_report.json") or {}).get("onnx")
    if kind == "trt" and onnx_name and (path.parent / onnx_name).is_file():
        cost = _onnx_cost(path.parent / onnx_name)  # the engine was built from it
        return cost | {"source": f"computed from {onnx_name}, the ONNX graph the engine was built from"}
    return {"params": None, "flops": None, "per_task": {}, "source": "unknown (no report, graph not readable)"}


def subset_costs(node_cost: dict[str, tuple[int, int]], node_inputs: dict[str, list[str]],
                 outputs: dict[str, str]) -> dict[str, Any]:
    """Per task: cost of the nodes it needs alone, and the marginal cost only it needs. node_cost: (params, flops)."""

    def needed(tasks: Iterable[str]) -> set[str]:
        seen: set[str] = set()
        stack = [outputs[t] for t in tasks]
        while stack:
            n = stack.pop()
            if n in seen or n not in node_inputs:
                continue
            seen.add(n)
            stack.extend(node_inputs[n])
        return seen

    def total(nodes: set[str]) -> dict[str, int]:
        return {"params": sum(node_cost.get(n, (0, 0))[0] for n in nodes),
                "flops": sum(node_cost.get(n, (0, 0))[1] for n in nodes)}

    everything = total(needed(outputs))
    per_task = {}
    for t in outputs:
        rest = total(needed(o for o in outputs if o != t))
        per_task[t] = {"alone": total(needed([t])),
                       "marginal": {k: everything[k] - rest[k] for k in everything}}
    return {"params": everything["params"], "flops": everything["flops"], "per_task": per_task}


def _static_cost(path: Path) -> dict[str, Any]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ..formats.static import example_input, load_static

    art = load_static(path)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        art.model(example_input(art, 1))
    flops: dict[str, int] = {}
    for module, ops in counter.get_flop_counts().items():
        if ".layers." in module:
            node = module.split(".layers.", 1)[1]
            flops[node] = flops.get(node, 0) + int(sum(ops.values()))
    node_cost = {name: (sum(p.numel() for p in layer.parameters()), flops.get(name, 0))
                 for name, layer in art.model.layers.items()}
    inputs = {n["name"]: list(n["inputs"]) for n in art.model.spec["nodes"]}
    out = subset_costs(node_cost, inputs, art.model.outputs)
    return out | {"source": "computed from the static graph (torch.utils.flop_counter)"}


def _supernet_cost(path: Path) -> dict[str, Any]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ..config import parse_recipe
    from ..models.checkpoint import load_supernet

    model, ckpt = load_supernet(path)
    data = parse_recipe(ckpt["recipe"], str(path)).data
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.set_deployed(True)(torch.zeros(1, 3, data.height, data.width))
    return {"params": sum(p.numel() for p in model.weight_parameters()), "flops": int(counter.get_total_flops()),
            "per_task": {}, "source": "computed from the supernet's deployed forward (torch.utils.flop_counter)"}


def _onnx_cost(path: Path) -> dict[str, Any]:
    """Conv / Gemm / MatMul FLOPs at batch 1 from ONNX shape inference; params = their weights and biases."""
    import onnx
    from onnx import numpy_helper

    from ..onnxkit.load import load_onnx

    model = load_onnx(path)
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_value = 1
    del model.graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.input, *model.graph.value_info, *model.graph.output]}
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    inits.update({n.output[0]: list(numpy_helper.to_array(n.attribute[0].t).shape)
                  for n in model.graph.node if n.op_type == "Constant" and n.attribute and n.attribute[0].t.dims})
    # QDQ graphs feed weights through DequantizeLinear, deduplicated ones through Identity: follow them back
    alias = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type in ("DequantizeLinear", "Identity")}
    producer = {o: n.name or f"{n.op_type}_{i}" for i, n in enumerate(model.graph.node) for o in n.output}
    node_cost: dict[str, tuple[int, int]] = {}
    node_inputs: dict[str, list[str]] = {}
    for i, n in enumerate(model.graph.node):
        name = n.name or f"{n.op_type}_{i}"
        node_inputs[name] = [producer[x] for x in n.input if x in producer]
        node_cost[name] = _onnx_node_cost(n, shapes, inits, alias)
    outputs = {o.name: producer[o.name] for o in model.graph.output if o.name in producer}
    out = subset_costs(node_cost, node_inputs, outputs)
    return out | {"source": "computed from the ONNX graph (shape inference at batch 1)"}


def _onnx_node_cost(n: Any, shapes: dict[str, list[int]], inits: dict[str, list[int]],
                    alias: dict[str, str]) -> tuple[int, int]:
    if n.op_type not in ("Conv", "Gemm", "MatMul", "ConvInteger", "MatMulInteger"):
        return 0, 0

    def weight_shape(name: str) -> list[int] | None:
        while name in alias:
            name = alias[name]
        return inits.get(name)

    params = sum(math.prod(s) for s in (weight_shape(x) for x in n.input[1:3] if x) if s is not None)
    out = shapes.get(n.output[0])
    w = weight_shape(n.input[1]) or shapes.get(n.input[1])
    if not out or not w or 0 in out:
        raise DeploymtlError(f"ONNX node '{n.name}' ({n.op_type}): output shape unknown after shape inference",
                             hint="expected a model with static C/H/W and a batch axis")
    if n.op_type.startswith("Conv"):
        return params, 2 * math.prod(out) * math.prod(w[1:])  # w: Cout x Cin/groups x kh x kw
    if n.op_type == "Gemm":
        trans_b = next((a.i for a in n.attribute if a.name == "transB"), 0)
        k = w[1] if trans_b else w[0]
        return params, 2 * math.prod(out) * k
    return params, 2 * math.prod(out) * w[-2]  # MatMul: (..., M, K) @ (K, N)
