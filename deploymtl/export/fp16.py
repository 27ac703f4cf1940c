"""fp16 conversion of an fp32 ONNX graph, with float32 input and outputs.

Uses the float16 converter that ships inside onnxruntime (`onnxruntime.transformers.float16`, the same code as
onnxconverter-common's `convert_float_to_float16`, so no extra dependency): initializers and every tensor become
float16, `keep_io_types=True` puts Cast nodes at the boundary so `image` and the task outputs stay float32 (the
Runner interface and serving configs do not change with the precision). Under TensorRT's strong typing (10.x
strongly typed, 11.x always) this graph *is* the fp16 engine.

Kept in float32 (`FP32_OPS`): ReduceMean and GlobalAveragePool, whose sums over a whole feature map can overflow
float16's 65504 before the division (the fp16 normalisation pitfall, docs/tensorrt.md section 7); they are cheap.
"""

from __future__ import annotations

import onnx

from .quiet import quiet_root_logger

FP32_OPS = ("ReduceMean", "GlobalAveragePool")



def convert_fp16(model: onnx.ModelProto, *, keep_fp32_ops: tuple[str, ...] = FP32_OPS) -> onnx.ModelProto:
    """A float16 copy of `model` with float32 IO; ops in `keep_fp32_ops` stay float32 behind Casts."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    with quiet_root_logger(ignore_warnings=True):
        out = convert_float_to_float16(copy, keep_io_types=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST,
                                                                                 *keep_fp32_ops])
    toposort(out.graph)  # the converter appends its boundary Casts at the end of the node list
    return out


def toposort(graph: onnx.GraphProto) -> None:
    """Reorder `graph.node` topologically in place, keeping the existing order wherever it is already valid."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError(f"graph has a cycle or a missing input at node {rest[0].name}")
        pending = rest
    copies = [onnx.NodeProto() for _ in ordered]
    for dst, src in zip(copies, ordered, strict=True):
        dst.CopyFrom(src)
    del graph.node[:]
    graph.node.extend(copies)


def float16_fraction(model: onnx.ModelProto) -> float:
    """Fraction of float initializer elements stored as float16 (1.0 for a fully converted graph)."""
    total = half = 0
    for init in model.graph.initializer:
        if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            n = 1
            for d in init.dims:
                n *= d
            total += n
            if init.data_type == onnx.TensorProto.FLOAT16:
                half += n
    return half / total if total else 0.0
