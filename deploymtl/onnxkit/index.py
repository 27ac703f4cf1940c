"""One index over an ONNX graph: who produces and who reads each tensor, the initializers, the constants, and the
element type of every tensor shape inference can type.

Every pass that walks an ONNX graph by its edges (the ONNX Runtime CPU shaping, the int8 quantizer's clean-ups,
the TensorRT lint, the localisation of a diverging layer) reads this index instead of building its own maps.

Why a small class over the protobuf rather than `onnx_ir`: the rewrites edit the `ModelProto` in place and their
output must stay byte-for-byte what it was, while a round trip through `onnx_ir` (deserialize, serialize) is not
byte-identical on every graph; the passes need maps, not an IR, and building them takes a fraction of a
millisecond where the round trip of a ResNet-18-sized graph takes about a hundred.

Identity: the index holds the graph's node objects, so protobuf hands out the same wrapper for a node while the
index lives and `id(node)` names a node (the rewrites collect nodes to drop that way).

Constants, two notions: `initializer_value` reads initializers only (what a rewrite can edit in place);
`is_constant` / `constant_value` also know `Constant` nodes, `Identity` of a constant and nodes whose every input
is constant (foldable, value not computed: None), plus the constants of the enclosing graph for a subgraph.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

_DEFAULT_DOMAINS = ("", "ai.onnx")


class GraphIndex:
    """Producers, consumers, initializers and constants of one (sub)graph; see the module docstring."""

    def __init__(self, graph: onnx.GraphProto | onnx.ModelProto, parent: GraphIndex | None = None) -> None:
        self.graph = graph.graph if isinstance(graph, onnx.ModelProto) else graph
        self.parent = parent
        self.nodes: list[onnx.NodeProto] = list(self.graph.node)
        self.initializers: dict[str, onnx.TensorProto] = {t.name: t for t in self.graph.initializer}
        self.inputs: list[onnx.ValueInfoProto] = [i for i in self.graph.input if i.name not in self.initializers]
        self.outputs: set[str] = {o.name for o in self.graph.output}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}  # tensor -> (node, input position)
        # name -> how its value is known: a TensorProto, a Constant node, ("alias", name) for an Identity,
        # ("parent", name) for the enclosing graph's, or None (foldable, value not computed)
        self._constants: dict[str, object] = {n: ("parent", n) for n in parent._constants} if parent else {}
        self._constants.update(self.initializers)
        self._values: dict[str, np.ndarray | None] = {}
        for node in self.nodes:
            for pos, name in enumerate(node.input):
                if name:
                    self.consumers.setdefault(name, []).append((node, pos))
            for name in node.output:
                if name:
                    self.producer[name] = node
            self._note_constant(node)

    # ------------------------------------------------------------------------------------------------- edges
    def readers(self, name: str) -> list[onnx.NodeProto]:
        """The nodes reading tensor `name`, once per input that reads it, in graph order (a new list)."""
        return [node for node, _ in self.consumers.get(name, [])]

    def set_input(self, node: onnx.NodeProto, pos: int, name: str) -> None:
        """Make input `pos` of `node` read `name`, keeping `consumers` current."""
        old = node.input[pos]
        if old == name:
            return
        if old:
            uses = self.consumers[old]
            del uses[next(k for k, (n, p) in enumerate(uses) if n is node and p == pos)]
        node.input[pos] = name
        if name:
            self.consumers.setdefault(name, []).append((node, pos))

    def add_initializer(self, tensor: onnx.TensorProto) -> onnx.TensorProto:
        """Append `tensor` to the graph's initializers and index it; returns the graph's copy."""
        self.graph.initializer.append(tensor)
        stored = self.graph.initializer[-1]
        self.initializers[stored.name] = stored
        self._constants[stored.name] = stored
        self._values.pop(stored.name, None)
        return stored

    # --------------------------------------------------------------------------------------------- constants
    def initializer_value(self, name: str) -> np.ndarray | None:
        """The initializer's value as it is now (read on every call: rewrites edit initializers), else None."""
        t = self.initializers.get(name)
        return None if t is None else numpy_helper.to_array(t)

    def is_constant(self, name: str) -> bool:
        return name in self._constants

    def constant_value(self, name: str) -> np.ndarray | None:
        """A constant's value when it is stored (initializer, Constant node, Identity of one); None when the tensor
        is not constant, or is constant only by folding, or its data is not loaded."""
        if name not in self._constants:
            return None
        if name not in self._values:
            self._values[name] = self._evaluate(name)
        return self._values[name]

    def constant_names(self) -> Iterator[str]:
        """Every constant tensor: the enclosing graph's, then initializers, then node outputs in graph order."""
        return iter(self._constants)

    def _note_constant(self, node: onnx.NodeProto) -> None:
        """Mark outputs constant where a runtime folds them (a Constant, or every input constant)."""
        if node.op_type == "Constant":
            self._constants[node.output[0]] = node
        elif node.op_type == "Identity" and node.input[0] in self._constants:
            self._constants[node.output[0]] = ("alias", node.input[0])
        elif (node.input and all(i in self._constants for i in node.input if i)
              and not node.op_type.startswith("Random") and node.domain in _DEFAULT_DOMAINS):
            for out in node.output:
                self._constants[out] = None

    def _evaluate(self, name: str) -> np.ndarray | None:
        source = self._constants[name]
        if isinstance(source, onnx.TensorProto):
            return _array(source)
        if isinstance(source, onnx.NodeProto):
            return _constant_node_value(source)
        if isinstance(source, tuple):
            kind, of = source
            return self.parent.constant_value(of) if kind == "parent" and self.parent else self.constant_value(of)
        return None


