"""The ONNX Runtime CPU form of a graph (`--for ort-cpu`): rewrites that make ONNX Runtime's CPU kernels fast, written
into the exported file itself, so that a plain `onnxruntime.InferenceSession(path)` (a user's service, Triton's
onnxruntime backend) runs it at the speed deploymtl measures. Each rewrite keeps what the graph computes (see each
for the exact numerical effect); `shape_for_ort_cpu` applies them in order to an fp32 graph or to any Q/DQ int8 one
(the export's stage `shaping.py` calls it on the whole graph; a caller that quantises layer groups its own way
reuses it as is):

1. `fold_relu_into_uint8` (int8), below (with a ReLU read only in float, `_quantize_after_float_relus`).
2. `resize_as_matmul` (fp32 and int8): a bilinear Resize of a small feature map to the image size (each task
   head's upsampling) runs in ONNX Runtime's plain NCHW kernel, about 2 ns per output value: on the tiny models
   more than a tenth of the whole latency, a cost the FLOPs of a pruned model do not show and pruning cannot
   reduce. Bilinear interpolation is separable, out = R_h X R_w^T per channel with two constant interpolation
   matrices, so the Resize becomes two MatMuls (SGEMM kernels). The matrices are computed by ONNX Runtime's own
   Resize on basis vectors, so the weights are exactly the ones the Resize used; the outputs agree to float
   rounding (the sums run in another order). Only where the input is small (`MATMUL_RESIZE_MAX` rows and
   columns): a dense interpolation matrix multiplies every output by all input rows, which stops paying beyond.
3. `pad_conv_channels` (fp32 and int8): pruning leaves odd channel counts (23, 45, ...). ORT's blocked NCHWc fp32
   convolutions (MLAS) keep a tensor in the blocked layout only when its channel count is a multiple of the SIMD
   block (16 floats with AVX-512, 8 with AVX2: `onnxkit.cpu.simd_block`); any other count is reordered back to NCHW
   and read by the slower NCHW-input kernel, and the u8s8 int8 kernels lose too. Zero filters pad such a
   convolution's output to the next multiple and zero input columns pad its readers: the padded channels are
   exactly 0 (bias 0, ReLU(0) = 0) and contribute exact zeros, so the outputs are unchanged up to summation order.
   On the benchmark's pruned ResNet-18 (`benchmarks/bench_export.py`) this makes fp32 1.2-1.5x faster.
   int8 on a CPU with AMX (`onnxkit.cpu.amx_int8`): ONNX Runtime's QLinearConv runs a convolution whose input
   channels are a multiple of 4 and output channels of 8 on MLAS's indirect "ConvSym" kernel (AVX-512 VNNI) and
   any other on its quantised GEMM, which uses the AMX tiles there: measured on a Xeon with AMX, a 3x3
   convolution of 179 -> 256 channels at 13x17 ran in 579 us at batch 8 and the same padded to 192 -> 256 in
   1205 us, while at 45 -> 64 channels padding to 48 was faster (95 vs 126 us). So there int8 convolutions are
   padded only up to `INT8_AMX_MAX_WIDTH` channels (23 -> 32 and 45 -> 48, not 89 -> 96 or 179 -> 192): the
   benchmark's int8 file ran 1.16x / 1.34x faster at batch 1 / 8 than with every convolution padded.
4. `select_in_blocked_layout` (fp32, `channel_selection.py`): channel selections (Gather, Slice, Split on the
   channel axis) as 1x1 convolutions over concats padded to the SIMD block, so the tensors stay in the blocked
   layout between convolutions.
5. `merge_sibling_branches` (fp32, `branch_merge.py`): the task branches of a layer as grouped convolutions, or
   branches narrower than a block as one dense convolution each position; then step 4 once more, for the concats
   a merge left block-aligned (the tiny GatedMTL model's first layer: its psi' blend becomes a 1x1 convolution).

The int8 rewrite:

The default int8 graph is symmetric (every zero point 0, int8) so that TensorRT can read it (docs/tensorrt.md):
that is the `--for trt` / `generic` form. TensorRT fuses Conv+ReLU+Q itself; ONNX Runtime's CPU provider cannot:
its x86 kernels are uint8 x int8, it rewrites each int8 pair to uint8 with zero point 128, and a ReLU between a DQ
and a Q is absorbed (`ReluQuantFusion`) only when the zero point is the type's minimum. So every ReLU of the
symmetric graph runs in fp32 there as DQ -> Relu -> Q, three elementwise passes per activation (on the benchmark's
pruned ResNet-18 that is what kept int8 near 2x instead of 3x faster than fp32 at batch 8).

`fold_relu_into_uint8` rewrites

    X -> Q1(int8, s1) -> DQ1 -> Relu -> Q2(int8, s2) -> DQ2 ... (one Q2 per reader, same s2)
    into
    X -> Relu -> Q(uint8, zero point 0, s2 * 127/255) -> DQ ...

which ONNX Runtime turns into a QLinearConv / QLinearAdd with the ReLU gone into the quantisation range. The
calibrated range [0, 127 s2] is kept and gets 255 steps instead of the 127 the symmetric int8 tensor spends on
it (its negative half is empty after a ReLU): the values differ from the symmetric graph's by the dropped first
rounding (one rounding instead of two) and by a rounding step half as large. On the benchmark's pruned ResNet-18
the depth task's int8 abs-error loss fell from 1.23% to 0.41% of fp32 with the finer step (gate 1%). The export
verifies (parity and the task-metric gate) the written file, so the figures in export_report.json are those of
this form. A uint8 zero point is not TensorRT's (the lint says so): the
ort-cpu int8 file is for ONNX Runtime. The asymmetric (uint8) graph keeps its ReLUs too (`quantize_int8`); there
Q1 has a real zero point and Q2 already a uint8 zero point 0 with a scale calibrated for it (kept as it is), and
the same rewrite drops the requantisation between them.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..onnxkit.cpu import amx_int8, simd_block
from ..onnxkit.index import GraphIndex, attr, drop_dead_nodes, drop_unused_initializers, value_shapes
from .branch_merge import merge_sibling_branches
from .channel_selection import select_in_blocked_layout
from .selection_folding import fold_selections_into_convs


def _activation_q(node: onnx.NodeProto | None, g: GraphIndex) -> bool:
    """An activation QuantizeLinear with a constant per-tensor scale and a constant zero point."""
    if node is None or node.op_type != "QuantizeLinear" or len(node.input) < 3 or node.input[0] in g.initializers:
        return False
    scale, zp = g.initializer_value(node.input[1]), g.initializer_value(node.input[2])
    return scale is not None and scale.size == 1 and zp is not None and zp.size == 1


def _zero_point_0_q(node: onnx.NodeProto | None, g: GraphIndex) -> bool:
    """An activation Q with zero point 0: int8 (the symmetric scheme) or uint8 (what a ReLU output gets in the
    asymmetric one)."""
    if not _activation_q(node, g):
        return False
    zp = g.initializer_value(node.input[2])
    return zp.dtype in (np.int8, np.uint8) and not zp.any()


def _label(node: onnx.NodeProto) -> str:
    """A unique prefix for the constants a rewrite adds for `node`: its name, or its first output's (node names are
    optional in ONNX, tensor names unique)."""
    return node.name or node.output[0]


def _scale(g: GraphIndex, q: onnx.NodeProto) -> float:
    return float(g.initializer_value(q.input[1]))


# Ops whose output is non-negative when their input is, and around which ONNX Runtime drops a Q/DQ pair of
# equal scale and zero point: the uint8 range extends through them (e.g. the stem's Relu -> MaxPool).
_SIGN_PRESERVING = ("MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze")


# An int8 (symmetric) scale s covers [0, 127 s] of a ReLU output with 128 levels; as uint8 the same range gets 256.
_INT8_TO_UINT8_STEP = 127 / 255


class _Rewrite(GraphIndex):
    """The graph index plus the ReLU rewrite's bookkeeping (nodes to drop, zero points and scales to add)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__(model.graph)
        self.dropped: set[int] = set()
        self.zero_points: list[onnx.TensorProto] = []  # one per requantised tensor
        self.scales: list[onnx.TensorProto] = []

    def uint8_group(self, tensor: str) -> list[onnx.NodeProto] | None:
        """The Qs reading `tensor` if it can be requantised to uint8: read only by zero-point-0 Qs of one scale,
        each read only by DQs, none of it a graph output."""
        qs = self.readers(tensor)
        if not qs or tensor in self.outputs or not all(_zero_point_0_q(q, self) for q in qs):
            return None
        if len({_scale(self, q) for q in qs}) != 1:
            return None
        if any(q.output[0] in self.outputs or any(d.op_type != "DequantizeLinear" for d in self.readers(
                q.output[0])) for q in qs):
            return None
        return qs

    def uint8_constants(self, q: onnx.NodeProto, label: str) -> tuple[str, str]:
        """(scale, zero point) names for `q`'s tensor as uint8 with zero point 0: an int8 Q's scale becomes 127/255
        of itself (the calibrated range [0, 127 s] in 255 steps instead of 127), a uint8 one's stays. Added to the
        graph by `apply`: until then no Q reads them as constants."""
        zp = numpy_helper.from_array(np.array(0, dtype=np.uint8), f"{label}/uint8_zero_point")
        self.zero_points.append(zp)
        if self.initializer_value(q.input[2]).dtype != np.int8:
            return q.input[1], zp.name
        step = np.asarray(self.initializer_value(q.input[1]) * _INT8_TO_UINT8_STEP, dtype=np.float32)
        self.scales.append(numpy_helper.from_array(step, f"{label}/uint8_scale"))
        return f"{label}/uint8_scale", zp.name

    def to_uint8(self, qs: list[onnx.NodeProto], label: str) -> onnx.NodeProto:
        """Merge `qs` (one tensor, one scale) into the first, as uint8 (`uint8_constants`); its DQs follow."""
        keep = qs[0]
        scale, zp = self.uint8_constants(keep, label)
        self.set_input(keep, 1, scale)
        self.set_input(keep, 2, zp)
        for q in qs:
            for dq in self.readers(q.output[0]):
                self.set_input(dq, 0, keep.output[0])
                self.set_input(dq, 1, scale)
                self.set_input(dq, 2, zp)
        self.dropped |= set(map(id, qs[1:]))
        return keep

    def extend_through_sign_preserving(self, q: onnx.NodeProto, scale: float) -> None:
        """uint8 Q -> DQ -> MaxPool (or a layout op) -> Qs of the same (original) `scale`: those become uint8 too,
        with the same new scale."""
        for dq in self.readers(q.output[0]):
            ops = self.readers(dq.output[0])
            if len(ops) != 1 or ops[0].op_type not in _SIGN_PRESERVING or dq.output[0] in self.outputs:
                continue
            qs = self.uint8_group(ops[0].output[0])
            if qs is not None and _scale(self, qs[0]) == scale:
                self.extend_through_sign_preserving(self.to_uint8(qs, _label(ops[0])), scale)

    def apply(self) -> int:
        if not self.zero_points:
            return 0
        kept = [n for n in self.graph.node if id(n) not in self.dropped]
        del self.graph.node[:]
        self.graph.node.extend(kept)
        self.graph.initializer.extend(self.zero_points + self.scales)
        drop_unused_initializers(self.graph)
        return len(self.zero_points)


