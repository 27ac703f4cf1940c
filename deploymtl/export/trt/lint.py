"""TensorRT compatibility lint for ONNX graphs: runs without TensorRT or a GPU.

Checks an ONNX model against what TensorRT 10.x/11.x's ONNX parser accepts (docs/tensorrt.md; the parser's operator
support matrix, `ops.py`) so problems surface at export time, not on a GPU machine:

- operators: unsupported ones (QLinearConv, ConvInteger, DynamicQuantizeLinear, Sequence*, custom domains), and the
  documented restrictions (MaxPool/AveragePool without Indices and with dilations 1, Resize coordinate/interpolation/
  nearest modes and no antialias, constant axes for Squeeze/Unsqueeze/Reduce*, TopK sorted with constant K < 3840,
  Dropout not training, LayerNormalization output Y only, ...);
- data types: DOUBLE is cast down to FLOAT, UINT8 only as network IO, INT8/INT4/FP8/FP4 only through Q/DQ, INT64
  weights;
- explicit quantization: the Q/DQ rules of `deploymtl.onnxkit.qdq` (symmetric constant zero points, positive constant
  scales, per-tensor activations, per-channel weights on the Conv weight's output-channel axis 0, opset >= 13);
- dynamic shapes: every input needs a dynamic batch axis (a static batch cannot be fixed after parsing), other dynamic
  dims and batch-fixing Reshapes are flagged; the opset must lie in the parsers' range;
- the graph's form: one leading error when it is an ONNX Runtime CPU graph (uint8 activation quantisation, as
  `deploymtl export --for ort-cpu` writes int8 files, or QLinear*/integer operators), naming the re-export that
  gives TensorRT's form, before the per-node findings it explains.

`lint_onnx(model) -> [LintIssue]`: errors are what the parser or builder rejects, warnings what builds but may differ
from ONNX Runtime or lose performance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from ...onnxkit import qdq
from ...onnxkit.index import GraphIndex, attr, opset_version, value_types
from ...onnxkit.load import load_onnx
from . import ops

ERROR, WARNING = qdq.ERROR, qdq.WARNING


@dataclass(frozen=True)
class LintIssue:
    """One finding: `severity` is "error" (TensorRT rejects it) or "warning" (builds, but check it)."""

    severity: str
    node: str
    op: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.severity}: {self.node} ({self.op}): {self.message}"


def errors(issues: list[LintIssue]) -> list[LintIssue]:
    return [i for i in issues if i.severity == ERROR]


def lint_onnx(model: onnx.ModelProto | str | Path) -> list[LintIssue]:
    """All TensorRT compatibility issues of `model` (a path or a loaded ModelProto), errors first."""
    return lint_with_qdq(model)[0]


def lint_with_qdq(model: onnx.ModelProto | str | Path) -> tuple[list[LintIssue], list[qdq.QdqFinding]]:
    """`lint_onnx`'s issues, and the Q/DQ rule findings among them as such (`onnxkit.qdq`): an int8 export reads
    its scheme's violations from these instead of running the rules a second time."""
    proto = load_onnx(model)
    g = _Graph(proto.graph, opset_version(proto), {(f.domain, f.name): f for f in proto.functions})
    issues = list(_check_form(proto, g))
    issues += _check_opset(g.opset)
    issues += _check_io(proto.graph)
    issues += _check_nodes(g, prefix="")
    types = value_types(proto)
    issues += _check_dtypes(g, types)
    findings = qdq.check(g, g.opset, types)
    issues += [LintIssue(f.severity, f.node, f.op, f.message) for f in findings]
    unique = list(dict.fromkeys(issues))
    return sorted(unique, key=lambda i: i.severity != ERROR), findings


