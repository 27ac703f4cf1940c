"""Sibling branches as grouped convolutions (part of the ort-cpu form, `lowering.shape_for_ort_cpu`).

A pruned multi-task graph runs, in every layer, one small branch per task with the same structure: the GatedMTL
static graph's task branches each select their input from the previous layer's concat (a 1x1 convolution once
`channel_selection` has run), then a strided 1x1 downsample and two 3x3 convolutions, an Add and ReLUs, and the
layer's Concat joins them. On the tiny model these are convolutions of 8-64 channels over maps of 2x2 to 12x16,
where ONNX Runtime's per-node costs are about what the arithmetic costs: run as one grouped convolution per
position, the three task branches of such a layer measured 0.68-0.87x the time of three separate ones (2 threads).

`merge_sibling_branches` finds, for each Concat (channel axis), its inputs made of identical chains of Conv (group
1, constant weights), Relu and Add that start at the same tensors and are read only inside their chain, and
rewrites each set of siblings as one chain: the first convolution reads the common input once with the siblings'
filters stacked, every later one is a grouped convolution (one group per sibling), each group padded with zero
filters and zero input columns to the widest sibling (rounded to the SIMD block, as ONNX Runtime's blocked kernels
compute anyway). The padded channels are exactly 0 through ReLU and Add, and the Concat's readers (convolutions, or
Gathers) take the channels at their new positions; the outputs are unchanged up to summation order. Siblings are
merged only while padding adds at most `MAX_WASTE` to their block-rounded convolution work, 0 by default: only
branches whose widths round to the same number of blocks share a chain (a 64-filter shared branch stays apart from
8-filter task branches, and so does a 8-filter task branch from two 16-filter ones). On the tiny GatedMTL model
allowing 25% merged two more branches, which measured 5-7% faster at batch 1 and 3% slower at batch 8.
fp32 graphs only, as `channel_selection`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ..onnxkit.index import GraphIndex, attr, drop_unused_initializers, value_shapes
from .channel_selection import float_conv, spread_columns

MAX_WASTE = 0.0  # padding work a merge may add, relative to the siblings' block-rounded convolution work
_CONV_ATTRS = ("kernel_shape", "strides", "pads", "dilations")


@dataclass
class _Step:
    """One node of a branch chain; `inputs` are steps or, for the chain's common input tensors, their names."""

    node: onnx.NodeProto
    inputs: list[_Step | str] = field(default_factory=list)


def _round(n: int, block: int) -> int:
    return n + (-n % block)


class _Chains:
    """The graph and what one branch chain is made of (`walk`)."""

    def __init__(self, model: onnx.ModelProto, block: int) -> None:
        self.g = GraphIndex(model.graph)
        self.block = block

    def walk(self, tensor: str, members: list[onnx.NodeProto], memo: dict[str, _Step | str],
             stop: set[str]) -> _Step | str:
        """The chain producing `tensor`, back to the tensors it starts at: those produced by anything but a Conv
        (group 1, constant weights), Relu or Add, and those in `stop` (shared with other chains)."""
        if tensor in memo:
            return memo[tensor]
        node = self.g.producer.get(tensor)
        step: _Step | str = tensor
        if tensor not in stop and node is not None and len(node.output) == 1 and (
                (node.op_type == "Conv" and float_conv(self.g, node)) or node.op_type == "Relu"
                or (node.op_type == "Add" and len(node.input) == 2)):
            step = _Step(node)
            members.append(node)
            data = node.input[:1] if node.op_type == "Conv" else node.input
            step.inputs = [self.walk(name, members, memo, stop) for name in data]
        memo[tensor] = step
        return step

    def signature(self, step: _Step | str) -> tuple:
        if isinstance(step, str):
            return ("input", step)
        n = step.node
        key: tuple = (n.op_type,)
        if n.op_type == "Conv":
            w = self.g.initializers[n.input[1]].dims
            key += (tuple(w[2:]), tuple(tuple(attr(n, a, ()) or ()) for a in _CONV_ATTRS))
        return (*key, *(self.signature(i) for i in step.inputs))

    def conv_dims(self, step: _Step | str, out: list[list[int]]) -> list[list[int]]:
        """Weight shapes (out, in, kh, kw) of the chain's convolutions, in walk order."""
        if isinstance(step, _Step):
            if step.node.op_type == "Conv":
                out.append(list(self.g.initializers[step.node.input[1]].dims))
            for i in step.inputs:
                self.conv_dims(i, out)
        return out