def fold_relu_into_uint8(model: onnx.ModelProto) -> int:
    """Apply the rewrite of the module docstring to every matching ReLU (and carry the uint8 range through
    MaxPool and layout ops after it), in place; returns the number of requantised tensors (0: unchanged)."""
    g = _Rewrite(model)
    for relu in [n for n in g.nodes if n.op_type == "Relu"]:
        dq1 = g.producer.get(relu.input[0])
        q1 = g.producer.get(dq1.input[0]) if dq1 is not None and dq1.op_type == "DequantizeLinear" else None
        if not _activation_q(q1, g) or q1.output[0] in g.outputs or dq1.output[0] in g.outputs:
            continue
        if len(g.readers(q1.output[0])) != 1 or len(g.readers(dq1.output[0])) != 1:
            continue  # the int8 value before the ReLU is read elsewhere too: it must stay
        qs = g.uint8_group(relu.output[0])
        if qs is None:
            continue  # something reads the ReLU output in float, or at several scales
        g.set_input(relu, 0, q1.input[0])
        g.dropped |= {id(q1), id(dq1)}
        scale = _scale(g, qs[0])
        g.extend_through_sign_preserving(g.to_uint8(qs, _label(relu)), scale)
    return g.apply() + _quantize_after_float_relus(model)


