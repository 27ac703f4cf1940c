"""Sibling branches as grouped convolutions (part of the ort-cpu form, `lowering.shape_for_ort_cpu`).

A pruned multi-task graph runs, in every layer, one small branch per task with the same structure: the GatedMTL
static graph's task branches each select their input from the previous layer's concat (a 1x1 convolution once
`channel_selection` has run), then a strided 1x1 downsample and two 3x3 convolutions, an Add and ReLUs, and the
layer's Concat joins them. On the tiny model these are convolutions of 8-64 channels over maps of 2x2 to 12x16,
where ONNX Runtime's per-node costs are about what the arithmetic costs: run as one grouped convolution per
position, the three task branches of such a layer measured 0.68-0.87x the time of three separate ones (2 threads).

`merge_sibling_branches` finds, for each Concat (channel axis), its inputs made of identical chains of Conv (group
1, constant weights), Relu and Add that start at the same tensors (or at channel selections of one tensor) and are
read only inside their chain, and rewrites each set of siblings as one chain, in one of two layouts:

- grouped: the first convolution reads the common input once with the siblings' filters stacked (a selection's
  weights spread over the whole tensor, zero for the channels it did not take), every later one is a grouped
  convolution (one group per sibling), each group padded with zero filters and zero input columns to the widest
  sibling (rounded to the SIMD block, as ONNX Runtime's blocked kernels compute anyway). Siblings share a chain
  only while padding adds at most `MAX_WASTE` to their block-rounded convolution work, 0 by default: only
  branches whose widths round to the same number of blocks (a 64-filter shared branch stays apart from 8-filter
  task branches, and so does a 8-filter task branch from two 16-filter ones). On the tiny GatedMTL model allowing
  25% merged two more branches, which measured 5-7% faster at batch 1 and 3% slower at batch 8;
- tight: the siblings' channels side by side, each merged tensor rounded to the block once, every convolution a
  dense one with the siblings' filters on its block diagonal. For branches narrower than a block: the tiny
  GatedMTL model's first layer (a shared branch of 8 filters, three task branches of 2, each convolution padded
  to 16 filters by the blocked kernel on its own) becomes one 3x3 convolution of 16 filters over the stacked
  32-channel tensor, half the multiply-adds of the four, in the blocked layout throughout.

A residual (an Add operand that is a chain input: the block's input itself, or a selection of its channels) becomes
one 1x1 convolution of the common tensor with a 0/1 matrix into the merged layout (exact for finite values). The
padded channels are exactly 0 through ReLU and Add, and the Concat's readers (convolutions, or Gathers) take the
channels at their new positions; the outputs are unchanged up to summation order. Of the two layouts the one whose
convolutions cost the blocked kernels less is taken, and a merge only while it costs at most `MAX_WASTE` more than
its siblings on their own (a first convolution reading a few channels of a wide tensor would read all of it
merged: on the ResNet-34 GatedMTL layout such merges made the file 1.1-1.2x slower). On the tiny GatedMTL model at
a block of 16 (AMD EPYC, AVX-512) these rules merge 8 branches instead of 3 (the first layer's four tight) and
brought static / masked on ONNX Runtime from 0.80 to 0.70-0.75 at batch 8 (`benchmarks/bench_prune.py`, seven
runs; FLOPs ratio 0.668).
fp32 graphs only, as `channel_selection`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ..onnxkit.index import GraphIndex, attr, drop_dead_nodes, drop_unused_initializers, value_shapes
from .channel_selection import channel_count, channel_picks, float_conv, spread_columns

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

    def __init__(self, model: onnx.ModelProto, block: int, shapes: dict[str, list[int | None]]) -> None:
        self.g = GraphIndex(model.graph)
        self.block = block
        self.shapes = shapes

    def source(self, tensor: str) -> tuple[str, int, np.ndarray] | None:
        """(the tensor a chain input takes its channels from, that tensor's channel count, the channels taken): a
        constant channel selection (Gather, Slice) of it, or the tensor itself; None when the counts are unknown."""
        node = self.g.producer.get(tensor)
        if node is not None and node.op_type in ("Gather", "Slice") and len(node.output) == 1:
            channels = channel_count(self.shapes, node.input[0])
            picks = channel_picks(self.g, node, channels) if channels else None
            if picks is not None:
                return node.input[0], channels, picks[0]
        channels = channel_count(self.shapes, tensor)
        return (tensor, channels, np.arange(channels)) if channels else None

    def common_source(self, tensors: list[str]) -> tuple[str, int, list[np.ndarray]] | None:
        """(tensor, its channels, the channels each of `tensors` takes of it) when all of `tensors` are that one
        tensor or channel selections of it (`source`); None otherwise."""
        found = [self.source(t) for t in tensors]
        if any(f is None for f in found) or len({f[0] for f in found if f is not None}) != 1:
            return None
        return found[0][0], found[0][1], [f[2] for f in found if f is not None]

    def common_input(self, tensors: list[str], cin: int) -> tuple[str, int, list[np.ndarray]]:
        """`common_source` of the siblings' first convolutions' inputs (their convolutions then read the tensor
        whole, with the weights of the channels not selected zero), or one tensor of unknown channel count, read as
        it is."""
        found = self.common_source(tensors)
        if found is not None:
            return found
        if len(set(tensors)) == 1:
            return tensors[0], cin, [np.arange(cin)] * len(tensors)
        raise _NotMergeable

    def work(self, tensor: str, out: int, cin: int, kernel: tuple[int, ...]) -> float:
        """Multiply-adds of a convolution writing `tensor` with `out` filters over `cin` channels, per image, as
        the blocked kernels compute them (channel counts rounded up to the block)."""
        s = self.shapes.get(tensor)
        area = float(np.prod(s[2:])) if s is not None and len(s) == 4 and all(s[2:]) else 1.0
        return _round(out, self.block) * _round(cin, self.block) * float(np.prod(kernel)) * area

    def separate_work(self, step: _Step | str) -> float:
        """`work` of a chain's convolutions run on their own, each padded to the block."""
        if isinstance(step, str):
            return 0.0
        own = 0.0
        if step.node.op_type == "Conv":
            w = self.g.initializers[step.node.input[1]].dims
            own = self.work(step.node.output[0], w[0], w[1], tuple(w[2:]))
        return own + sum(self.separate_work(i) for i in step.inputs)

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
        if isinstance(step, str):  # siblings may read different channels of one tensor
            found = self.source(step)
            return ("input", found[0] if found is not None else step)
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


@dataclass(frozen=True)
class _Layout:
    """Where each sibling's channels start in a merged tensor, and how many channels the tensor has."""

    offsets: tuple[int, ...]
    total: int

    def width(self) -> int | None:
        """The channels per sibling when the siblings sit side by side at one width (a grouped conv's groups)."""
        n = len(self.offsets)
        w = self.total // n
        return w if self.total == n * w and self.offsets == tuple(k * w for k in range(n)) else None


class _Merge:
    """Emit one merged chain for `steps` (the siblings, in concat order), bottom up. Grouped (`tight` False): each
    sibling's channels padded to the widest sibling's, rounded to the block, every convolution after the first a
    grouped one. Tight: the siblings' channels side by side, the tensor rounded to the block once, every
    convolution a dense one with the siblings' filters on its block diagonal (zeros elsewhere): for branches
    narrower than a block, where grouping would pad each of them to a whole block. `work`: the multiply-adds
    ONNX Runtime's blocked kernels spend on the emitted convolutions, per image."""

    def __init__(self, chains: _Chains, name: str, tight: bool = False) -> None:
        self.c = chains
        self.name = name
        self.tight = tight
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.memo: dict[tuple[int, ...], tuple[str, _Layout]] = {}
        self.work = 0.0

    def const(self, array: np.ndarray, label: str) -> str:
        name = f"{self.name}/{label}_{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def layout(self, widths: list[int]) -> _Layout:
        b, n = self.c.block, len(widths)
        if self.tight:
            offsets = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(int)
            return _Layout(tuple(int(o) for o in offsets), _round(sum(widths), b))
        width = _round(max(widths), b)
        return _Layout(tuple(k * width for k in range(n)), n * width)

    def conv(self, src: str, weight: np.ndarray, bias: np.ndarray | None, out: str, like: onnx.NodeProto,
             group: int = 1) -> None:
        inputs = [src, self.const(weight, "weight")] + ([self.const(bias, "bias")] if bias is not None else [])
        node = onnx.helper.make_node("Conv", inputs, [out], name=f"{out}/Conv", group=group)
        node.attribute.extend(a for a in like.attribute if a.name in _CONV_ATTRS)
        self.nodes.append(node)
        self.work += self.c.work(like.output[0], weight.shape[0], weight.shape[1], weight.shape[2:])

    def picked(self, tensors: list[str], layout: _Layout) -> tuple[str, _Layout]:
        """Chain inputs read by an Add (one per sibling, each channels of one common tensor: a residual) as one
        tensor in `layout`: a 1x1 convolution of the common tensor with a 0/1 matrix, exact for finite values."""
        found = self.c.common_source(tensors)
        if found is None:
            raise _NotMergeable
        src, channels, columns = found
        weight = np.zeros((layout.total, channels, 1, 1), np.float32)
        for offset, picks in zip(layout.offsets, columns, strict=True):
            weight[offset + np.arange(len(picks)), picks] = 1.0
        out = f"{self.name}/{tensors[0]}/picked_{len(self.nodes)}"  # one per Add that reads it
        node = onnx.helper.make_node("Conv", [src, self.const(weight, "picks")], [out], name=f"{out}/Conv")
        self.nodes.append(node)
        self.work += self.c.work(tensors[0], layout.total, channels, (1, 1))
        return out, layout

    def emit(self, steps: list[_Step]) -> tuple[str, _Layout]:
        """(merged tensor, where each sibling's channels are) for one position of the chains."""
        if isinstance(steps[0], str):
            raise _NotMergeable  # a Relu reading a chain input: it would have to be copied per sibling
        key = tuple(id(s.node) for s in steps)
        if key in self.memo:
            return self.memo[key]
        first, n, g = steps[0].node, len(steps), self.c.g
        out = f"{self.name}/{first.output[0]}"
        if first.op_type == "Relu":
            src, layout = self.emit([s.inputs[0] for s in steps])
            self.nodes.append(onnx.helper.make_node("Relu", [src], [out], name=f"{out}/Relu"))
        elif first.op_type == "Add":
            operands = [[s.inputs[k] for s in steps] for k in (0, 1)]
            if isinstance(operands[0][0], str):  # the chain's own operand first: a residual takes its layout
                operands.reverse()
            a, layout = self.emit(operands[0])
            b, other = self.picked(operands[1], layout) if isinstance(operands[1][0], str) else self.emit(operands[1])
            if other != layout:
                raise _NotMergeable
            self.nodes.append(onnx.helper.make_node("Add", [a, b], [out], name=f"{out}/Add"))
        else:
            ws = [g.initializer_value(s.node.input[1]) for s in steps]
            bs = [g.initializer_value(s.node.input[2]) if len(s.node.input) > 2 and s.node.input[2] else None
                  for s in steps]
            layout = self.layout([w.shape[0] for w in ws])
            bias = np.zeros(layout.total, np.float32)
            for offset, w, b in zip(layout.offsets, ws, bs, strict=True):
                if b is not None:
                    bias[offset:offset + w.shape[0]] = b
            if isinstance(steps[0].inputs[0], str):  # the first convolution: it reads the common input once
                src, cin, columns = self.c.common_input([s.inputs[0] for s in steps], ws[0].shape[1])
                weight = np.zeros((layout.total, cin, *ws[0].shape[2:]), np.float32)
                for offset, w, cols in zip(layout.offsets, ws, columns, strict=True):
                    weight[offset:offset + w.shape[0], cols] = w
                self.conv(src, weight, bias, out, first)
            else:
                src, inner = self.emit([s.inputs[0] for s in steps])
                width = inner.width()
                if self.tight or width is None:
                    weight = np.zeros((layout.total, inner.total, *ws[0].shape[2:]), np.float32)
                    for offset, start, w in zip(layout.offsets, inner.offsets, ws, strict=True):
                        weight[offset:offset + w.shape[0], start:start + w.shape[1]] = w
                    self.conv(src, weight, bias, out, first)
                else:
                    weight = np.zeros((layout.total, width, *ws[0].shape[2:]), np.float32)
                    for offset, w in zip(layout.offsets, ws, strict=True):
                        weight[offset:offset + w.shape[0], :w.shape[1]] = w
                    self.conv(src, weight, bias, out, first, group=n)
        self.memo[key] = (out, layout)
        return out, layout


class _NotMergeable(Exception):
    """The siblings do not line up (an Add of differently sized operands, a chain input read by a Relu or Add)."""


def _plan(chains: _Chains, concat: onnx.NodeProto, siblings: list[tuple[int, _Step]]
          ) -> dict[int, tuple[list[int], str, _Layout, _Merge]]:
    """The cheaper of two ways to run one set of like siblings, keyed by each merge's first concat position: grouped
    (`_groups`: sets of equally wide ones, the rest on their own) or all of them tight (`_Merge`), by the work the
    blocked kernels spend. A merge is taken only while it costs at most `MAX_WASTE` more than its siblings on their
    own: a first convolution that reads a selection of a wide tensor reads all of it once merged, and a residual
    becomes a 1x1 convolution. {} when nothing pays or lines up."""
    name = concat.name or concat.output[0]
    alone = {k: chains.separate_work(s) for k, s in siblings}
    grouped: dict[int, tuple[list[int], str, _Layout, _Merge]] = {}
    for grp in _groups(chains, siblings):
        m = _Merge(chains, f"{name}/merged_{grp[0][0]}")
        try:
            tensor, layout = m.emit([s for _, s in grp])
        except _NotMergeable:
            continue
        if m.work <= (1 + MAX_WASTE) * sum(alone[k] for k, _ in grp):
            grouped[grp[0][0]] = ([k for k, _ in grp], tensor, layout, m)
    inside = {k for ks, *_ in grouped.values() for k in ks}
    grouped_work = sum(m.work for *_, m in grouped.values()) + sum(w for k, w in alone.items() if k not in inside)
    tight = _Merge(chains, f"{name}/merged_{siblings[0][0]}", tight=True)
    try:
        tensor, layout = tight.emit([s for _, s in siblings])
    except _NotMergeable:
        return grouped
    if tight.work < grouped_work and tight.work <= (1 + MAX_WASTE) * sum(alone.values()):
        return {siblings[0][0]: ([k for k, _ in siblings], tensor, layout, tight)}
    return grouped


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
    chains = _Chains(model, block, shapes)
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
    counts = [_out_channels(chains, step, shapes.get(name)) for step, name in zip(steps, concat.input, strict=True)]
    if None in counts:
        return 0
    merged: dict[int, tuple[list[int], str, _Layout, _Merge]] = {}
    for sibs in by_signature.values():
        if len(sibs) > 1:
            merged.update(_plan(chains, concat, sorted(sibs, key=lambda s: s[0])))
    if not merged:
        return 0
    # the new concat: each merged chain at its first sibling's place
    dropped = {k for ks, *_ in merged.values() for k in ks[1:]}
    offsets: dict[int, int] = {}
    new_inputs, position = [], 0
    for k, name in enumerate(concat.input):
        if k in dropped:
            continue
        if k in merged:
            ks, tensor, layout, _ = merged[k]
            offsets.update({sib: position + layout.offsets[j] for j, sib in enumerate(ks)})
            new_inputs.append(tensor)
            position += layout.total
        else:
            offsets[k] = position
            new_inputs.append(name)
            position += counts[k]
    new_of_old = np.concatenate([np.arange(c) + offsets[k] for k, c in enumerate(counts)])
    remaps = [_remap_reader(g, r, new_of_old, position) for r in readers]
    if any(r is None for r in remaps):
        return 0
    if concat.output[0] in shapes:  # the next concat's chains may select from this one (`_Chains.source`)
        shapes[concat.output[0]] = [*shapes[concat.output[0]][:1], position, *shapes[concat.output[0]][2:]]
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
    shapes = value_shapes(model)  # a merge changes only its concat's channel count, and updates it here
    merged = 0
    for out in [n.output[0] for n in model.graph.node if n.op_type == "Concat"]:
        # found afresh: a merge rebuilds the node list, and protobuf copies the nodes it is given
        concat = next(n for n in model.graph.node if n.op_type == "Concat" and n.output[0] == out)
        merged += _merge_concat(model, concat, block, shapes)
    if merged:
        del model.graph.value_info[:]
        drop_dead_nodes(model.graph)  # the residuals' selections the pick convolutions replaced
        drop_unused_initializers(model.graph)
    return merged
