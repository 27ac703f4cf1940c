"""Channel selections in ONNX Runtime's blocked layout (part of the ort-cpu form, `lowering.shape_for_ort_cpu`).

A pruned multi-task graph selects channels a lot: the GatedMTL static graph concatenates each layer's kept branch
outputs (2-19 filters each on the tiny model) and every task picks its input channels from that concat with a
Gather, psi' as a weighted sum of such picks; the stem's residuals are Slices, merged convolutions are Split. On
ONNX Runtime's CPU provider (MLAS) all convolutions run in the blocked NCHWc layout, but Gather, Slice and Split do
not, and a Concat stays blocked only when every input's channel count is a multiple of the SIMD block. So around
every selection the tensors are reordered to NCHW and back: on the tiny GatedMTL model 42 reorder nodes, 11
Gathers, 7 NCHW Concats, their time a tenth of the kernels' and the reason its pruning saved less on ONNX Runtime
than its FLOPs promise.

`select_in_blocked_layout` rewrites, in an fp32 graph:

1. a Concat (channel axis) whose inputs are not block-aligned: each unaligned input is padded with zero channels
   up to the next multiple of the block, when it is made of single-reader Convs through ReLUs and Adds (zero
   filters, zero bias: the padded channels are exactly 0, a ReLU keeps them 0). Its readers see the channels at
   new positions, so each must be a selection (step 2 takes the new positions) or a Conv (zero weight columns are
   inserted at the padded positions); otherwise the concat is left as it is. A blocked convolution computes its
   output in whole blocks anyway, so the padded filters cost nothing there;
2. a selection of channels (Gather with constant indices, Slice with constant bounds and step 1, Split, all on
   axis 1) of a 4-D tensor whose channel count is a multiple of the block: a 1x1 Conv with a 0/1 matrix, which
   runs blocked. Each output value is 1 * x + 0 * (the other channels): exactly x for finite inputs;
3. a blend of such selections, a per-channel (or scalar) Mul of one and Adds of those over the same input (psi' =
   sum_t w_t phi'_t), becomes one 1x1 Conv with the summed matrix: it is a linear map of the concat, and the
   selections it read are left to the branches that read them (which `branch_merge` can then run together). The
   sums run in another order: equal to float rounding.

Only narrow tensors (at most `MAX_CHANNELS` selected-from channels): the 1x1 Conv costs one multiply-add per
input channel for each value it outputs where a copy costs one move, which pays while the per-node costs of the
reorders dominate and stops paying beyond. On the ResNet-34 GatedMTL layout (concats of up to 4 x 512 channels)
converting every selection made the file about 10% slower (and 35 MB of 0/1 matrices larger); at 128 channels it
runs as fast as without at batch 1 and 3% faster at batch 8, the tiny model's layers (at most 128) are all
converted. A selection on an unaligned tensor, on a graph input, or in a Q/DQ graph is left alone (an fp32 1x1
Conv there would break the int8 kernels' chain).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..onnxkit.index import GraphIndex, attr, drop_unused_initializers, value_shapes

_SELECTIONS = ("Gather", "Slice", "Split")
MAX_CHANNELS = 128  # widest selected tensor run as a 1x1 conv (module docstring: beyond, the copy is cheaper)


def channel_count(shapes: dict[str, list[int | None]], name: str) -> int | None:
    """A 4-D tensor's channel count from `value_shapes`, None when unknown."""
    s = shapes.get(name)
    return s[1] if s is not None and len(s) == 4 and s[1] else None


