"""The quantised regions of an int8 graph as *groups*: the nodes that go to float together (accuracy control and
the speed-aware mix, `export.mixed`).

A group is named by the fp32 graph's nodes it holds, so reverting it is quantising the fp32 graph again with those
nodes excluded (`quantize_int8(exclude_nodes=...)`): onnxruntime.quantization then places every Q/DQ pair that
the remaining int8 nodes need, and the pairs only float nodes read are dropped (`quantize._drop_float_only_pairs`).
The groups, in graph order:

- a layer: a Conv / ConvTranspose / Gemm / MatMul that runs in int8, with the activation quantisers that sit on
  its output and only exist for it: the ReLUs, pools and resizes that read it alone (a layer and its activation
  go together: ONNX Runtime fuses them into one QLinear kernel, TensorRT into one int8 layer);
- a residual add: an Add of two activations quantised for it (both its inputs' Q/DQ pairs), with its ReLU;
- any other quantised node that no layer owns (a Concat, a pool after an add): on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from ..onnxkit.index import GraphIndex

COMPUTE = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_QDQ = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class QdqGroup:
    name: str  # the group's first node
    kind: str  # "layer", "add" or "other"
    nodes: tuple[str, ...]  # fp32 graph node names, reverted together

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind, "nodes": list(self.nodes)}


def quantised_nodes(int8: onnx.ModelProto) -> set[str]:
    """Names of the non-Q/DQ nodes of a Q/DQ graph that read a dequantised tensor or write a quantised one."""
    g = GraphIndex(int8.graph)
    out = set()
    for n in g.nodes:
        if n.op_type in _QDQ:
            continue
        reads = any(i in g.producer and g.producer[i].op_type == "DequantizeLinear" for i in n.input)
        writes = any(r.op_type == "QuantizeLinear" for o in n.output for r in g.readers(o))
        if reads or writes:
            out.add(n.name)
    return out


def qdq_groups(fp32: onnx.ModelProto, int8: onnx.ModelProto) -> list[QdqGroup]:
    """The groups of the module docstring: the nodes of `fp32` that run quantised in `int8` (its quantisation with
    nothing reverted), in `fp32`'s node order."""
    quantised = quantised_nodes(int8)
    g = GraphIndex(fp32.graph)
    owner: dict[str, int] = {}  # node name -> index of its group
    groups: list[tuple[str, str, list[str]]] = []
    for n in g.nodes:
        if n.name not in quantised:
            continue
        activations = [i for i in n.input if i in g.producer]  # not weights, not the graph input
        producer = g.producer[activations[0]] if activations else None
        if n.op_type in COMPUTE:
            groups.append((n.name, "layer", [n.name]))
        elif n.op_type == "Add" and len(activations) >= 2:
            groups.append((n.name, "add", [n.name]))
        elif (producer is not None and producer.name in owner and len(activations) == 1
              and len(g.readers(activations[0])) == 1):
            groups[owner[producer.name]][2].append(n.name)  # the activation of its layer (or add)
            owner[n.name] = owner[producer.name]
            continue
        else:
            groups.append((n.name, "other", [n.name]))
        owner[n.name] = len(groups) - 1
    return [QdqGroup(name, kind, tuple(nodes)) for name, kind, nodes in groups]