class _Graph(GraphIndex):
    """The graph index of one (sub)graph plus what the lint needs beside it: the opset, the model's functions,
    graph IO names and the tensors that carry data (computed from an input, not only from shapes)."""

    def __init__(self, graph: onnx.GraphProto, opset: int, functions: dict[tuple[str, str], onnx.FunctionProto],
                 parent: _Graph | None = None) -> None:
        super().__init__(graph, parent)
        self.opset, self.functions = opset, functions
        self.io_names = {i.name for i in self.inputs} | self.outputs
        self.data: set[str] = {i.name for i in self.inputs}
        for node in self.nodes:
            if node.op_type not in ops.SHAPE_OPS and any(i in self.data for i in node.input):
                self.data.update(o for o in node.output if o)


def _name(node: onnx.NodeProto, index: int, prefix: str) -> str:
    return prefix + (node.name or f"{node.op_type}#{index}")


# ---------------------------------------------------------------------------------------------------- graph level
def _check_form(proto: onnx.ModelProto, g: _Graph) -> Iterator[LintIssue]:
    """One error for a graph in ONNX Runtime's CPU form: TensorRT would reject each of its uint8 quantisers and
    QLinear* operators, and the reason is the form the file was written in, not the nodes themselves."""
    zero_points = [g.constant_value(n.input[2]) for n in g.nodes
                   if n.op_type == "QuantizeLinear" and len(n.input) > 2 and g.is_constant(n.input[2])]
    uint8 = sum(z is not None and np.asarray(z).dtype == np.uint8 for z in zero_points)
    qops = sum(n.op_type in ops.QOPERATORS for n in g.nodes)
    if not uint8 and not qops:
        return
    meta = {p.key: p.value for p in proto.metadata_props}
    shaped = "ort-cpu" in meta.get("deploymtl.runtime", "")
    what = ", ".join(part for part in (f"{uint8} uint8 quantisers" if uint8 else "",
                                       f"{qops} QLinear/integer operators" if qops else "") if part)
    origin = "written by `deploymtl export --for ort-cpu`" if shaped else "ONNX Runtime's x86 form"
    yield LintIssue(ERROR, "model", "form", f"not a TensorRT graph: an ONNX Runtime CPU graph ({origin}: {what}); "
                    "TensorRT reads symmetric int8 Q/DQ only: export with --for trt (or --target trt)")


def _check_opset(opset: int) -> Iterator[LintIssue]:
    if opset < ops.OPSET_MIN:
        yield LintIssue(ERROR, "model", "opset", f"opset {opset} is older than TensorRT's parser accepts "
                        f"({ops.OPSET_MIN}..{ops.OPSET_MAX_10X}); re-export with opset 17 or newer")
    elif opset > ops.OPSET_MAX:
        yield LintIssue(ERROR, "model", "opset", f"opset {opset} is newer than any TensorRT parser accepts "
                        f"(at most {ops.OPSET_MAX}); re-export with opset {ops.OPSET_MAX_10X} or older")
    elif opset > ops.OPSET_MAX_10X:
        yield LintIssue(WARNING, "model", "opset", f"opset {opset} needs the newest TensorRT parser; 10.x accepts "
                        f"{ops.OPSET_MIN}..{ops.OPSET_MAX_10X}: re-export with opset {ops.OPSET_MAX_10X} or older")


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None] | None:
    t = value.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def _check_io(graph: onnx.GraphProto) -> Iterator[LintIssue]:
    init = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in init]
    dynamic_batch = False
    for inp in inputs:
        dims = _dims(inp)
        if dims is None:
            yield LintIssue(WARNING, inp.name, "input", "input has no shape; TensorRT needs its rank to build an "
                            "optimisation profile")
            continue
        if not dims:
            continue
        if isinstance(dims[0], int):
            yield LintIssue(ERROR, inp.name, "input", f"input has a static batch of {dims[0]} (shape {dims}): "
                            "TensorRT cannot make it dynamic after parsing; re-export with a dynamic batch axis")
        else:
            dynamic_batch = True
        for axis, d in enumerate(dims[1:], start=1):
            if not isinstance(d, int):
                yield LintIssue(WARNING, inp.name, "input", f"dimension {axis} is dynamic ({d or '?'}): deploymtl's "
                                "optimisation profile covers only the batch axis; export a fixed size")
    if not dynamic_batch:
        return
    for out in graph.output:
        dims = _dims(out)
        if dims and isinstance(dims[0], int):
            yield LintIssue(WARNING, out.name, "output", f"output has a static first dimension {dims[0]} while the "
                            "batch is dynamic: a Reshape or Expand in the graph fixes the batch size")


