"""Which precision a graph asks for, and which one a built engine actually runs (engine inspector JSON).

TensorRT 11 (and 10.x with a strongly typed network) takes precision from the ONNX graph: an fp16 graph builds fp16
layers, a Q/DQ graph int8 layers (docs/tensorrt.md, section 7). `graph_precision` reads that intent from the graph;
`parse_engine_layers` reads `IEngineInspector.get_engine_information(LayerInformationFormat.JSON)` of an engine built
with `ProfilingVerbosity.DETAILED`; `precision_report` compares them so a precision that was silently not honoured
is refused.

The inspector JSON is {"Layers": [...], "Bindings": [...]}. Each layer of 10.x describes its tensors with a combined
"Format/Datatype" string ("Channel major FP16 format where channel % 8 == 0", "Row major linear FP32", "Half");
11.x splits that into separate format and data-type fields. Without DETAILED verbosity "Layers" holds only names.
The parser therefore looks for the data type under any key whose name contains "datatype"/"dtype"/"type" or
"precision" (case and spacing ignored) and maps the spellings used by both schemas to fp32/fp16/bf16/int8/fp8/...
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import onnx

from ...errors import VerificationError

_TOKENS = (("uint8", "uint8"), ("int8", "int8"), ("int4", "int4"), ("fp8", "fp8"), ("e4m3", "fp8"),
           ("fp4", "fp4"), ("bfloat16", "bf16"), ("bf16", "bf16"), ("fp16", "fp16"), ("half", "fp16"),
           ("fp32", "fp32"), ("float", "fp32"), ("int32", "int32"), ("int64", "int64"), ("bool", "bool"))
_COMPUTE = ("convolution", "deconvolution", "matrixmultiply", "fullyconnected", "gemm", "matmul")
_LOWER_THAN = {"fp32": {"fp16", "bf16", "int8", "fp8", "int4", "fp4"}}
_QUANT = {"int8", "fp8", "int4", "fp4"}


def graph_precision(model: onnx.ModelProto) -> str:
    """'int8' for a Q/DQ graph, 'fp16' when it holds fp16 tensors or casts, else 'fp32'."""
    g = model.graph
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in g.node):
        return "int8"
    half = onnx.TensorProto.FLOAT16
    typed = [*g.input, *g.output, *g.value_info]
    if (any(t.data_type == half for t in g.initializer)
            or any(v.type.tensor_type.elem_type == half for v in typed)
            or any(n.op_type == "Cast" and any(a.name == "to" and a.i == half for a in n.attribute) for n in g.node)):
        return "fp16"
    return "fp32"


@dataclass(frozen=True)
class LayerPrecision:
    """One engine layer: `precision` of its first typed input (or its own precision field); None if unknown."""

    name: str
    layer_type: str
    compute: bool
    precision: str | None
    weights: str | None = None


def dtype_token(text: Any) -> str | None:
    """Map an inspector data-type spelling ('Half', 'Row major linear FP32', 'Int8') to fp16/fp32/int8/..."""
    if not isinstance(text, str):
        return None
    low = text.lower()
    for needle, token in _TOKENS:
        if needle in low:
            return token
    return None


def _norm(key: str) -> str:
    return key.lower().replace(" ", "").replace("_", "").replace("-", "")


def _tensor_dtype(tensor: Any) -> str | None:
    if isinstance(tensor, str):
        return dtype_token(tensor)
    if not isinstance(tensor, dict):
        return None
    ranked = sorted(tensor.items(), key=lambda kv: _norm(kv[0]) not in ("datatype", "dtype", "type", "precision"))
    for key, value in ranked:
        nk = _norm(key)
        if "datatype" in nk or "dtype" in nk or nk in ("type", "precision"):
            token = dtype_token(value)
            if token:
                return token
    return dtype_token(next((v for k, v in tensor.items() if _norm(k) == "format"), None))


def _layer(raw: dict[str, Any]) -> LayerPrecision:
    kinds = " ".join(str(raw.get(k, "")) for k in ("ParameterType", "LayerType", "Type")).lower()
    precision = None
    for key, value in raw.items():
        if _norm(key) in ("precision", "layerprecision", "computeprecision"):
            precision = dtype_token(value)
    if precision is None:
        for tensor in raw.get("Inputs", []) or []:
            precision = _tensor_dtype(tensor)
            if precision:
                break
    weights = raw.get("Weights")
    return LayerPrecision(name=str(raw.get("Name", "?")), layer_type=str(raw.get("LayerType", raw.get("Type", ""))),
                          compute=any(c in kinds.replace(" ", "") for c in _COMPUTE), precision=precision,
                          weights=_tensor_dtype(weights) if isinstance(weights, dict) else None)


def parse_engine_layers(info: str | dict[str, Any] | list[Any]) -> list[LayerPrecision] | None:
    """Layers of an inspector JSON (text or parsed); None when it holds no per-layer detail."""
    if isinstance(info, str):
        try:
            info = json.loads(info)
        except json.JSONDecodeError:
            return None
    layers: Any = info
    if isinstance(info, dict):
        layers = next((v for k, v in info.items() if k.lower() == "layers"), None)
    if not isinstance(layers, list):
        return None
    parsed = [_layer(raw) for raw in layers if isinstance(raw, dict)]
    return parsed or None


def precision_report(layers: list[LayerPrecision] | None, requested: str) -> dict[str, Any]:
    """Whether the engine runs `requested` where it matters: its convolution / matmul layers.

    fp32: no compute layer runs below fp32. fp16 / int8: at least one compute layer runs in that precision
    (layers the graph deliberately keeps wider, e.g. fp32 normalisation, are listed, not refused).
    """
    if layers is None:
        return {"inspectable": False, "ok": True, "requested": requested,
                "reason": "the inspector returned no per-layer detail (engine not built with DETAILED verbosity)"}
    compute = [lay for lay in layers if lay.compute and lay.precision]
    basis = compute or [lay for lay in layers if lay.precision]
    counts = Counter(lay.precision for lay in basis)

    def runs(lay: LayerPrecision, precision: str) -> bool:
        return lay.precision == precision or (precision in _QUANT and lay.weights == precision)

    if requested == "fp32":
        off = [lay for lay in basis if lay.precision in _LOWER_THAN["fp32"]]
        ok = not off
    else:
        off = [lay for lay in basis if not runs(lay, requested)]
        ok = any(runs(lay, requested) for lay in basis)
    return {"inspectable": True, "ok": ok, "requested": requested, "layers": len(layers),
            "compute_layers": len(compute), "by_precision": dict(sorted(counts.items())),
            "not_in_requested": [f"{lay.name} ({lay.precision})" for lay in off][:20]}


def require_honoured(report: dict[str, Any], source: str) -> None:
    """Raise VerificationError (exit 1) when `precision_report` found the requested precision not honoured."""
    if report.get("ok", True):
        return
    seen = ", ".join(f"{k}: {v}" for k, v in report.get("by_precision", {}).items()) or "none typed"
    example = report["not_in_requested"][0] if report.get("not_in_requested") else "?"
    raise VerificationError(
        f"{source}: {report['requested']} was requested but TensorRT did not honour it (layer precisions {seen}; "
        f"e.g. {example})", hint=f"export the {report['requested']} ONNX (deploymtl export MODEL --target onnx "
        f"--precision {report['requested']}) and build from it")
