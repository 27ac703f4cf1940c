"""Proof, on the exported graph, that it holds the static model and nothing else (no part the surgeon removed).

Checks on the ONNX graph as exported (before simplification, whose fusions may legitimately merge constants):
1. every ONNX node that carries a module scope names a node of the static model (`layers.<n>`);
2. the float initializers are exactly the static model's parameters, by name (a parameter the exporter folded
   into per-row constants appears as `<name>.<row>`), and their element count equals the static model's
   parameter count;
3. no node, tensor or initializer name contains a removed part (`removed_prefixes`, module paths of the supernet
   such as `blocks.3.body` or `aux.0`, from the prune report / artifact), in dotted or underscored form (the
   surgeon's node names replace dots by underscores).
"""

from __future__ import annotations

import re

import onnx

from ..formats.onnx_metadata import node_scope
from ..ir import StaticModel, static_nodes

_FLOAT = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)


def _numel(t: onnx.TensorProto) -> int:
    n = 1
    for d in t.dims:
        n *= d
    return n


def _mentions(name: str, prefix: str) -> bool:
    """`prefix` (`blocks.3`) occurs in `name` as a whole path component run (not `blocks.30`)."""
    for form in {prefix, prefix.replace(".", "_")}:
        if re.search(rf"(^|[./_]){re.escape(form)}($|[./_])", name):
            return True
    return False


def check_removed_parts(proto: onnx.ModelProto, model: StaticModel,
                        removed_prefixes: list[str] | None = None) -> dict:
    """The report's `removed_parts_check`: {"passed", "static_params", "onnx_params", "problems", ...}."""
    modules = {f"layers.{n}" for n, _ in static_nodes(model)} or {f"layers.{n}" for n in model.layers}
    params = {k: v.numel() for k, v in model.named_parameters()}
    problems: list[str] = []
    scopes = {node_scope(n) for n in proto.graph.node} - {None}
    foreign = sorted(s for s in scopes if s not in modules)
    if foreign:
        problems.append(f"nodes from modules the static model does not have: {foreign[:5]}")
    floats = {i.name: _numel(i) for i in proto.graph.initializer if i.data_type in _FLOAT}
    # a parameter appears whole (`layers.mix.weight`) or as rows folded out by the exporter (`layers.mix.weight.0`)
    pieces: dict[str, int] = {}
    extra = []
    for name, n in floats.items():
        owner = name if name in params else name.rsplit(".", 1)[0] if name.rsplit(".", 1)[-1].isdigit() else None
        if owner in params:
            pieces[owner] = pieces.get(owner, 0) + n
        else:
            extra.append(name)
    missing = sorted(k for k in params if k not in pieces)
    partial = sorted(k for k in pieces if pieces[k] != params[k])
    if extra:
        problems.append(f"float initializers that are not static-model parameters: {sorted(extra)[:5]}")
    if missing:
        problems.append(f"static-model parameters missing from the graph: {missing[:5]}")
    if partial:
        problems.append(f"parameters whose graph copies do not add up to their size: {partial[:5]}")
    onnx_params = sum(floats.values())
    static_params = sum(params.values())
    if onnx_params != static_params:
        problems.append(f"graph holds {onnx_params} float parameters, the static model {static_params}")
    names = [n.name for n in proto.graph.node] + [t for n in proto.graph.node for t in n.output] + list(floats)
    hits = {p: sorted({nm for nm in names if _mentions(nm, p)})[:3] for p in (removed_prefixes or [])}
    hits = {p: h for p, h in hits.items() if h}
    if hits:
        problems.append(f"names of removed parts found in the graph: {hits}")
    return {"passed": not problems, "static_params": static_params, "onnx_params": onnx_params,
            "onnx_nodes": len(proto.graph.node), "modules": len(modules), "scoped_modules": len(scopes),
            "removed_prefixes": list(removed_prefixes or []), "problems": problems}