# ----------------------------------------------------------------------------------------------------- node rules
_Rule = Callable[["_Graph", onnx.NodeProto], Iterator[tuple[str, str]]]
_RULES: dict[str, _Rule] = {}


def _rule(*op_types: str) -> Callable[[_Rule], _Rule]:
    """Register a per-operator check yielding (severity, message); keyed by op type like the surgery registry."""

    def deco(fn: _Rule) -> _Rule:
        for op in op_types:
            _RULES[op] = fn
        return fn

    return deco


def _check_nodes(g: _Graph, prefix: str) -> Iterator[LintIssue]:
    for index, node in enumerate(g.nodes):
        name, op = _name(node, index, prefix), node.op_type
        if node.domain not in ("", "ai.onnx"):
            fn = g.functions.get((node.domain, op))
            if fn is not None:  # a model-local function: the parser inlines its body
                body = onnx.helper.make_graph(list(fn.node), fn.name, [], [])
                yield from _check_nodes(_Graph(body, g.opset, g.functions, parent=g), prefix=f"{name}/")
                continue
            yield LintIssue(ERROR, name, op, f"custom operator {node.domain}::{op} is not an ONNX operator; "
                            "TensorRT's parser would need a plugin of that name (re-export without custom ops)")
            continue
        if op in ops.UNSUPPORTED:
            yield LintIssue(ERROR, name, op, f"not supported by TensorRT's ONNX parser: {ops.UNSUPPORTED[op]}")
            continue
        if op not in ops.SUPPORTED:
            yield LintIssue(ERROR, name, op, "not in TensorRT 10/11's ONNX parser operator list")
            continue
        rule = _RULES.get(op)
        if rule is not None:
            for severity, message in rule(g, node):
                yield LintIssue(severity, name, op, message)
        for a in node.attribute:  # If/Loop/Scan bodies
            subgraphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
            for sub in subgraphs:
                yield from _check_nodes(_Graph(sub, g.opset, g.functions, parent=g), prefix=f"{name}/")


@_rule("MaxPool", "AveragePool", "LpPool")
def _pool(g: _Graph, node: onnx.NodeProto) -> Iterator[tuple[str, str]]:
    kernel = attr(node, "kernel_shape", [])
    if len(kernel) not in (2, 3):
        yield ERROR, f"{len(kernel)}D pooling: TensorRT pools in 2D or 3D only"
    dilations = attr(node, "dilations", [])
    if any(d != 1 for d in dilations):
        yield ERROR, f"dilations {list(dilations)}: TensorRT pooling needs dilations of 1"
    if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
        yield ERROR, "the Indices output is not supported; export max pooling without return_indices"


@_rule("Resize")
def _resize(g: _Graph, node: onnx.NodeProto) -> Iterator[tuple[str, str]]:
    coord = attr(node, "coordinate_transformation_mode", "half_pixel")
    if coord not in ops.RESIZE_COORDINATE_MODES:
        yield ERROR, (f"coordinate_transformation_mode '{coord}' is not supported; expected one of "
                      f"{sorted(ops.RESIZE_COORDINATE_MODES)} (F.interpolate align_corners=False gives half_pixel)")
    mode = attr(node, "mode", "nearest")
    if mode not in ops.RESIZE_MODES:
        yield ERROR, f"mode '{mode}' is not supported; expected one of {sorted(ops.RESIZE_MODES)}"
    nearest = attr(node, "nearest_mode", "round_prefer_floor")
    if mode == "nearest" and nearest not in ops.RESIZE_NEAREST_MODES:
        yield ERROR, f"nearest_mode '{nearest}' is not supported; expected one of {sorted(ops.RESIZE_NEAREST_MODES)}"
    if attr(node, "antialias", 0):
        yield ERROR, "antialias is not supported; resize with antialias=False"
    policy = attr(node, "keep_aspect_ratio_policy", "stretch")
    if policy != "stretch":
        yield ERROR, f"keep_aspect_ratio_policy '{policy}' is not supported; only 'stretch'"
    axes = attr(node, "axes", None)
    if axes is not None and list(axes) != list(range(len(axes))):
        yield ERROR, f"axes {list(axes)} must be 0..rank-1 in order"