def _quantize_after_float_relus(model: onnx.ModelProto) -> int:
    """X -> Q(int8, s) -> DQ -> Relu -> float readers only (a head's hidden ReLU before its fp32 output layer)
    becomes X -> Relu -> Q(uint8, zero point 0, s * 127/255) -> DQ -> the readers: ONNX Runtime folds the ReLU
    into the convolution writing X, and the readers get the calibrated range [0, 127 s] in 255 steps instead of
    127. In place; returns the number of tensors requantised."""
    g = _Rewrite(model)
    moved: dict[int, list[onnx.NodeProto]] = {}  # id(Q) -> the nodes written in its place
    for relu in [n for n in g.nodes if n.op_type == "Relu"]:
        dq = g.producer.get(relu.input[0])
        q = g.producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if not _zero_point_0_q(q, g) or g.initializer_value(q.input[2]).dtype != np.int8:
            continue
        readers = g.readers(relu.output[0])
        if ({q.output[0], dq.output[0], relu.output[0]} & g.outputs or len(g.readers(q.output[0])) != 1
                or len(g.readers(dq.output[0])) != 1 or not readers
                or any(r.op_type == "QuantizeLinear" for r in readers)):
            continue
        x, y = q.input[0], relu.output[0]
        scale, zp = g.uint8_constants(q, _label(relu))
        new_relu = onnx.helper.make_node("Relu", [x], [f"{y}/before_quantize"], name=relu.name)
        new_q = onnx.helper.make_node("QuantizeLinear", [new_relu.output[0], scale, zp], [q.output[0]], name=q.name)
        new_dq = onnx.helper.make_node("DequantizeLinear", [q.output[0], scale, zp], [y], name=dq.name)
        moved[id(q)] = [new_relu, new_q, new_dq]  # in the Q's place: X is ready there, and the readers come later
        g.dropped |= {id(dq), id(relu)}
    if moved:
        nodes = [n for node in g.nodes if id(node) not in g.dropped for n in moved.get(id(node), [node])]
        del g.graph.node[:]
        g.graph.node.extend(nodes)
        g.dropped.clear()
    return g.apply()


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((int(onnx.helper.get_attribute_value(a)) for a in node.attribute if a.name == name), default)