def _array(t: onnx.TensorProto) -> np.ndarray | None:
    try:
        return numpy_helper.to_array(t)
    except Exception:  # external data not loaded or an exotic dtype: constness is still known
        return None


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "value":
            return _array(a.t)
        if a.name == "value_float":
            return np.asarray(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.asarray(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.asarray(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.asarray(list(a.ints), dtype=np.int64)
    return None


def value_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type (`onnx.TensorProto.DataType`) of every tensor of the main graph that ONNX shape inference can
    type, plus initializers and Cast outputs; a graph shape inference rejects is typed from what it declares."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # custom domains or broken graphs: what is declared
        inferred = model
    g = inferred.graph
    types = {t.name: t.data_type for t in g.initializer}
    for v in [*g.value_info, *g.input, *g.output]:
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
            types[v.name] = v.type.tensor_type.elem_type
    for node in g.node:
        if node.op_type == "Cast" and node.output[0] not in types:
            types[node.output[0]] = next((int(a.i) for a in node.attribute if a.name == "to"), 0)
    return types


def value_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Shape of every tensor of the main graph that ONNX shape inference (with data propagation, so that shapes
    computed from Shape/Concat resolve) can give: a list of dims, None for a symbolic or unknown dim."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # custom domains or broken graphs: what is declared
        inferred = model
    g = inferred.graph
    shapes: dict[str, list[int | None]] = {t.name: list(t.dims) for t in g.initializer}
    for v in [*g.value_info, *g.input, *g.output]:
        t = v.type.tensor_type if v.type.HasField("tensor_type") else None
        if t is not None and t.HasField("shape"):
            shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return shapes


def opset_version(model: onnx.ModelProto) -> int:
    """The default-domain opset the model imports (1 when it names none, ONNX's rule)."""
    for imp in model.opset_import:
        if imp.domain in _DEFAULT_DOMAINS:
            return int(imp.version)
    return 1


def attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """A node attribute's value (strings decoded), or `default` when the node does not set it."""
    for a in node.attribute:
        if a.name == name:
            value = onnx.helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _reads(node: onnx.NodeProto) -> Iterator[str]:
    """The tensor names `node` reads, those its subgraphs (If, Loop, Scan bodies) read from outside included."""
    yield from node.input
    for a in node.attribute:
        for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
            for n in sub.node:
                yield from _reads(n)


def drop_dead_nodes(graph: onnx.GraphProto) -> int:
    """Remove the nodes none of whose outputs is read by another node or is a graph output, until none is left (a
    rewrite that replaces a node can orphan the chain that computed one of its inputs, e.g. the Shape -> Concat of
    a Resize's sizes); in place, keeping the order of the others; returns the number removed. ONNX Runtime runs
    such nodes: it does not drop a node for having no reader. Every ONNX operator is side-effect free, so nothing
    else is lost."""
    removed = 0
    while True:
        used = {name for node in graph.node for name in _reads(node)} | {o.name for o in graph.output}
        kept = [n for n in graph.node if any(o and o in used for o in n.output)]
        if len(kept) == len(graph.node):
            return removed
        removed += len(graph.node) - len(kept)
        del graph.node[:]
        graph.node.extend(kept)


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove the initializers no node of `graph` reads, in place, keeping the order of the others (the rewrites
    call it last; an index built before is stale afterwards)."""
    used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