def _groups(chains: _Chains, siblings: list[tuple[int, _Step]]) -> list[list[tuple[int, _Step]]]:
    """Sets of siblings worth merging: greedily, widest first, while padding adds at most MAX_WASTE."""
    b = chains.block
    shape = {i: [_round(d[0], b) for d in chains.conv_dims(s, [])] for i, s in siblings}
    # the work of one output channel of each convolution: input channels x kernel area
    work = [float(d[1] * d[2] * d[3]) for d in chains.conv_dims(siblings[0][1], [])]
    order = sorted(siblings, key=lambda s: -sum(shape[s[0]]))
    out: list[list[tuple[int, _Step]]] = []
    for sib in order:
        for group in out:
            members = [*group, sib]
            widest = [max(shape[i][k] for i, _ in members) for k in range(len(work))]
            need = sum(w * sum(shape[i][k] for i, _ in members) for k, w in enumerate(work))
            if sum(w * widest[k] * len(members) for k, w in enumerate(work)) <= (1 + MAX_WASTE) * need:
                group.append(sib)
                break
        else:
            out.append([sib])
    return [grp for grp in out if len(grp) > 1]


class _Merge:
    """Emit one merged chain for `steps` (the siblings, in concat order), bottom up."""

    def __init__(self, chains: _Chains, name: str) -> None:
        self.c = chains
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.memo: dict[tuple[int, ...], tuple[str, int]] = {}

    def const(self, array: np.ndarray, label: str) -> str:
        name = f"{self.name}/{label}_{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def emit(self, steps: list[_Step]) -> tuple[str, int]:
        """(merged tensor, channels per sibling) for one position of the chains."""
        if isinstance(steps[0], str):
            raise _NotMergeable  # a Relu or Add reading a chain input: it would have to be copied per sibling
        key = tuple(id(s.node) for s in steps)
        if key in self.memo:
            return self.memo[key]
        first, n, g = steps[0].node, len(steps), self.c.g
        out = f"{self.name}/{first.output[0]}"
        if first.op_type == "Relu":
            src, width = self.emit([s.inputs[0] for s in steps])
            self.nodes.append(onnx.helper.make_node("Relu", [src], [out], name=f"{out}/Relu"))
        elif first.op_type == "Add":
            a, wa = self.emit([s.inputs[0] for s in steps])
            b, wb = self.emit([s.inputs[1] for s in steps])
            if wa != wb:
                raise _NotMergeable
            width = wa
            self.nodes.append(onnx.helper.make_node("Add", [a, b], [out], name=f"{out}/Add"))
        else:
            ws = [g.initializer_value(s.node.input[1]) for s in steps]
            bs = [g.initializer_value(s.node.input[2]) if len(s.node.input) > 2 and s.node.input[2] else None
                  for s in steps]
            width = _round(max(w.shape[0] for w in ws), self.c.block)
            root = isinstance(steps[0].inputs[0], str)
            if root:
                src, cin, group = steps[0].inputs[0], ws[0].shape[1], 1
            else:
                src, cin = self.emit([s.inputs[0] for s in steps])
                group = n
            weight = np.zeros((n * width, cin, *ws[0].shape[2:]), np.float32)
            bias = np.zeros(n * width, np.float32)
            for k, (w, b) in enumerate(zip(ws, bs, strict=True)):
                weight[k * width:k * width + w.shape[0], :w.shape[1]] = w
                if b is not None:
                    bias[k * width:k * width + w.shape[0]] = b
            conv = onnx.helper.make_node("Conv", [src, self.const(weight, "weight"), self.const(bias, "bias")],
                                         [out], name=f"{out}/Conv", group=group)
            conv.attribute.extend(a for a in first.attribute if a.name in _CONV_ATTRS)
            self.nodes.append(conv)
        self.memo[key] = (out, width)
        return out, width


class _NotMergeable(Exception):
    """The siblings do not line up (an Add of differently sized operands, a chain input read by a Relu or Add)."""


def _remap_reader(g: GraphIndex, reader: onnx.NodeProto, new_of_old: np.ndarray, width: int
                  ) -> tuple[int, np.ndarray] | None:
    """(input position, new constant) that makes a reader of the rewritten concat read its channels at their new
    positions: a Conv's weight columns or a Gather's indices; None if it reads the concat otherwise."""
    if len(reader.input) < 2:
        return None
    if float_conv(g, reader):
        return 1, spread_columns(g.initializer_value(reader.input[1]), new_of_old, width)
    idx = g.constant_value(reader.input[1]) if reader.op_type == "Gather" else None
    if idx is not None and attr(reader, "axis", 0) in (1, -3) and idx.ndim == 1:
        return 1, new_of_old[idx].astype(np.int64)
    return None


