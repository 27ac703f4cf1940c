"""Linear channel maps folded into the convolutions that read them (part of the ort-cpu form,
`lowering.shape_for_ort_cpu`).

After `channel_selection` and `branch_merge` a pruned multi-task graph still runs, in front of some convolutions,
a 1x1 convolution without bias that only maps channels: a 0/1 selection (each task's head picks its input
channels from the last layer's concat) or a psi' blend. A convolution R reading such a map S computes
R(S x) = (R . S)(x): the composed weight W'[o, c] = sum_j W[o, j] S[j, c] (per kernel position) reads x itself.
It is exact because S has no bias: R's zero padding of S x equals S applied to zero-padded x. A grouped R (one
group per merged sibling) composes group by group into one plain convolution over all of x.

Composing trades the map's work and R's for R' = Co x Cx x k x k multiply-adds, which grows with x's width: it
pays where the map is wide (its output is copied through memory as a full tensor) and R reads most of x. A map is
folded only when R' costs at most `MAX_GROWTH` more multiply-adds than the map and its readers together, and every
reader is a convolution it can fold into (otherwise the map stays for the others and nothing is gained). On the
tiny GatedMTL model that folds the heads' selection (192 of 128 channels) into their grouped 3x3 convolution and
each head's pick of its 16 channels into its 1x1 output convolution: the pair measured 0.765 ms of the file's
4.36 (1 thread, batch 8), the composed convolution about 0.47; the branch inputs' selections stay (composing
would double their convolutions' work).

The other side: a Conv whose output (directly or through a ReLU) is read only by 0/1 picks (at most one 1 per
row) runs as one Conv per pick with the picked filters, S relu(W x + b) = relu((S W) x + S b), exact (copies).
Layer 0 of the GatedMTL static graph stacks its branches' first convolutions into one and picks each branch's
filters back out; split, the picks and their copies go and the filters are computed once, as before. Only when
the picks take at most the filters there are (overlapping picks would compute shared filters twice).
fp32 graphs only, as `channel_selection`.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..onnxkit.index import GraphIndex, attr, drop_unused_initializers
from .channel_selection import float_conv

MAX_GROWTH = 0.10  # extra multiply-adds a fold may cost, relative to the map's and its readers' own


def _linear_map(g: GraphIndex, node: onnx.NodeProto) -> np.ndarray | None:
    """The (Cout, Cin) matrix of a 1x1, stride-1, unpadded Conv without bias (or with a zero one), else None."""
    if node.op_type != "Conv" or attr(node, "group", 1) != 1 or attr(node, "auto_pad", "NOTSET") != "NOTSET":
        return None
    w = g.initializer_value(node.input[1])
    if w is None or w.ndim != 4 or w.shape[2:] != (1, 1):
        return None
    if any(p != 0 for p in attr(node, "pads", [0])) or any(s != 1 for s in attr(node, "strides", [1])):
        return None
    if len(node.input) > 2 and node.input[2]:
        bias = g.initializer_value(node.input[2])
        if bias is None or np.any(bias != 0):
            return None
    return w[:, :, 0, 0]


def _composed(g: GraphIndex, reader: onnx.NodeProto, s: np.ndarray) -> np.ndarray | None:
    """The weight of `reader` (a Conv of the map's output, any group) composed with the map `s`, else None."""
    if (reader.op_type != "Conv" or attr(reader, "auto_pad", "NOTSET") != "NOTSET"
            or reader.input[1] == reader.input[0]):
        return None
    w = g.initializer_value(reader.input[1])
    if w is None or w.ndim != 4 or (len(reader.input) > 2 and reader.input[2]
                                    and g.initializer_value(reader.input[2]) is None):
        return None
    groups = attr(reader, "group", 1)
    if w.shape[0] % groups or w.shape[1] * groups != s.shape[0]:
        return None
    rows, cin = w.shape[0] // groups, w.shape[1]
    parts = [np.einsum("ojhw,jc->ochw", w[k * rows:(k + 1) * rows], s[k * cin:(k + 1) * cin])
             for k in range(groups)]
    return np.concatenate(parts).astype(np.float32)


def fold_selections_into_convs(model: onnx.ModelProto, max_growth: float = MAX_GROWTH) -> int:
    """Apply the module docstring's rewrite to an fp32 graph, in place; returns the number of maps folded away."""
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        return 0  # an int8 graph: its 1x1 convolutions are quantised ones
    g = GraphIndex(model.graph)
    folded, gone = 0, set()
    for node in g.nodes:
        s = _linear_map(g, node)
        readers = g.readers(node.output[0]) if s is not None else []
        if not readers or node.output[0] in g.outputs:
            continue
        composed = [_composed(g, r, s) if r.input[0] == node.output[0] else None for r in readers]
        if any(c is None for c in composed):
            continue
        # multiply-adds per pixel of x: a strided reader computes fewer output pixels than the map
        share = [1 / float(np.prod(attr(r, "strides", [1]))) for r in readers]
        work = s.size + sum(f * g.initializer_value(r.input[1]).size for f, r in zip(share, readers, strict=True))
        if sum(f * c.size for f, c in zip(share, composed, strict=True)) > (1 + max_growth) * work:
            continue
        for r, w in zip(readers, composed, strict=True):
            name = f"{r.input[1]}/folded/{node.name or node.output[0]}"
            g.add_initializer(onnx.numpy_helper.from_array(w, name))
            g.set_input(r, 1, name)
            g.set_input(r, 0, node.input[0])
            for a in r.attribute:
                if a.name == "group":
                    a.i = 1
        gone.add(id(node))
        folded += 1
    splits, split_picks = _split_producers(g, gone)
    folded += split_picks
    if folded:
        removed = {o for n in model.graph.node if id(n) in gone for o in n.output}
        kept = [m for n in model.graph.node if id(n) not in gone for m in splits.get(id(n), [n])]
        del model.graph.node[:]
        model.graph.node.extend(kept)
        stale = [v for v in model.graph.value_info if v.name in removed]
        for v in stale:
            model.graph.value_info.remove(v)
        drop_unused_initializers(model.graph)
    return folded


def _row_picks(s: np.ndarray) -> np.ndarray | None:
    """For a 0/1 matrix with at most one 1 per row: the column each row copies (-1: a row of zeros), else None."""
    if not np.isin(s, (0.0, 1.0)).all() or (s.sum(axis=1) > 1).any():
        return None
    return np.where(s.any(axis=1), s.argmax(axis=1), -1)


def _split_producers(g: GraphIndex, gone: set[int]) -> tuple[dict[int, list[onnx.NodeProto]], int]:
    """The module docstring's second rewrite: a Conv (through a ReLU) whose output is read only by row picks runs
    as one Conv per pick with the picked filters, when the picks take no more filters than it has. Returns, by id
    of each split Conv, the nodes replacing it, and the number of picks removed; the ReLU and the picks join
    `gone`."""
    rows_of = {id(n): _row_picks(m) for n in g.nodes if id(n) not in gone and (m := _linear_map(g, n)) is not None}
    splits: dict[int, list[onnx.NodeProto]] = {}
    removed = 0
    # graph order (not a set): the file's bytes must not depend on the process's string hashing
    for tensor in dict.fromkeys(n.input[0] for n in g.nodes if id(n) in rows_of):
        picks = g.readers(tensor)
        rows = [rows_of.get(id(r)) if r.input[0] == tensor else None for r in picks]
        head = g.producer.get(tensor)
        relu = head if head is not None and head.op_type == "Relu" else None
        conv = g.producer.get(relu.input[0]) if relu is not None else head
        if (any(r is None for r in rows) or tensor in g.outputs or not float_conv(g, conv) or id(conv) in splits
                or (relu is not None and (len(g.readers(conv.output[0])) != 1 or conv.output[0] in g.outputs))):
            continue
        w = g.initializer_value(conv.input[1])
        bias = g.initializer_value(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros(len(w))
        if sum(int((r >= 0).sum()) for r in rows) > len(w):
            continue  # the picks overlap: split, the shared filters would run twice
        nodes = []
        for pick, r in zip(picks, rows, strict=True):
            name = f"{conv.name or conv.output[0]}/split/{pick.name or pick.output[0]}"
            kept, keep = (r >= 0), np.clip(r, 0, None)
            g.add_initializer(onnx.numpy_helper.from_array(
                np.where(kept[:, None, None, None], w[keep], 0).astype(np.float32), f"{name}/weight"))
            g.add_initializer(onnx.numpy_helper.from_array(np.where(kept, bias[keep], 0).astype(np.float32),
                                                           f"{name}/bias"))
            out = pick.output[0] if relu is None else f"{name}/pre_relu"
            nodes.append(onnx.helper.make_node("Conv", [conv.input[0], f"{name}/weight", f"{name}/bias"], [out],
                                               name=f"{name}/Conv"))
            nodes[-1].attribute.extend(conv.attribute)
            if relu is not None:
                nodes.append(onnx.helper.make_node("Relu", [out], [pick.output[0]], name=f"{name}/Relu"))
        splits[id(conv)] = nodes
        gone.update(id(n) for n in [*picks, relu] if n is not None)
        removed += len(picks)
    return splits, removed