@_rule("Upsample")
def _upsample(g: _Graph, node: onnx.NodeProto) -> Iterator[tuple[str, str]]:
    mode = attr(node, "mode", "nearest")
    if mode not in ("nearest", "linear", "bilinear"):
        yield ERROR, f"mode '{mode}' is not supported; expected nearest or linear"


def _const_input(g: _Graph, node: onnx.NodeProto, pos: int, what: str) -> Iterator[tuple[str, str]]:
    if len(node.input) > pos and node.input[pos] and not g.is_constant(node.input[pos]):
        yield ERROR, f"{what} '{node.input[pos]}' is computed at run time; TensorRT needs it constant"


@_rule("Squeeze", "Unsqueeze", *ops.REDUCE_OPS)
def _axes(g: _Graph, node: onnx.NodeProto) -> Iterator[tuple[str, str]]:
    yield from _const_input(g, node, 1, "axes")


@_rule("CumSum")
def _cumsum(g: _Graph, node: onnx.NodeProto) -> Iterator[tuple[str, str]]:
    yield from _const_input(g, node, 1, "axis")


@_rule("OneHot")
def _onehot(g: _Graph, node: onnx.NodeProto) -> Iterator[tuple[str, str]]:
    yield from _const_input(g, node, 1, "depth")


@_rule("Dropout")
def _dropout(g: _Graph, node: onnx.NodeProto) -> Iterator[tuple[str, str]]:
    if len(node.input) > 2 and node.input[2]:
        if not g.is_constant(node.input[2]):
            yield ERROR, "training_mode is computed at run time; TensorRT needs a constant False (export in eval mode)"
        else:
            value = g.constant_value(node.input[2])
            if value is not None and bool(np.asarray(value).any()):
                yield ERROR, "training_mode is True: TensorRT runs Dropout in inference mode only (model.eval())"


@_rule("TopK")
def _topk(g: _Graph, node: onnx.NodeProto) -> Iterator[tuple[str, str]]:
    if int(attr(node, "sorted", 1)) != 1:
        yield ERROR, "sorted=0 is not supported; TensorRT returns sorted values only"
    if g.opset < 10:
        k = np.asarray(attr(node, "k", 1))
    elif len(node.input) < 2 or not g.is_constant(node.input[1]):
        yield ERROR, "K is computed at run time; TensorRT needs a constant K"
        return
    else:
        k = g.constant_value(node.input[1])
    if k is not None and int(np.asarray(k).reshape(-1)[0]) >= ops.TOPK_MAX_K:
        yield ERROR, f"K={int(np.asarray(k).reshape(-1)[0])}: TensorRT needs K < {ops.TOPK_MAX_K}"


@_rule("LayerNormalization")
def _layernorm(g: _Graph, node: onnx.NodeProto) -> Iterator[tuple[str, str]]:
    if any(node.output[1:]):
        yield ERROR, "only the first output Y is supported; drop the Mean/InvStdDev outputs"


@_rule("ScatterND")
def _scatternd(g: _Graph, node: onnx.NodeProto) -> Iterator[tuple[str, str]]:
    reduction = attr(node, "reduction", "none")
    if reduction != "none":
        yield ERROR, f"reduction '{reduction}' is not supported; only 'none'"


@_rule("Constant")
def _constant(g: _Graph, node: onnx.NodeProto) -> Iterator[tuple[str, str]]:
    for a in node.attribute:
        if a.name in ("sparse_value", "value_string", "value_strings"):
            yield ERROR, f"attribute {a.name} is not supported"