def _weight(g: GraphIndex, conv: onnx.NodeProto) -> tuple[onnx.NodeProto, int, onnx.NodeProto | None] | None:
    """Where a Conv's constant weight values live: (node, input index, weight DQ or None). A float weight is the
    Conv's own initializer; an int8 one the initializer of a per-output-channel DequantizeLinear (axis 0)."""
    if conv.op_type != "Conv" or _attr(conv, "group", 1) != 1:
        return None
    if conv.input[1] in g.initializers:
        return conv, 1, None
    dq = g.producer.get(conv.input[1])
    if dq is None or dq.op_type != "DequantizeLinear" or _attr(dq, "axis", 1) != 0 \
            or not all(i in g.initializers for i in dq.input) or len(g.readers(dq.output[0])) != 1:
        return None
    return dq, 0, dq


def _conv_readers(g: GraphIndex, conv: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    """The Convs that read `conv`'s output as their data input, through single-reader ReLUs and (int8) activation
    Q -> DQ pairs, if nothing else reads it and it is no graph output; else None."""
    tensor = conv.output[0]
    while len(g.readers(tensor)) == 1 and g.readers(tensor)[0].op_type == "Relu" and tensor not in g.outputs:
        tensor = g.readers(tensor)[0].output[0]
    if tensor in g.outputs:
        return None
    inputs = []
    for node in g.readers(tensor):
        if _activation_q(node, g) and node.output[0] not in g.outputs:
            dqs = g.readers(node.output[0])
            if any(d.op_type != "DequantizeLinear" or d.output[0] in g.outputs for d in dqs):
                return None
            inputs += [(d.output[0], r) for d in dqs for r in g.readers(d.output[0])]
        else:
            inputs.append((tensor, node))
    readers = [r for _, r in inputs]
    if not readers or any(r.input[0] != name or _weight(g, r) is None for name, r in inputs):
        return None
    return readers


def pad_conv_channels(model: onnx.ModelProto, multiple: int, int8_max_width: int | None = None) -> int:
    """Pad every Conv (float, or int8 through a weight DQ) whose output channel count is not a multiple of
    `multiple` with zero filters, when its output reaches only Convs (through single-reader ReLUs and activation
    Q/DQ pairs, which are per tensor) whose matching input columns are padded with zeros; in place; returns the
    number of convolutions padded. An int8 filter pads with weight 0, scale 1, zero point 0. A Conv writing a graph
    output, read by anything else (Add, Concat) or grouped is left alone, and so is one narrower than `multiple` or
    that padding would widen by more than half (45 -> 48 and 23 -> 32 are padded; 8 -> 16 and 17 -> 32 are not: on
    the tiny Aux-NAS model, padding 8 -> 16 made ONNX Runtime about 10% slower). `int8_max_width`: an int8 Conv is
    padded only up to that many channels (`INT8_AMX_MAX_WIDTH`, module docstring)."""
    g = GraphIndex(model.graph)

    def set_init(node: onnx.NodeProto, k: int, array: np.ndarray) -> None:
        name = node.input[k]
        if len(g.readers(name)) > 1:  # shared (the exporter dedupes equal constants): give this node its own copy
            g.add_initializer(numpy_helper.from_array(array, f"{name}/padded/{node.name}"))
            g.set_input(node, k, f"{name}/padded/{node.name}")
        else:
            g.initializers[name].CopyFrom(numpy_helper.from_array(array, name))

    def pad(node: onnx.NodeProto, k: int, extra: int, axis: int, fill: float = 0) -> None:
        a = g.initializer_value(node.input[k])
        shape = list(a.shape)
        shape[axis] = extra
        set_init(node, k, np.concatenate([a, np.full(shape, fill, a.dtype)], axis=axis))

    padded = 0
    for conv in g.nodes:
        where = _weight(g, conv)
        if where is None or (len(conv.input) > 2 and conv.input[2] and conv.input[2] not in g.initializers):
            continue
        holder, k, dq = where
        cout = g.initializer_value(holder.input[k]).shape[0]
        extra = -cout % multiple
        if not extra or cout < multiple or extra > cout // 2:
            continue  # padding would add half or more of the work again (8 -> 16 doubles it): ORT is faster as is
        if dq is not None and int8_max_width is not None and cout + extra > int8_max_width:
            continue  # a wide int8 conv left odd runs on MLAS's AMX GEMM (module docstring)
        readers = _conv_readers(g, conv)
        if readers is None:
            continue
        pad(holder, k, extra, 0)
        if dq is not None:  # per-output-channel scale and zero point
            pad(dq, 1, extra, 0, fill=1)
            if len(dq.input) > 2 and dq.input[2]:
                pad(dq, 2, extra, 0)
        if len(conv.input) > 2 and conv.input[2]:
            pad(conv, 2, extra, 0)
        for r in readers:
            r_holder, r_k, _ = _weight(g, r)
            pad(r_holder, r_k, extra, 1)
        padded += 1
    if padded:
        del g.graph.value_info[:]  # intermediate shapes changed; ORT re-infers them
    return padded


# widest int8 convolution padded where MLAS's int8 GEMM runs on AMX (module docstring, 3.)
INT8_AMX_MAX_WIDTH = 64

MATMUL_RESIZE_MAX = 24  # rows and columns of the Resize input up to which two MatMuls are cheaper (module docstring)


def _interpolation(resize: onnx.NodeProto, size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in): the node's 1D resize of each basis vector, computed by ONNX Runtime's Resize."""
    from ..onnxkit.session import QUIET, open_session

    sizes = numpy_helper.from_array(np.array([size_in, 1, 1, size_out], np.int64), "sizes")
    node = onnx.helper.make_node("Resize", ["x", "", "", "sizes"], ["y"])
    node.attribute.extend(resize.attribute)
    graph = onnx.helper.make_graph([node], "basis", [onnx.helper.make_tensor_value_info(
        "x", onnx.TensorProto.FLOAT, [size_in, 1, 1, size_in])], [onnx.helper.make_tensor_value_info(
        "y", onnx.TensorProto.FLOAT, None)], [sizes])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    session = open_session(model, log_severity=QUIET, threads=1)
    basis = np.eye(size_in, dtype=np.float32).reshape(size_in, 1, 1, size_in)
    return np.ascontiguousarray(session.run(None, {"x": basis})[0][:, 0, 0, :].T)


def resize_as_matmul(model: onnx.ModelProto, max_input: int = MATMUL_RESIZE_MAX) -> int:
    """Replace every linear, non-antialiased 2D Resize of a float tensor with static spatial sizes (input at most
    `max_input` rows and columns) by MatMul(R_h, MatMul(X, R_w^T)); in place; returns the number replaced."""
    shapes = value_shapes(model)
    nodes, replaced = [], 0
    for node in model.graph.node:
        x, y = (shapes.get(node.input[0]), shapes.get(node.output[0])) if node.op_type == "Resize" else (None, None)
        if (x is None or y is None or len(x) != 4 or len(y) != 4 or None in (*x[2:], *y[2:]) or max(x[2:]) > max_input
                or attr(node, "mode", "nearest") != "linear" or attr(node, "antialias", 0)):
            nodes.append(node)
            continue
        rh = numpy_helper.from_array(_interpolation(node, x[2], y[2]), f"{_label(node)}/rows")
        rw_t = numpy_helper.from_array(_interpolation(node, x[3], y[3]).T.copy(), f"{_label(node)}/columns")
        model.graph.initializer.extend([rh, rw_t])
        mid = f"{node.output[0]}/columns"
        nodes.append(onnx.helper.make_node("MatMul", [node.input[0], rw_t.name], [mid], name=f"{_label(node)}/MatMul"))
        nodes.append(onnx.helper.make_node("MatMul", [rh.name, mid], [node.output[0]], name=f"{_label(node)}/MatMul_1"))
        replaced += 1
    if replaced:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        drop_dead_nodes(model.graph)  # the Shape -> Concat that computed each Resize's sizes: ORT would run them
        drop_unused_initializers(model.graph)
    return replaced


# what `shape_for_ort_cpu` counts
REWRITES = ("padded_convs", "uint8_tensors", "matmul_resizes", "selection_convs", "merged_branches",
            "folded_selections")


def shape_for_ort_cpu(model: onnx.ModelProto, block: int | None = None,
                      amx: bool | None = None) -> tuple[onnx.ModelProto, dict[str, int]]:
    """A copy of `model` (fp32, or int8 Q/DQ) in the ONNX Runtime CPU form, and what was rewritten:
    {"padded_convs": n, "uint8_tensors": m, "matmul_resizes": k, "selection_convs": s, "merged_branches": b,
    "folded_selections": f}.
    `block` is the SIMD block to pad to (default: this CPU's, `onnxkit.cpu.simd_block`), `amx` whether MLAS's int8
    GEMM runs on AMX tiles (default: this CPU's, `onnxkit.cpu.amx_int8`; then int8 convolutions are padded only up
    to `INT8_AMX_MAX_WIDTH` channels); with nothing to rewrite, `model` itself (not a copy)."""
    shaped = onnx.ModelProto()
    shaped.CopyFrom(model)
    folded = fold_relu_into_uint8(shaped)  # first: padding then sees Conv -> Relu -> Q -> DQ -> Conv
    resized = resize_as_matmul(shaped)
    block = block or simd_block()
    selections = select_in_blocked_layout(shaped, block)  # before padding: its 1x1 convs are plain readers there
    merged = merge_sibling_branches(shaped, block)  # after: the branches then start at their selection convs
    selections += select_in_blocked_layout(shaped, block)  # again: a merge can leave a concat block-aligned
    composed = fold_selections_into_convs(shaped)  # after both: the heads' maps then feed one grouped conv
    amx = amx_int8() if amx is None else amx
    padded = pad_conv_channels(shaped, block, INT8_AMX_MAX_WIDTH if amx else None)
    counts = {"padded_convs": padded, "uint8_tensors": folded,
              "matmul_resizes": resized, "selection_convs": selections, "merged_branches": merged,
              "folded_selections": composed}
    return (shaped, counts) if any(counts.values()) else (model, counts)