def _merge_concat(model: onnx.ModelProto, concat: onnx.NodeProto, block: int,
                  shapes: dict[str, list[int | None]]) -> int:
    """Merge the sibling chains feeding `concat`; returns the number of chains merged away."""
    chains = _Chains(model, block)
    g = chains.g
    readers = g.readers(concat.output[0])
    if attr(concat, "axis", 0) not in (1, -3) or concat.output[0] in g.outputs or not readers \
            or len(set(concat.input)) != len(concat.input) or any(r.input[0] != concat.output[0] for r in readers):
        return 0
    seen: dict[int, int] = {}  # node -> how many chains walk through it: those shared end the chains
    for name in concat.input:
        nodes: list[onnx.NodeProto] = []
        chains.walk(name, nodes, {}, set())
        for n in nodes:
            seen[id(n)] = seen.get(id(n), 0) + 1
    stop = {o for n in g.nodes if seen.get(id(n), 0) > 1 for o in n.output}
    steps, members = [], []
    for name in concat.input:
        nodes = []
        steps.append(chains.walk(name, nodes, {}, stop))
        members.append(nodes)
    candidates = []
    for k, (step, nodes) in enumerate(zip(steps, members, strict=True)):
        inside = set(map(id, nodes))
        if not isinstance(step, _Step) or not any(n.op_type == "Conv" for n in nodes):
            continue
        if all((r is concat) if o == concat.input[k] else id(r) in inside
               for n in nodes for o in n.output for r in g.readers(o)) and not any(
                o in g.outputs for n in nodes for o in n.output):
            candidates.append(k)
    by_signature: dict[tuple, list[tuple[int, _Step]]] = {}
    for k in candidates:
        by_signature.setdefault(chains.signature(steps[k]), []).append((k, steps[k]))
    groups = [sorted(grp, key=lambda s: s[0]) for sibs in by_signature.values() if len(sibs) > 1
              for grp in _groups(chains, sibs)]
    counts = [_out_channels(chains, step, shapes.get(name)) for step, name in zip(steps, concat.input, strict=True)]
    if not groups or None in counts:
        return 0
    merged: dict[int, tuple[list[int], str, int, _Merge]] = {}
    try:
        for grp in groups:
            m = _Merge(chains, f"{concat.name or concat.output[0]}/merged_{grp[0][0]}")
            tensor, width = m.emit([s for _, s in grp])
            merged[grp[0][0]] = ([k for k, _ in grp], tensor, width, m)
    except _NotMergeable:
        return 0
    # the new concat: each merged chain at its first sibling's place
    dropped = {k for ks, *_ in merged.values() for k in ks[1:]}
    offsets: dict[int, int] = {}
    new_inputs, position = [], 0
    for k, name in enumerate(concat.input):
        if k in dropped:
            continue
        if k in merged:
            ks, tensor, width, _ = merged[k]
            offsets.update({sib: position + j * width for j, sib in enumerate(ks)})
            new_inputs.append(tensor)
            position += len(ks) * width
        else:
            offsets[k] = position
            new_inputs.append(name)
            position += counts[k]
    new_of_old = np.concatenate([np.arange(c) + offsets[k] for k, c in enumerate(counts)])
    remaps = [_remap_reader(g, r, new_of_old, position) for r in readers]
    if any(r is None for r in remaps):
        return 0
    new_inits: list[onnx.TensorProto] = []
    for reader, (pos, value) in zip(readers, remaps, strict=True):
        name = f"{reader.input[pos]}/merged/{reader.name or reader.output[0]}"
        new_inits.append(numpy_helper.from_array(value, name))
        reader.input[pos] = name
    gone = {id(n) for ks, *_ in merged.values() for k in ks for n in members[k]}
    nodes = []
    for node in model.graph.node:
        if id(node) in gone:
            continue
        if node is concat:  # the merged chains read only what precedes their siblings, so here is in order
            for _, _, _, m in merged.values():
                nodes += m.nodes
                new_inits += m.inits
            del concat.input[:]
            concat.input.extend(new_inputs)
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(new_inits)
    return len(dropped)


def _out_channels(chains: _Chains, step: _Step | str, shape: list[int | None] | None) -> int | None:
    """Channels of a concat input: its chain's last convolution's, else what shape inference said."""
    while isinstance(step, _Step) and step.node.op_type != "Conv":
        step = step.inputs[0]
    if isinstance(step, _Step):
        return int(chains.g.initializers[step.node.input[1]].dims[0])
    return shape[1] if shape is not None and len(shape) == 4 and shape[1] else None


def merge_sibling_branches(model: onnx.ModelProto, block: int) -> int:
    """Apply the module docstring's rewrite to every Concat of an fp32 graph, in place; returns the number of
    branches merged into a sibling's grouped convolutions (0: unchanged)."""
    if block <= 1 or any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        return 0
    shapes = value_shapes(model)  # of the inputs that are no chain: the merges do not change those
    merged = 0
    for out in [n.output[0] for n in model.graph.node if n.op_type == "Concat"]:
        # found afresh: a merge rebuilds the node list, and protobuf copies the nodes it is given
        concat = next(n for n in model.graph.node if n.op_type == "Concat" and n.output[0] == out)
        merged += _merge_concat(model, concat, block, shapes)
    if merged:
        del model.graph.value_info[:]
        drop_unused_initializers(model.graph)
    return merged