def channel_picks(g: GraphIndex, node: onnx.NodeProto, channels: int) -> list[np.ndarray] | None:
    """The input channels each output of a selection takes, or None when `node` is no constant channel selection."""
    if node.op_type == "Gather" and attr(node, "axis", 0) in (1, -3):
        idx = g.constant_value(node.input[1])
        if idx is None or idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            return None
        idx = np.where(idx < 0, idx + channels, idx)
        return [idx.astype(np.int64)] if ((idx >= 0) & (idx < channels)).all() else None
    if node.op_type == "Slice" and len(node.input) >= 4 and node.input[3]:
        bounds = [g.constant_value(name) if name else np.array([1]) for name in [*node.input[1:5], ""][:4]]
        if any(b is None or b.size != 1 for b in bounds):
            return None
        start, end, axis, step = (int(b.reshape(-1)[0]) for b in bounds)
        if axis not in (1, -3) or step != 1:
            return None
        picked = np.arange(channels)[slice(start, end)]
        return [picked] if picked.size else None
    if node.op_type == "Split" and attr(node, "axis", 0) in (1, -3):
        sizes = g.constant_value(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        if sizes is None:
            return None  # equal splits: their sizes need the output shapes; the exporter writes them explicitly
        sizes = sizes.astype(np.int64).reshape(-1)
        if sizes.sum() != channels or len(sizes) != len(node.output):
            return None
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        return [np.arange(s, s + n) for s, n in zip(starts, sizes, strict=True)]
    return None


def _as_convs(node: onnx.NodeProto, source: str, picks: list[np.ndarray], channels: int
              ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """One 1x1 Conv with a 0/1 matrix per output of the selection `node`, reading `source`."""
    nodes, weights = [], []
    for k, (out, idx) in enumerate(zip(node.output, picks, strict=True)):
        w = np.zeros((len(idx), channels, 1, 1), np.float32)
        rows = np.flatnonzero(idx >= 0)  # index -1: a padding row of zeros
        w[rows, idx[rows]] = 1.0
        name = f"{node.name or node.output[0]}/selection_{k}"
        weights.append(numpy_helper.from_array(w, name))
        nodes.append(onnx.helper.make_node("Conv", [source, name], [out], name=f"{name}/Conv"))
    return nodes, weights


def float_conv(g: GraphIndex, node: onnx.NodeProto | None) -> bool:
    """A plain Conv (group 1, explicit pads) with constant weights and bias: one whose channels can be moved."""
    return (node is not None and node.op_type == "Conv" and attr(node, "group", 1) == 1
            and attr(node, "auto_pad", "NOTSET") == "NOTSET" and node.input[1] in g.initializers
            and (len(node.input) < 3 or not node.input[2] or node.input[2] in g.initializers))


def spread_columns(w: np.ndarray, positions: np.ndarray, width: int) -> np.ndarray:
    """A Conv weight whose input channel j moves to `positions[j]` of a `width`-channel input (zeros elsewhere)."""
    wide = np.zeros((w.shape[0], width, *w.shape[2:]), w.dtype)
    wide[:, positions] = w
    return wide


def _leaves(g: GraphIndex, tensor: str, shapes: dict[str, list[int | None]], block: int
            ) -> list[onnx.NodeProto] | None:
    """The Convs and block-aligned selections whose output channels make up `tensor` (through ReLUs and elementwise
    Adds), each tensor on the way read once and no graph output; None when `tensor` is made otherwise."""
    if len(g.readers(tensor)) != 1 or tensor in g.outputs:
        return None
    node = g.producer.get(tensor)
    if float_conv(g, node):
        return [node]
    if node is not None and node.op_type in ("Gather", "Slice") and len(node.output) == 1:
        channels = channel_count(shapes, node.input[0])
        if channels and channels % block == 0 and node.input[0] not in {i.name for i in g.inputs}:
            return [node] if channel_picks(g, node, channels) is not None else None
    if node is not None and node.op_type == "Relu":
        return _leaves(g, node.input[0], shapes, block)
    if node is not None and node.op_type == "Add" and len(node.input) == 2:
        parts = [_leaves(g, name, shapes, block) for name in node.input]
        return None if None in parts else [c for p in parts for c in p]
    return None


def _set(g: GraphIndex, node: onnx.NodeProto, pos: int, value: np.ndarray) -> None:
    """Give input `pos` of `node` the constant `value`, as its own initializer (the exporter shares equal ones)."""
    name = f"{node.input[pos]}/blocked/{node.name or node.output[0]}"
    g.add_initializer(numpy_helper.from_array(value, name))
    g.set_input(node, pos, name)


def _pad_concat(g: GraphIndex, concat: onnx.NodeProto, shapes: dict[str, list[int | None]], block: int,
                max_channels: int, picks_of: dict[int, list[np.ndarray]]) -> bool:
    """Step 1 of the module docstring for one Concat; True if it was padded. `picks_of` receives the remapped
    channels of its selection readers (by node id), which step 2 turns into convolutions."""
    counts = [channel_count(shapes, name) for name in concat.input]
    if None in counts or attr(concat, "axis", 0) not in (1, -3) or all(c % block == 0 for c in counts):
        return False
    total = sum(counts)
    leaves = [_leaves(g, name, shapes, block) if c % block else []
              for name, c in zip(concat.input, counts, strict=True)]
    if any(lv is None for lv in leaves):
        return False
    readers = g.readers(concat.output[0])
    selections = {id(r): channel_picks(g, r, total) for r in readers if r.op_type in _SELECTIONS}
    if not readers or concat.output[0] in g.outputs or any(
            (r.op_type not in _SELECTIONS or selections[id(r)] is None) and not (
                float_conv(g, r) and r.input[0] == concat.output[0]) for r in readers):
        return False
    padded = [c + (-c % block) for c in counts]
    if sum(padded) > max_channels:
        return False
    new_pos = np.concatenate([np.arange(c) + off for c, off in zip(counts, np.cumsum([0, *padded[:-1]]),
                                                                     strict=True)])
    for convs, c, p in zip(leaves, counts, padded, strict=True):
        for conv in convs:
            if conv.op_type != "Conv":  # a selection: rows of zeros (index -1)
                own = picks_of.get(id(conv)) or channel_picks(g, conv, channel_count(shapes, conv.input[0]))
                picks_of[id(conv)] = [np.concatenate([own[0], np.full(p - c, -1, np.int64)])]
                continue
            w = g.initializer_value(conv.input[1])
            _set(g, conv, 1, np.concatenate([w, np.zeros((p - c, *w.shape[1:]), w.dtype)]))
            if len(conv.input) > 2 and conv.input[2]:
                _set(g, conv, 2, np.concatenate([g.initializer_value(conv.input[2]), np.zeros(p - c, np.float32)]))
    for r in readers:
        if r.op_type in _SELECTIONS:
            picks_of[id(r)] = [new_pos[idx] for idx in selections[id(r)]]
        else:
            _set(g, r, 1, spread_columns(g.initializer_value(r.input[1]), new_pos, sum(padded)))
    shapes[concat.output[0]] = [*shapes[concat.output[0]][:1], sum(padded), *shapes[concat.output[0]][2:]]
    return True


def select_in_blocked_layout(model: onnx.ModelProto, block: int, max_channels: int = MAX_CHANNELS) -> int:
    """Apply the module docstring's rewrites to an fp32 graph, in place; returns the number of selections that now
    run as convolutions (0: unchanged)."""
    if block <= 1 or any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        return 0  # no blocked layout to keep, or an int8 graph
    shapes = value_shapes(model)
    g = GraphIndex(model.graph)
    picks_of: dict[int, list[np.ndarray]] = {}
    for node in [n for n in g.nodes if n.op_type == "Concat"]:
        _pad_concat(g, node, shapes, block, max_channels, picks_of)
    graph_inputs = {i.name for i in g.inputs}
    nodes, converted, made = [], 0, set()
    for node in model.graph.node:
        channels = channel_count(shapes, node.input[0]) if node.op_type in _SELECTIONS and node.input else None
        picks = picks_of.get(id(node))
        if (picks is None and channels is not None and channels % block == 0 and channels <= max_channels
                and node.input[0] not in graph_inputs):
            picks = channel_picks(g, node, channels)
        if picks is None:
            nodes.append(node)
            continue
        convs, weights = _as_convs(node, node.input[0], picks, channel_count(shapes, node.input[0]))
        nodes += convs
        made.update(c.output[0] for c in convs)
        model.graph.initializer.extend(weights)
        converted += 1
    if converted or picks_of:
        del model.graph.node[:]
        model.graph.node.extend(_fold_blends(nodes, made, model.graph))
        del model.graph.value_info[:]  # channel counts changed; ONNX Runtime infers them again
        drop_unused_initializers(model.graph)
    return converted


def _fold_blends(nodes: list[onnx.NodeProto], made: set[str], graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Step 3 of the module docstring: a per-channel Mul of a selection and a sum of such products over one input
    become one 1x1 Conv (psi' = sum_t w_t phi'_t of a concat is a linear map of it). The selection itself stays
    for its other readers, so a branch that reads phi'_t reads it alone."""
    consts = {t.name: t for t in graph.initializer}
    producer = {o: n for n in nodes for o in n.output}
    maps: dict[str, tuple[str, np.ndarray]] = {}  # tensor -> (input, 1x1 matrix) for selections and blends

    def linear(name: str) -> tuple[str, np.ndarray] | None:
        if name in maps:
            return maps[name]
        node = producer.get(name)
        if name in made and node is not None:
            return node.input[0], numpy_helper.to_array(consts[node.input[1]])[:, :, 0, 0]
        return None

    out = []
    for node in nodes:
        folded = None
        if node.op_type == "Mul" and len(node.input) == 2:
            x, k = (node.input if node.input[1] in consts else node.input[::-1])
            base = linear(x) if k in consts else None
            scale = numpy_helper.to_array(consts[k]) if base is not None else None
            per_channel = scale is not None and (scale.size == 1 or (
                scale.ndim in (3, 4) and scale.shape[-2:] == (1, 1) and scale.size == base[1].shape[0]))
            if per_channel:  # a scalar, or one factor per channel broadcast over (C, 1, 1)
                folded = base[0], base[1] * scale.reshape(-1, 1).astype(np.float32)
        elif node.op_type == "Add" and len(node.input) == 2:
            a, b = linear(node.input[0]), linear(node.input[1])
            if a is not None and b is not None and a[0] == b[0] and a[1].shape == b[1].shape:
                folded = a[0], a[1] + b[1]
        if folded is None:
            out.append(node)
            continue
        maps[node.output[0]] = folded
        made.add(node.output[0])
        name = f"{node.name or node.output[0]}/blend"
        weight = numpy_helper.from_array(folded[1][:, :, None, None].astype(np.float32), name)
        graph.initializer.append(weight)
        consts[name] = weight
        conv = onnx.helper.make_node("Conv", [folded[0], name], [node.output[0]], name=f"{name}/Conv")
        producer[node.output[0]] = conv
        out.append(conv)
    # the products and partial sums nothing reads any more go (a selection still read by its branch stays)
    used = {i for n in out for i in n.input} | {o.name for o in graph.output}
    while True:
        dead = [n for n in out if n.output[0] in maps or n.output[0] in made]
        dead = [n for n in dead if not any(o in used for o in n.output)]
        if not dead:
            return out
        gone = set(map(id, dead))
        out = [n for n in out if id(n) not in gone]
        used = {i for n in out for i in n.input} | {o.name for o in graph.output}
