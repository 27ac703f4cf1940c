"""The Q/DQ rules: what an explicitly quantized ONNX graph (QuantizeLinear/DequantizeLinear pairs) must satisfy,
written once and read by both the TensorRT lint (`export.trt.lint`) and the int8 export (`export.quantize`).

The rules are TensorRT's explicit quantization (docs/tensorrt.md), each with an id:

| rule | finding |
|---|---|
| `opset` | Q/DQ needs opset >= 13 (per-axis quantization) |
| `dq_type` | a DequantizeLinear reads INT8, INT4, FP8 or FP4 only (an int32 bias is not dequantized) |
| `scale_constant`, `scale_positive` | scales are constants, finite and > 0 |
| `zero_point_constant`, `_signed`, `_zero` | zero points are constant, signed (not uint8) and 0 (symmetric) |
| `zero_point_missing` (warning) | a Q without zero point quantizes to uint8 in ONNX; TensorRT uses int8 |
| `activation_per_tensor` | activations have one scale (per tensor) |
| `weight_axis` | per-channel weights on a Conv weight's output-channel axis 0 only (Gemm, MatMul: warning) |

`check` runs every rule once and returns findings (errors and warnings). A *scheme* is the set of rules an export
promises: `TENSORRT` (the symmetric int8 export shaped for trt or generic: every rule), `ORT_CPU` (the same graph
shaped for ONNX Runtime CPU, `--for ort-cpu`: ReLU outputs quantised to uint8 with zero point 0, which waives the
signed-zero-point and dequantized-type rules) or `ORT_CPU_ASYMMETRIC` (`--int8-activations asymmetric`: uint8
activations with real zero points, for ONNX Runtime on x86 only, which waives the zero-point, dequantized-type and
weight-axis rules). `violations` picks a scheme's errors from the findings, so an int8 export
reads them from the one lint run instead of checking the graph a second time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from .index import GraphIndex, attr, opset_version, value_types

ERROR, WARNING = "error", "warning"
QUANT_TYPES = frozenset({"INT8", "INT4", "FLOAT8E4M3FN", "FLOAT4E2M1"})  # what TensorRT quantizes to
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class QdqFinding:
    """One rule's finding on one node; `str()` is the `node: message` line the export report lists."""

    severity: str
    node: str
    op: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.node}: {self.message}"


@dataclass(frozen=True)
class QdqScheme:
    """A quantization scheme: its description and the rules (ids of the module table) it does not promise."""

    name: str
    waived: frozenset[str] = frozenset()


TENSORRT = QdqScheme("int8 symmetric (TensorRT explicit quantization)")
ORT_CPU_ASYMMETRIC = QdqScheme("uint8 asymmetric activations (ONNX Runtime CPU only)", frozenset(
    {"dq_type", "zero_point_constant", "zero_point_signed", "zero_point_zero", "zero_point_missing", "weight_axis"}))


ORT_CPU = QdqScheme("int8 symmetric, ReLU outputs uint8 with zero point 0 (ONNX Runtime CPU)",
                    frozenset({"dq_type", "zero_point_signed"}))


def scheme_for(symmetric: bool, runtime: str = "trt") -> QdqScheme:
    """The scheme an int8 export promises: its activations (`--int8-activations`) and the runtime it is shaped for."""
    if not symmetric:
        return ORT_CPU_ASYMMETRIC
    return ORT_CPU if runtime == "ort-cpu" else TENSORRT


def check(g: GraphIndex, opset: int, types: Mapping[str, int]) -> list[QdqFinding]:
    """Every finding of the rules on graph `g` (opset `opset`; `types`: element types, `index.value_types`)."""
    qnodes = [(k, n) for k, n in enumerate(g.nodes) if n.op_type in QDQ_OPS]
    if not qnodes:
        return []
    found = []
    if opset < 13:
        found.append(QdqFinding(ERROR, "model", "opset", "opset", f"Q/DQ quantization with opset {opset}: "
                                "TensorRT's explicit quantization needs opset >= 13; re-export with opset 13 or newer"))
    for k, node in qnodes:
        name = node.name or f"{node.op_type}#{k}"
        found += [QdqFinding(severity, name, node.op_type, rule, message)
                  for severity, rule, message in _node_rules(g, node, types)]
    return found


def violations(findings: Iterable[QdqFinding], scheme: QdqScheme, g: GraphIndex) -> list[str]:
    """The errors among `findings` that `scheme` promises to avoid, as `node: message` lines; a graph without any
    Q/DQ node violates every scheme (nothing was quantised)."""
    if not any(n.op_type in QDQ_OPS for n in g.nodes):
        return ["no QuantizeLinear/DequantizeLinear nodes: nothing was quantised"]
    return [str(f) for f in findings if f.severity == ERROR and f.rule not in scheme.waived]


_Found = Iterator[tuple[str, str, str]]  # (severity, rule, message)