@_rule("Reshape")
def _reshape(g: _Graph, node: onnx.NodeProto) -> Iterator[tuple[str, str]]:
    shape = g.constant_value(node.input[1]) if len(node.input) > 1 else None
    if shape is None or node.input[0] not in g.data:
        return
    shape = np.asarray(shape).reshape(-1)
    if shape.size and int(shape[0]) > 0 and _has_dynamic_batch(g):
        yield WARNING, (f"constant target shape {shape.tolist()} fixes the batch to {int(shape[0])}: the engine "
                        "fails for other batch sizes; use 0 or -1 for the batch axis (x.flatten(1))")


def _has_dynamic_batch(g: _Graph) -> bool:
    return any((d := _dims(i)) and not isinstance(d[0], int) for i in g.inputs)


# ------------------------------------------------------------------------------------------------------ data types
_OK_TYPES = frozenset({"FLOAT", "FLOAT16", "BFLOAT16", "INT32", "INT64", "BOOL"})


def _qdq_tensors(g: _Graph) -> set[str]:
    """Tensors that legitimately hold quantized types: DQ inputs, Q outputs, zero points."""
    names: set[str] = set()
    for node in g.nodes:
        if node.op_type == "QuantizeLinear":
            names.update([node.output[0], *node.input[2:3]])
        elif node.op_type == "DequantizeLinear":
            names.update([node.input[0], *node.input[2:3]])
    return names


def _reported(node: onnx.NodeProto | None) -> bool:
    """A node already reported as unsupported: its tensors' types need no second message."""
    return node is not None and (node.op_type in ops.UNSUPPORTED or node.domain not in ("", "ai.onnx"))


def _check_dtypes(g: _Graph, types: dict[str, int]) -> Iterator[LintIssue]:
    qdq_names = _qdq_tensors(g)
    for tensor, elem in types.items():
        dtype = onnx.TensorProto.DataType.Name(elem) if elem else "UNDEFINED"
        if dtype in _OK_TYPES or dtype == "UNDEFINED":
            continue
        if _reported(g.producer.get(tensor)) or any(_reported(c) for c, _ in g.consumers.get(tensor, [])):
            continue
        node = g.producer.get(tensor)
        where, op = (node.name or tensor, node.op_type) if node else (tensor, "initializer" if tensor in
                                                                       g.initializers else "input")
        if dtype == "DOUBLE":
            yield LintIssue(WARNING, where, op, f"tensor '{tensor}' is DOUBLE: TensorRT casts it to FLOAT "
                            "(clamped to +-FLT_MAX); export in float32")
        elif dtype == "UINT8":
            if tensor not in g.io_names and tensor not in qdq_names:
                yield LintIssue(ERROR, where, op, f"tensor '{tensor}' is UINT8 inside the network: TensorRT "
                                "accepts UINT8 only as network input or output")
        elif dtype in qdq.QUANT_TYPES:
            if tensor not in qdq_names:
                yield LintIssue(ERROR, where, op, f"tensor '{tensor}' is {dtype} outside QuantizeLinear/"
                                "DequantizeLinear: TensorRT supports quantized types only through Q/DQ")
        else:
            yield LintIssue(ERROR, where, op, f"tensor '{tensor}' has type {dtype}, which TensorRT does not support")
    yield from _check_int64_weights(g, types)


def _check_int64_weights(g: _Graph, types: dict[str, int]) -> Iterator[LintIssue]:
    """INT64 constants used as data next to run-time activations (not as shapes, indices or axes)."""
    for name in g.constant_names():
        if types.get(name) != onnx.TensorProto.INT64 or name in g.io_names:
            continue
        for node, pos in g.consumers.get(name, []):
            if pos in ops.INDEX_INPUTS.get(node.op_type, ()):
                continue
            if not any(i in g.data for i in node.input if i != name):
                continue  # a shape computation, folded or run on shape tensors
            value = g.constant_value(name)
            shape = list(value.shape) if value is not None else "?"
            yield LintIssue(WARNING, node.name or name, node.op_type, f"INT64 weights '{name}' (shape {shape}) "
                            "enter as data: TensorRT runs INT64 on few layers and never in fp16/int8; store them "
                            "as float32 or int32")
