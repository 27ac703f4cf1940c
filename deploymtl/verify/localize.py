"""Find the first layer where an ONNX graph departs from the PyTorch static model, by bisection.

Correspondence: every ONNX node exported from static node `<n>` is named `layers.<n>/<Op>` (`deploymtl.export.onnx`);
the node's output tensor is the output of its scope that is read outside the scope (or is a graph output). Its
PyTorch module path is `layers.<n>`, or `layers.<m>` when `<n>` shares node `<m>`'s layer. PyTorch side: forward
hooks on `model.layers` record every call's output in one run.

Search (over the static nodes that the failing output depends on, in execution order c_0 .. c_m, c_m feeding the
output): let F(k) be the *frontier* after c_k: the tensors of c_0..c_k read by some c_j with j > k, plus c_k
itself. Every path from an earlier divergence to the output crosses F(k), so "some tensor of F(k) diverges" is
monotone in k (up to a divergence masked on the way, e.g. by a ReLU). Bisection finds the smallest k with a
diverging frontier, exposing only F(k) as extra graph outputs per probe (a handful of tensors, log2(m) ONNX Runtime
runs) instead of marking every tensor at once. At that k the inputs of c_k (all in F(k-1)) match and c_k's output
does not: c_k is the first diverging layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
import torch

from ..errors import DeploymtlError
from ..formats.onnx_metadata import node_scope
from ..ir import INPUT, StaticModel, static_nodes
from ..onnxkit.index import GraphIndex, value_types
from ..onnxkit.session import QUIET, open_session
from .compare import CompareResult, Tolerance, compare_arrays

_LAYERS = "layers."


@dataclass
class Localization:
    """The first diverging layer, named on both sides; falsy when no layer could be blamed."""

    found: bool
    output: str
    onnx_node: str | None = None
    onnx_op: str | None = None
    onnx_tensor: str | None = None
    module_path: str | None = None
    module_type: str | None = None
    static_node: str | None = None
    static_op: str | None = None
    compare: dict | None = None
    inputs_match: bool | None = None
    probes: int = 0
    candidates: int = 0
    message: str = ""
    trail: list[dict] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.found

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        if not self.found:
            return f"could not localise the mismatch of '{self.output}': {self.message}"
        stats = self.compare or {}
        return (f"first diverging layer for '{self.output}': ONNX node {self.onnx_node} ({self.onnx_op}) = PyTorch "
                f"module {self.module_path} ({self.module_type}); max_abs {stats.get('max_abs', float('nan')):.3g}, "
                f"cosine {stats.get('cosine', float('nan')):.6f} ({self.probes} probes over {self.candidates} layers)")


def module_tensors(proto: onnx.ModelProto) -> dict[str, tuple[str, onnx.NodeProto]]:
    """{module path: (its output tensor, the ONNX node producing it)} from the `layers.<n>/<Op>` node names."""
    g = GraphIndex(proto.graph)
    scope = {id(n): node_scope(n) for n in g.nodes}
    found: dict[str, tuple[str, onnx.NodeProto]] = {}
    for n in g.nodes:  # topological order: a later hit is the scope's last output
        s = scope[id(n)]
        if not s:
            continue
        for t in n.output:
            if t in g.outputs or any(scope[id(c)] != s for c in g.readers(t)):
                found[s] = (t, n)
    return found


def torch_intermediates(model: StaticModel, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """Every static node's output for `inputs`, recorded with forward hooks, keyed `layers.<node>`.

    A layer shared by several nodes (`shares`) fires its hook once per call; calls are matched to those nodes in
    execution order."""
    calls: dict[str, list[np.ndarray]] = {}
    handles = []
    for name, module in model.layers.items():
        def hook(_m: torch.nn.Module, _i: tuple, out: torch.Tensor, key: str = name) -> None:
            calls.setdefault(key, []).append(out.detach().float().cpu().numpy())
        handles.append(module.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            model.eval()(torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32)))
    finally:
        for h in handles:
            h.remove()
    captured, used = {}, {}
    for node, layer in static_nodes(model):
        k = used.get(layer, 0)
        used[layer] = k + 1
        captured[_LAYERS + node] = calls[layer][k]
    return captured


class _Prober:
    """Runs the ONNX graph with a chosen set of intermediate tensors exposed as extra outputs."""

    def __init__(self, proto: onnx.ModelProto, inputs: np.ndarray) -> None:
        self.proto = proto
        self.inputs = np.ascontiguousarray(inputs, dtype=np.float32)
        self.types = value_types(proto)
        self.runs = 0
        self.cache: dict[str, np.ndarray] = {}

    def run(self, tensors: list[str]) -> dict[str, np.ndarray]:
        todo = [t for t in tensors if t not in self.cache]
        if todo:
            probe = onnx.ModelProto()
            probe.CopyFrom(self.proto)
            have = {o.name for o in probe.graph.output}
            for t in todo:
                if t not in have:
                    elem = self.types.get(t, onnx.TensorProto.FLOAT)
                    probe.graph.output.append(onnx.helper.make_tensor_value_info(t, elem, None))
            session = open_session(probe, log_severity=QUIET, label="<localisation probe>")
            values = session.run(todo, {"image": self.inputs})
            self.runs += 1
            for t, v in zip(todo, values, strict=True):
                self.cache[t] = np.asarray(v, dtype=np.float32)
        return {t: self.cache[t] for t in tensors}


def _ancestors(spec_inputs: dict[str, list[str]], node: str) -> set[str]:
    """The static nodes `node` depends on, itself included."""
    need, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n == INPUT or n in need:
            continue
        need.add(n)
        stack.extend(spec_inputs[n])
    return need


def _last_uses(order: list[str], spec_inputs: dict[str, list[str]], need: set[str], cands: list[str]
               ) -> dict[int, int]:
    """{candidate index i: index of the last candidate reading cands[i]} (i itself when none does), looking
    through the nodes between them that the ONNX graph no longer names (fused away)."""
    index = {n: i for i, n in enumerate(cands)}
    direct: dict[str, set[str]] = {n: set() for n in order}
    for n in order:
        for i in spec_inputs[n]:
            if i != INPUT:
                direct[i].add(n)

    def mapped_consumers(n: str) -> set[int]:
        seen, out, todo = set(), set(), list(direct[n])
        while todo:
            c = todo.pop()
            if c in seen or c not in need:
                continue
            seen.add(c)
            if c in index:
                out.add(index[c])
            else:
                todo.extend(direct[c])
        return out

    return {i: max(mapped_consumers(n), default=i) for i, n in enumerate(cands)}


@dataclass(eq=False)
class _FrontierSearch:
    """The bisection over the candidates (see the module docstring): each probe compares the frontier F(k) with
    PyTorch, and every verdict is kept, so a tensor is compared once however many frontiers hold it."""

    cands: list[str]
    tensors: dict[str, tuple[str, onnx.NodeProto]]  # module_tensors of the graph
    last_use: dict[int, int]
    reference: dict[str, np.ndarray]  # torch_intermediates of the model
    prober: _Prober
    tol: Tolerance
    trail: list[dict]  # the Localization's: one entry per probe
    verdicts: dict[str, CompareResult] = field(default_factory=dict)

    def diverges(self, k: int) -> bool:
        """Does some tensor of F(k) depart from PyTorch?"""
        frontier = [j for j in range(k + 1) if j == k or self.last_use[j] > k]
        names = [self.cands[j] for j in frontier]
        values = self.prober.run([self.tensors[_LAYERS + n][0] for n in names])
        bad = False
        for n in names:
            if n not in self.verdicts:
                t = self.tensors[_LAYERS + n][0]
                ref = self.reference[_LAYERS + n]
                self.verdicts[n] = compare_arrays(n, _unpadded(values[t], ref), ref, self.tol)
            bad = bad or not self.verdicts[n]
        self.trail.append({"k": k, "layer": _LAYERS + self.cands[k], "frontier": [_LAYERS + n for n in names],
                           "diverges": bad})
        return bad

    def first_diverging(self) -> int:
        """The smallest k whose frontier diverges, given that the last one does."""
        lo, hi = 0, len(self.cands) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self.diverges(mid):
                hi = mid
            else:
                lo = mid + 1
        return lo

    def verdict(self, node: str) -> CompareResult:
        tensor = self.tensors[_LAYERS + node][0]
        ref = self.reference[_LAYERS + node]
        return self.verdicts.get(node) or compare_arrays(node, _unpadded(self.prober.run([tensor])[tensor], ref),
                                                         ref, self.tol)


def _blame(loc: Localization, model: StaticModel, spec_inputs: dict[str, list[str]], search: _FrontierSearch,
           culprit: str) -> None:
    """Fill `loc` with the first diverging layer `culprit`, named on both sides."""
    tensor, node = search.tensors[_LAYERS + culprit]
    layer = dict(static_nodes(model))[culprit]
    result = search.verdict(culprit)
    feeds = [i for i in spec_inputs[culprit] if i != INPUT and i in search.verdicts]
    loc.found = True
    loc.onnx_node, loc.onnx_op, loc.onnx_tensor = node.name, node.op_type, tensor
    loc.module_path, loc.module_type = _LAYERS + layer, type(model.layers[layer]).__name__
    loc.static_node = culprit
    loc.static_op = next((nd["op"] for nd in model.spec["nodes"] if nd["name"] == culprit), None)
    loc.compare = result.to_dict()
    loc.inputs_match = all(bool(search.verdicts[i]) for i in feeds)
    loc.probes = search.prober.runs


def localize(proto: onnx.ModelProto, model: StaticModel, inputs: np.ndarray, output: str,
             tolerance: Tolerance | Mapping[str, Tolerance]) -> Localization:
    """First static node whose ONNX counterpart diverges, among the ancestors of task output `output`.

    `inputs` (N, C, H, W) float32: a few real samples (2-4 suffice). `tolerance`: the output's tolerance (or a
    mapping from which `output`'s is taken), applied to every intermediate tensor.
    """
    tol = tolerance[output] if isinstance(tolerance, Mapping) else tolerance
    if output not in model.outputs:
        raise DeploymtlError(f"cannot localise unknown output '{output}'", hint=f"expected one of {model.task_names}")
    spec_inputs = {n["name"]: list(n["inputs"]) for n in model.spec["nodes"]}
    order = [name for name, _ in static_nodes(model)]
    need = _ancestors(spec_inputs, model.outputs[output])
    tensors = module_tensors(proto)
    cands = [n for n in order if n in need and _LAYERS + n in tensors]  # in execution order
    loc = Localization(False, output, candidates=len(cands))
    if not cands:
        loc.message = "no ONNX node carries a static-model module name (was the graph renamed?)"
        return loc
    search = _FrontierSearch(cands, tensors, _last_uses(order, spec_inputs, need, cands),
                             torch_intermediates(model, inputs), _Prober(proto, inputs), tol, loc.trail)
    if not search.diverges(len(cands) - 1):
        loc.probes = search.prober.runs
        loc.message = (f"the module feeding '{output}' ({_LAYERS + cands[-1]}) matches PyTorch on these inputs; the "
                       "mismatch is outside the named modules (graph IO, batch handling)")
        return loc
    _blame(loc, model, spec_inputs, search, cands[search.first_diverging()])
    return loc


def _unpadded(value: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """An ONNX tensor with the reference's channels: a graph shaped for ONNX Runtime CPU (`export.lowering`) pads
    a convolution's output channels with trailing zeros, which the PyTorch layer does not have."""
    if value.ndim == ref.ndim >= 2 and value.shape[1] > ref.shape[1] and value.shape[2:] == ref.shape[2:]:
        return value[:, :ref.shape[1]]
    return value