def _node_rules(g: GraphIndex, node: onnx.NodeProto, types: Mapping[str, int]) -> _Found:
    if node.op_type == "DequantizeLinear" and node.input[0] in types:
        dtype = onnx.TensorProto.DataType.Name(types[node.input[0]])
        if dtype not in QUANT_TYPES:
            hint = " (a quantized bias: quantize with extra_options QuantizeBias=False)" if dtype == "INT32" else ""
            yield ERROR, "dq_type", f"dequantizes {dtype}: TensorRT dequantizes only INT8, INT4, FP8 and FP4{hint}"
            return
    scale_name = node.input[1] if len(node.input) > 1 else ""
    scale = g.constant_value(scale_name)
    if not g.is_constant(scale_name):
        yield ERROR, "scale_constant", f"scale '{scale_name}' is computed at run time; TensorRT needs constant scales"
    elif scale is not None and not (np.all(np.isfinite(scale)) and np.all(np.asarray(scale) > 0)):
        yield ERROR, "scale_positive", f"scale '{scale_name}' has non-positive or non-finite values; scales must be > 0"
    yield from _zero_point(g, node)
    if scale is not None and np.asarray(scale).size > 1:
        yield from _per_channel(g, node, scale)


def _zero_point(g: GraphIndex, node: onnx.NodeProto) -> _Found:
    zp_name = node.input[2] if len(node.input) > 2 else ""
    if not zp_name:
        if node.op_type == "QuantizeLinear" and attr(node, "output_dtype", 0) in (0, onnx.TensorProto.UINT8):
            yield WARNING, "zero_point_missing", ("no zero point: ONNX then quantizes to uint8 while TensorRT "
                                                  "uses int8; add an int8 zero point of 0 so ONNX Runtime and "
                                                  "TensorRT agree")
        return
    zp = g.constant_value(zp_name)
    if not g.is_constant(zp_name):
        yield ERROR, "zero_point_constant", (f"zero point '{zp_name}' is computed at run time; TensorRT needs a "
                                             "constant 0")
    elif zp is not None and np.asarray(zp).dtype == np.uint8:
        yield ERROR, "zero_point_signed", (f"zero point '{zp_name}' is uint8: TensorRT quantizes to signed int8 only "
                                           "(quantize with QuantType.QInt8)")
    elif zp is not None and np.any(np.asarray(zp).astype(np.float64) != 0):
        yield ERROR, "zero_point_zero", (f"zero point '{zp_name}' is not 0 (asymmetric quantization): TensorRT "
                                         "supports symmetric quantization only (ActivationSymmetric=True, "
                                         "WeightSymmetric=True)")


def _per_channel(g: GraphIndex, node: onnx.NodeProto, scale: np.ndarray) -> _Found:
    """Per-channel scales: only for constant weights, on their output-channel axis."""
    x = node.input[0]
    source = g.producer.get(x)
    from_weight_q = (node.op_type == "DequantizeLinear" and source is not None and source.op_type == "QuantizeLinear"
                     and g.is_constant(source.input[0]))
    if not (g.is_constant(x) or from_weight_q):
        yield ERROR, "activation_per_tensor", (f"per-channel scale ({np.asarray(scale).size} values) on an "
                                               "activation: TensorRT quantizes activations per tensor only")
        return
    value = g.constant_value(x) if g.is_constant(x) else g.constant_value(source.input[0])
    rank = value.ndim if value is not None else 4
    axis = int(attr(node, "axis", 1))
    axis = axis + rank if axis < 0 else axis
    dq_out = node.output[0]
    if node.op_type == "QuantizeLinear":  # follow Q -> DQ to the consumer of the dequantized weight
        dqs = [c for c in g.readers(dq_out) if c.op_type == "DequantizeLinear"]
        dq_out = dqs[0].output[0] if dqs else dq_out
    for consumer, pos in g.consumers.get(dq_out, []):
        op = consumer.op_type
        if op == "Conv" and pos == 1:
            if axis != 0:
                yield ERROR, "weight_axis", (f"per-channel axis {axis} on a Conv weight: TensorRT needs axis 0 "
                                             "(output channels)")
        elif (op == "ConvTranspose" and pos == 1 and axis == 1) or (op in ("Gemm", "MatMul") and pos == 1):
            yield WARNING, "weight_axis", (f"per-channel weights feeding {op} '{consumer.name}': TensorRT documents "
                                           "per-channel weights for Conv (axis 0); confirm the engine's layer "
                                           "precision on the GPU")
        else:
            yield ERROR, "weight_axis", (f"per-channel scale on axis {axis} of a weight feeding {op} input {pos}: "
                                         "TensorRT supports per-channel weights on the Conv weight's axis 0")


def check_scheme(model: onnx.ModelProto, scheme: QdqScheme = TENSORRT) -> list[str]:
    """`violations` of `scheme` in `model`, for a caller that does not lint it anyway."""
    g = GraphIndex(model.graph)
    return violations(check(g, opset_version(model), value_types(model)), scheme, g)
