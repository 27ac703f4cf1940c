"""int8 static quantisation to a Q/DQ ONNX graph (onnxruntime.quantization), TensorRT-compatible.

Scheme (docs/tensorrt.md, "Explicit quantization"): QDQ format; int8 activations and weights; symmetric
(every zero point 0); activations per tensor; weights per output channel (Conv axis 0); scales from MinMax
calibration on batches of the recipe's *training* split (the validation split stays unseen for the metric gate).
The same file runs on ONNX Runtime (which fuses DQ->Conv->Q into QLinearConv; `_private_qdq_pairs` shapes the
graph so it can for every convolution) and feeds TensorRT's explicit quantisation.

The export checks the result against that scheme with the Q/DQ rules the TensorRT lint applies
(`deploymtl.onnxkit.qdq`, scheme `TENSORRT`), so a change in ONNX Runtime's defaults cannot silently produce a
graph TensorRT rejects. The shaping stage that follows writes the graph in the form of its runtime: as it is for
trt and generic, with the ReLUs folded into uint8 for ort-cpu (`export.lowering`, scheme `ORT_CPU`).
(`deploymtl export --int8-activations asymmetric` opts out of TensorRT compatibility for ONNX Runtime CPU speed,
scheme `ORT_CPU_ASYMMETRIC`, see `quantize_int8`.)
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx

from ..errors import DeploymtlError
from ..onnxkit.index import GraphIndex, attr, drop_unused_initializers
from .onnx import INPUT_NAME
from .quiet import quiet_root_logger

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


class _Reader:
    """onnxruntime.quantization CalibrationDataReader over (N, C, H, W) float32 batches."""

    def __init__(self, batches: Iterable[np.ndarray]) -> None:
        self._it: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch)}  # float32, or raw uint8

    def rewind(self) -> None:  # part of the reader protocol; calibration reads once
        pass



def quantize_int8(model: onnx.ModelProto, calibration: Iterable[np.ndarray], *, per_channel: bool = True,
                  symmetric_activations: bool = True, method: str = "minmax",
                  quantize_bias: bool = False, exclude_nodes: list[str] | None = None,
                  float_output_layers: bool = False, reduced_weights: bool = True,
                  calibration_cache: Path | None = None) -> onnx.ModelProto:
    """Static int8 QDQ quantisation of an fp32 model; `calibration` yields input batches (N, C, H, W) float32.

    Weights are quantised to 7 bits (-64..64, ONNX Runtime's `reduce_range`; `reduced_weights=False` for the full
    8): ONNX Runtime's x86 uint8 x int8 kernels -- which also run the symmetric graph, its int8 activations shifted
    to uint8 -- sum pairs of u8*s8 products in a saturating int16 (VPMADDUBSW) on CPUs without VNNI (AVX2, AVX-512
    without VNNI), and 255 * 127 * 2 overflows it; with 7-bit weights (255 * 64 * 2 = 32640) nothing saturates on
    any CPU, so the file verified here is right wherever it runs. Measured on an AVX2-only CPU: the export test
    model's int8 file had max_abs 1.25 (mean 0.72) against fp32 with 8-bit weights. TensorRT takes any scale.

    Biases stay float (`quantize_bias=False`): TensorRT dequantizes only 8-bit (and narrower) types, not the int32
    biases ONNX Runtime would otherwise emit; it folds the float bias into the int8 convolution itself.
    `_drop_float_only_pairs` leaves every task output unrounded (always). `float_output_layers=True` also keeps
    the layer that writes each task output (`output_layers`: the head's last Conv/Gemm, before any Resize) in fp32
    (the exporter's default, `--int8-output-layers fp32`): on the benchmark's pruned ResNet-18 the symmetric graph
    lost 1.02% depth abs error with them in int8 (gate 1%), 0.92% without; they are 1x1 convolutions with a handful
    of output channels, negligible time on either runtime.
    The symmetric graph is post-processed by `_private_qdq_pairs` (one Q->DQ pair per consumer, private zero
    points) so ONNX Runtime on x86, which converts int8 activations to uint8 (+128), fuses the convolutions that
    read a shared tensor (every residual block input) into QLinearConv too; before, 12 of 22 backbone convolutions
    ran in fp32 and the graph ran at about fp32 speed. The ReLUs of the file run in fp32 there (DQ->Relu->Q: a zero
    point of 128 cannot absorb them); the ONNX Runtime CPU form of the file (`--for ort-cpu`, the default) folds
    them into uint8 quantisation at export (`export.lowering`). `symmetric_activations=False` gives asymmetric uint8
    activations for ONNX Runtime on x86 CPUs only (TensorRT rejects them). Allowing int8 kernels
    (`session.qdqisint8allowed`) runs ~8x slower.

    `calibration_cache`: a file for onnxruntime's calibration ranges; written by the first call, read by the next
    ones (the same fp32 model quantised with other `exclude_nodes`: accuracy control's variants, `export.mixed`).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise DeploymtlError(f"unknown calibration method '{method}'", hint=f"expected one of {CALIBRATION_METHODS}")
    batches = list(calibration)
    if not batches:
        raise DeploymtlError("int8 calibration needs at least one batch", hint="set export.calibration_samples >= 1")
    excluded = list(exclude_nodes or []) + (output_layers(model) if float_output_layers else [])
    with tempfile.TemporaryDirectory(prefix="deploymtl-quant-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, src)
        # quantize_static logs "consider pre-processing" on the root logger; our graph is already shape-inferred.
        with quiet_root_logger():
            quantize_static(
                str(src), str(dst), _Reader(batches), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                activation_type=QuantType.QInt8 if symmetric_activations else QuantType.QUInt8,
                weight_type=QuantType.QInt8, calibrate_method=methods[method], nodes_to_exclude=excluded,
                reduce_range=reduced_weights,
                calibration_cache_path=None if calibration_cache is None else str(calibration_cache),
                # QDQKeepRemovableActivations: by default the asymmetric scheme deletes each ReLU and leaves its
                # clamp to the next Q/DQ pair, which `_drop_float_only_pairs` may remove (a float output layer's
                # input): the ReLU would be lost. Kept in the file, ORT still folds them (ReluQuantFusion).
                extra_options={"ActivationSymmetric": symmetric_activations, "WeightSymmetric": True,
                               "QuantizeBias": quantize_bias, "QDQKeepRemovableActivations": True},
            )
        out = onnx.load(str(dst))
    _drop_float_only_pairs(out)
    if symmetric_activations:
        _private_qdq_pairs(out)
    del out.metadata_props[:]
    out.metadata_props.extend(model.metadata_props)
    return out


FLOAT_OPS = frozenset({"layernorm", "attention", "gelu", "cls_pos"})  # static ops int8 keeps in float
_WEIGHT_OPS = {"linear": "MatMul", "patch_embed": "Conv"}  # on tokens: only this ONNX op of theirs runs in int8


def token_float_nodes(model: onnx.ModelProto, spec: dict, image: tuple[int, int, int]) -> list[str]:
    """The ONNX nodes an int8 export keeps in float in a vision transformer, as TensorRT's int8 transformers do:
    LayerNorm, the attention (its scale, both activation x activation MatMuls and the Softmax), GELU, the class
    token and position embedding, and every other node whose output is a token sequence (the residual adds); of a
    linear layer on tokens only its MatMul runs in int8 (its bias Add stays float: a per-tensor int8 bias would
    round it), of the patch embedding only its Conv. Found by the ONNX node's static-node scope
    (`layers.<node>/<Op>`); a graph without token sequences gives none."""
    from ..formats.onnx_metadata import node_scope
    from ..ir import spec_shapes

    shapes = spec_shapes(spec, image)
    whole: set[str] = set()
    weight_only: dict[str, str] = {}
    for n in spec["nodes"]:
        scope, op, rank = f"layers.{n['name']}", n["op"], shapes[n["name"]].rank
        if op in _WEIGHT_OPS and rank == 3:
            weight_only[scope] = _WEIGHT_OPS[op]
        elif op in FLOAT_OPS or rank == 3:
            whole.add(scope)
    names = []
    for node in model.graph.node:
        scope = node_scope(node)
        if scope in whole or (scope in weight_only and node.op_type != weight_only[scope]):
            names.append(node.name)
    return names


_SHAPE_ONLY = ("Resize", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Upsample")


def output_layers(model: onnx.ModelProto) -> list[str]:
    """Names of the compute nodes (Conv, ConvTranspose, Gemm, MatMul) that write a graph output, directly or through
    layout-only ops (Resize, Reshape, ...): each task head's last layer."""
    producer = GraphIndex(model.graph).producer
    names = []
    for out in model.graph.output:
        node = producer.get(out.name)
        while node is not None and node.op_type in _SHAPE_ONLY:
            node = producer.get(node.input[0])
        if node is not None and node.op_type in _INT8_COMPUTE and node.name not in names:
            names.append(node.name)
    return names


_INT8_COMPUTE = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # run in int8 from a DQ input even with a float output


def _drop_float_only_pairs(model: onnx.ModelProto) -> int:
    """Remove activation Q->DQ pairs whose dequantised tensor is only read in float: graph outputs (the task
    outputs), layout ops such as Resize or Shape that are not followed by a QuantizeLinear, and layers kept in fp32
    (`output_layers`), see `_runs_int8`. Repeats until none is left (dropping an output pair after a Resize leaves
    the pair before it float-only); returns the number removed. In place.

    Why: such a pair only rounds the value (onnxruntime.quantization quantises every graph output): a depth map
    or logits stored as symmetric int8 keep 7 bits over [0, max], which cost the benchmark's depth task a 1.06%
    abs-error drop (gate 1%). Neither runtime loses an int8 kernel: TensorRT runs DQ->Conv with a float output in
    int8, and ONNX Runtime could not fuse those head convolutions anyway (their output is also read by Shape).
    """
    removed = 0
    _float_graph_outputs(model)
    while True:
        g = GraphIndex(model.graph)  # rebuilt after each removal: the graph changed under it
        outputs = g.outputs
        for q in g.nodes:
            if q.op_type != "QuantizeLinear" or q.input[0] in g.initializers:
                continue
            dqs = g.readers(q.output[0])
            if not dqs or any(d.op_type != "DequantizeLinear" for d in dqs) or q.output[0] in outputs:
                continue
            if sum(d.output[0] in outputs for d in dqs) > 1:
                continue
            if any(_runs_int8(r, g) for d in dqs for r in g.readers(d.output[0])):
                continue
            # every reader of a DQ output reads the float tensor instead; a graph output takes over its name
            src = q.input[0]
            out = next((d.output[0] for d in dqs if d.output[0] in outputs), None)
            if out and src in outputs:
                continue  # both names are graph outputs: keep the pair rather than merge two outputs
            new = out or src
            rename = {d.output[0]: new for d in dqs} | ({src: out} if out else {})
            drop = {id(q), *map(id, dqs)}
            kept = [n for n in g.nodes if id(n) not in drop]
            for n in kept:
                n.input[:] = [rename.get(i, i) for i in n.input]
                n.output[:] = [rename.get(o, o) for o in n.output]
            del model.graph.node[:]
            model.graph.node.extend(kept)
            removed += 1
            break
        else:
            break
    drop_unused_initializers(model.graph)
    return removed


def _float_graph_outputs(model: onnx.ModelProto) -> None:
    """Every graph output produced by an activation DequantizeLinear takes the float tensor its QuantizeLinear
    reads instead; the DQ (still read by int8 consumers, or by none and then dropped) gets a new name. The index
    is read before any renaming (an output's producer, by its original name)."""
    g = GraphIndex(model.graph)
    producer, inits = g.producer, g.initializers
    for out in [o.name for o in model.graph.output]:
        dq = producer.get(out)
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] in inits or q.input[0] not in producer:
            continue
        src = q.input[0]
        if any(o.name == src for o in model.graph.output):
            continue
        rename = {out: f"{out}/dequantized", src: out}
        for n in g.nodes:
            n.input[:] = [rename.get(i, i) for i in n.input]
            n.output[:] = [rename.get(o, o) for o in n.output]


def _runs_int8(node: onnx.NodeProto, g: GraphIndex) -> bool:
    """Whether a Q->DQ pair read by `node` is worth keeping: `node` is a Conv/Gemm/MatMul whose two operands are
    both dequantised (a layer excluded from quantisation has a float weight), an elementwise op (Add, Relu, ...:
    its own output pair is kept, so ONNX Runtime can still fuse the layer writing the pair: a Conv fuses only with
    a Q after it), or a layout op (Resize, Shape, ...) followed by a QuantizeLinear."""
    if node.op_type in _INT8_COMPUTE:
        return all(i in g.producer and g.producer[i].op_type == "DequantizeLinear" for i in node.input[:2])
    if node.op_type not in _SHAPE_ONLY + ("Shape",):
        return True
    return any(r.op_type == "QuantizeLinear" for o in node.output for r in g.readers(o))


def _private_qdq_pairs(model: onnx.ModelProto) -> int:
    """Rewrite every activation QuantizeLinear so that each consumer of the quantised tensor reads it through its
    own Q->DQ pair with its own zero-point initializer (same value 0, same scale); returns the number of pairs
    added. In place; the values the graph computes are unchanged (every pair quantises the same tensor the same
    way).

    Why (ONNX Runtime CPU speed of the symmetric int8 graph): x86 kernels are u8 x s8, so ORT's QDQS8ToU8Transformer
    rewrites an int8 Q->DQ pair to uint8 (zero point 0 -> 128), but only a Q with exactly *one* DQ consumer; an int8
    DQ->Conv->Q left over is not fused (int8 activations are not allowed on x86) and runs in fp32. A tensor read by
    several nodes (every residual block input: conv1 and the shortcut Add or downsample conv; a head output read by
    Resize and Shape) ends up as one Q feeding several DQs (ORT's EnsureUniqueDQForNodeUnit duplicates a shared
    DQ), so before this pass 12 of 22 backbone convolutions stayed fp32. Separate Q nodes are not enough either:
    with shared scale and zero-point initializers ORT's common-subexpression elimination merges them back; a
    private int8 zero point keeps them apart (ORT's ConstantSharing merges only float/int32/int64 scalars).
    TensorRT reads the same symmetric, zero-point-0 pairs; duplicated Q/DQ pairs are ordinary there.
    """
    g = GraphIndex(model.graph)
    inits, outputs = g.initializers, g.outputs
    extra: dict[int, list[onnx.NodeProto]] = {}  # id(DQ node) -> new nodes to insert after it
    fresh: list[onnx.TensorProto] = []
    added = 0
    for q in [n for n in g.nodes if n.op_type == "QuantizeLinear" and n.input[0] not in inits]:
        if len(q.input) < 3 or q.input[2] not in inits:
            continue  # no constant zero point: the Q/DQ rules report it (onnxkit.qdq)
        dqs = [d for d in g.readers(q.output[0]) if d.op_type == "DequantizeLinear"]
        if len(dqs) != len(g.readers(q.output[0])) or q.output[0] in outputs:
            continue  # the quantised tensor itself is used: leave it alone
        uses = [(dq, None) for dq in dqs if dq.output[0] in outputs]
        uses += [(dq, node) for dq in dqs for node in g.readers(dq.output[0])]
        shared = inits[q.input[2]]
        for k, (dq, node) in enumerate(uses):
            zp = onnx.TensorProto()
            zp.CopyFrom(shared)
            zp.name = f"{shared.name}/{q.name}/{k}"
            fresh.append(zp)
            if k == 0:  # the first use keeps the original pair (and the graph output name, if any)
                q.input[2] = zp.name
                for d in dqs:
                    d.input[2] = zp.name
                continue
            q_out, dq_out = f"{q.output[0]}/{k}", f"{dq.output[0]}/{k}"
            new_q = onnx.helper.make_node("QuantizeLinear", [q.input[0], q.input[1], zp.name], [q_out],
                                          name=f"{q.name}/{k}", axis=attr(q, "axis", 1))
            new_dq = onnx.helper.make_node("DequantizeLinear", [q_out, dq.input[1], zp.name], [dq_out],
                                           name=f"{dq.name}/{k}", axis=attr(dq, "axis", 1))
            for i, name in enumerate(node.input):
                if name == dq.output[0]:
                    g.set_input(node, i, dq_out)
            extra.setdefault(id(dq), []).extend([new_q, new_dq])
            added += 1
    nodes = []
    for node in g.nodes:
        nodes.append(node)
        nodes.extend(extra.get(id(node), []))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(fresh)
    drop_unused_initializers(model.graph)
    return added


def quantized_ops(model: onnx.ModelProto) -> list[str]:
    """Names of the compute nodes fed by a DequantizeLinear of a weight (the layers that run in int8)."""
    inits = GraphIndex(model.graph).initializers
    dq_of_weight = {n.output[0] for n in model.graph.node
                    if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    return [n.name for n in model.graph.node
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and any(i in dq_of_weight for i in n.input)]
