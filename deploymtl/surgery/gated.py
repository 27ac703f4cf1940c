"""The GatedMTL surgeon: fixed gates -> a static graph that computes only the channels something reads.

Pruning rule (docs/methods.md, GatedMTL, *derived*), over the deployed tasks D (a `--tasks` subset or all):

- the head of a deployed task reads every channel of phi'_t of the last layer;
- phi'_t^l[c] reads phi_t^l[c] when G_t^l[c] = 1, else psi^l[c];
- psi'^l[c] = sum_t w_t phi'_t^l[c] reads phi'_t^l[c] of *every* task t (deployed or not: the betas mix all
  tasks, so a non-deployed task's branch is kept where it feeds a needed shared path), and it is needed
  as a whole when the shared branch Psi^{l+1} is kept;
- a branch's output filter c (conv2 row + BN, ds row) is kept iff something reads channel c; a branch with no
  kept filter disappears with its whole block; a kept branch reads all channels of its input (conv1 is whole).

So a deployed task keeps filter (t,l,c) iff G_t^l[c] = 1, the shared filter (l,c) is kept iff a consumer
reads it, and a non-deployed task's filters are kept only as producers of a needed psi'.

The blends are fixed channel selections and the beta mixing a constant per channel, so a branch input
V = phi'_t or psi' is linear in the concatenation X of the kept source tensors: V = A X per pixel, A of shape
(C, |X|) with at most one non-zero per column. A conv reading V becomes a conv reading X with weight
W' = W A (columns permuted/scattered and scaled; zero where nothing of X feeds V). An identity residual needs
V explicitly (only its kept rows): a `select` when V is a selection (phi'_t, or the stem), else one `select`
per mixing term and a `wsum` with the beta coefficients (psi'). The heads fold A into their first layers.

Folding widens the reader to |X| inputs, which can exceed V's C channels (X holds every kept shared
channel, also those only other tasks read); option `fold_blends` = "auto" (default) folds only where
|X| <= C and otherwise materialises V once and reads C channels; "always" / "never" force either way.
Materialising is arranged for few copies, since on CPU every extra op and copy costs latency that FLOPs do
not show: all blends of one layer select from ONE concat of the layer's kept branches (one `select` per
phi'_t, not a concat per task), and psi' is then a single `wsum` of the materialised phi'_t with the
constant weights softmax(beta)_t (exactly the supernet's formula), not one `select` per mixing term.

`round_channels = r` keeps each kept-filter count a multiple of r (capped at the branch width) by adding the
lowest-index unread filters; their outputs exist but every consumer has zero columns for them. `merge_convs`
(default true) runs layer 0's branches and alike light heads as one convolution each (`_merges_layer0`,
`_merged_heads`).

`GatedSurgeon.prepare(model, plan)` checks the gates once; the `GatedCut` keeps the gates and the kept filters of
every layer, builds the graph (`_Emitter`) and counts its parameters from the kept filters and the layer shapes
(`registry.count`). The heads are the registry's, reading the blend through their input transform.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field

from ..formats.plan import Plan, PlanOptions
from ..models.gated import GatedBlock, GatedSupernet, check_gates
from ..models.layers import ClassifierHead, LightHead
from .base import Cut, Surgeon
from .builder import GraphBuilder, fold_bn
from .registry import conv_params, count, emit, fold_input, register, selected

SHARED = "__shared__"  # key of the shared branch in per-layer maps (task names are identifiers; no clash)


# -- options and the kept filters -----------------------------------------------------------------
@dataclass
class LayerKeep:
    """Kept output filters of one gated layer, original channel indices in ascending order ([] = removed)."""

    shared: list[int]
    specific: dict[str, list[int]]


class GatedOptions(PlanOptions):
    """`prune.options` of a GatedMTL recipe (and `--option`), besides `round_channels`."""

    fold_blends: Literal["auto", "always", "never"] = Field(
        default="auto", description="fold the channel blends into the convs that read them (see `_folds`)")
    merge_convs: bool = Field(default=True, description="layer 0's branches and alike light heads as one conv each")


def _gates(model: GatedSupernet, decisions: dict[str, Any]) -> dict[str, list[list[int]]]:
    check_gates(model, decisions)  # shape and values
    return {t: [[int(v) for v in row] for row in decisions["gates"][t]] for t in model.task_names}


def _round(kept: list[int], width: int, multiple: int) -> list[int]:
    if not kept or multiple <= 1:
        return kept
    target = min(width, math.ceil(len(kept) / multiple) * multiple)
    chosen = set(kept)
    extra = [c for c in range(width) if c not in chosen][: target - len(kept)]
    return sorted(chosen | set(extra))


def kept_filters(model: GatedSupernet, gates: dict[str, list[list[int]]], tasks: list[str], round_channels: int = 1
                 ) -> list[LayerKeep]:
    """Backward liveness over layers (module docstring); returns the kept filters of every layer."""
    names = model.task_names
    need_phi = {t: t in tasks for t in names}  # is phi'_t of this layer needed (always as a whole)?
    need_psi = False  # is psi' of this layer needed? (the last layer's feeds nothing)
    filters: list[LayerKeep] = []
    for layer in reversed(range(model.num_layers)):
        width = model.slots[layer].cout
        readers = names if need_psi else [t for t in names if need_phi[t]]
        specific = {t: [c for c in range(width) if gates[t][layer][c] == 1] if t in readers else [] for t in names}
        shared = sorted({c for t in readers for c in range(width) if gates[t][layer][c] == 0})
        filters.append(LayerKeep(
            shared=_round(shared, width, round_channels),
            specific={t: _round(k, width, round_channels) for t, k in specific.items()}))
        need_phi = {t: bool(specific[t]) for t in names}
        need_psi = bool(shared)
    return filters[::-1]


# -- blends: what a reader of a layer's output sees -------------------------------------------------------
def _mix_sources(model: GatedSupernet, gates: dict[str, list[list[int]]], layer: int, filters: list[LayerKeep],
                 task: str | None) -> list[tuple[str, list[int]]]:
    """The kept source tensors of the input of layer `layer + 1`: phi'_task^layer (task given) or psi'^layer
    (task None), as (branch key, kept channels) in concat order: task branches in task order, then shared."""
    names = [task] if task is not None else model.task_names
    keep = filters[layer]
    out = [(t, keep.specific[t]) for t in names if any(gates[t][layer])]
    if any(v == 0 for t in names for v in gates[t][layer]):
        out.append((SHARED, keep.shared))
    return out


def _input_map(model: GatedSupernet, gates: dict[str, list[list[int]]], layer: int, filters: list[LayerKeep],
               task: str | None, sources: list[tuple[str, list[int]]] | None = None
               ) -> tuple[list[tuple[str, list[int]]], torch.Tensor, torch.Tensor]:
    """(sources, A, S): V = A X with X the concat of `sources` (default: what V reads, `_mix_sources`; a
    superset such as every kept branch of the layer works too); S (bool, like A) marks the terms of each row
    by structure (a beta weight that underflows to 0 still has its term)."""
    sources = sources if sources is not None else _mix_sources(model, gates, layer, filters, task)
    width = model.slots[layer].cout
    offsets, pos = {}, 0
    for key, kept in sources:
        offsets[key] = {c: pos + i for i, c in enumerate(kept)}
        pos += len(kept)
    rows, cols, which = [], [], []  # A[c, j] += w[which]: one term per (task, channel)
    readers = [task] if task is not None else model.task_names
    for i, t in enumerate(readers):
        for c in range(width):
            rows.append(c)
            cols.append(offsets[t if gates[t][layer][c] == 1 else SHARED][c])
            which.append(i)
    # The coefficients stay functions of beta (autograd can follow the surgeon from the weights it folds).
    w = torch.ones(1, dtype=torch.float64) if task is not None else model.mixing(layer).double()
    index = (torch.tensor(rows, dtype=torch.int64), torch.tensor(cols, dtype=torch.int64))
    a = torch.zeros(width, pos, dtype=torch.float64).index_put(index, w[torch.tensor(which)], accumulate=True)
    support = torch.zeros(width, pos, dtype=torch.bool).index_put(index, torch.tensor(True))
    return sources, a, support


def _folds(mode: str, x_width: int, channels: int) -> bool:
    """Fold the blend into the readers' weights (conv over X), or materialise V first (conv over C channels)?
    "auto" folds unless X is wider than V: folding then costs more MACs than the select/wsum it saves."""
    return mode == "always" or (mode == "auto" and x_width <= channels)


def _merges_layer0(filters: list[LayerKeep], merge: bool) -> bool:
    """Do the kept branches of layer 0 run their conv1 as one convolution (`_Emitter.merged_layer0`)? They all
    read the stem, so stacking their filters costs no copy and no FLOP. Later layers' branches read different
    blends: stacking those for one grouped conv costs a copy, and ONNX Runtime runs grouped convolutions of
    such widths outside its blocked layout (measured: eager PyTorch 5% faster, ONNX Runtime 12% slower)."""
    keep = filters[0]
    return merge and sum(1 for k in [*keep.specific.values(), keep.shared] if k) >= 2


def _merged_heads(model: GatedSupernet, tasks: list[str], merge: bool) -> list[str]:
    """Deployed tasks whose light heads run their first conv as one grouped conv (`_Emitter.merged_heads`): at
    least two light heads of the same shape (a classifier reads pooled features; an ASPP head's first convs
    differ in dilation)."""
    light = [t for t in tasks if isinstance(model.heads[t], LightHead)]
    if not merge or len(light) < 2:
        return []
    shape = {(repr(model.heads[t].conv.conv), model.heads[t].conv.relu, model.heads[t].conv.bn is not None)
             for t in light}
    return light if len(shape) == 1 else []


class _Emitter:
    """Walks the kept filters layer by layer, emitting kept branches, then the heads of the deployed tasks. Reads
    the supernet's weights (and betas) as it goes: a new emitter per build."""

    def __init__(self, cut: GatedCut):
        self.model, self.tasks, self.fold = cut.model, cut.tasks, cut.options.fold_blends
        self.gates, self.filters, self.cut = cut.gates, cut.filters, cut
        self.b = GraphBuilder()
        self.nodes: dict[tuple[int, str], str] = {}  # (layer, branch key) -> output node of a kept branch
        self.cats: dict[tuple[str, ...], str] = {}
        self.blends: dict[tuple[int, str | None], str] = {}

    def concat(self, parts: list[str], name: str) -> str:
        if len(parts) == 1:
            return parts[0]
        key = tuple(parts)
        if key not in self.cats:
            self.cats[key] = self.b.concat(name, *parts)
        return self.cats[key]

    def reader_input(self, layer: int, task: str | None, name: str, fold: bool = False
                     ) -> tuple[str, torch.Tensor, torch.Tensor | None]:
        """What a reader of phi'_task^layer (task given) or psi'^layer sees: (node X, A, S), V = A X, S the
        terms of a mixture (None for a selection). Layer -1 is the stem output; `name` names new nodes;
        `fold` folds whatever the mode says."""
        if layer < 0:
            return self.stem, torch.eye(self.model.slots[0].cin, dtype=torch.float64), None
        sources, a, support = _input_map(self.model, self.gates, layer, self.filters, task)
        support = support if task is None else None
        if fold or _folds(self.fold, a.shape[1], a.shape[0]):
            return self.concat([self.nodes[(layer, key)] for key, _ in sources], f"{name}_cat"), a, support
        if (layer, task) not in self.blends:
            self.blends[(layer, task)] = self.materialize(layer, task, name)
        return self.blends[(layer, task)], torch.eye(a.shape[0], dtype=torch.float64), None

    def materialize(self, layer: int, task: str | None, name: str) -> str:
        """Node holding phi'_task^layer (a `select` from the layer-wide concat of every kept branch) or psi'^layer
        (a `wsum` of every task's materialised phi'_t, weights softmax(beta^layer)_t on all channels)."""
        names = self.model.task_names
        if task is None:
            parts = [self.blends.get((layer, t)) or self.materialize(layer, t, f"{name}_{t}") for t in names]
            for t, node in zip(names, parts, strict=True):
                self.blends[(layer, t)] = node
            w = self.model.mixing(layer).double()
            return self.b.wsum(f"{name}_mix", parts, w.view(-1, 1).expand(len(names), self.model.slots[layer].cout))
        sources, x = self.layer_concat(layer)
        _, a, _ = _input_map(self.model, self.gates, layer, self.filters, task, sources)
        return _materialize(self.b, name, x, a, None)

    def layer_concat(self, layer: int) -> tuple[list[tuple[str, list[int]]], str]:
        """(every kept branch of `layer` as (key, kept filters), the node of their concat, in that order)."""
        keep = self.filters[layer]
        sources = [(t, keep.specific[t]) for t in self.model.task_names if keep.specific[t]]
        sources += [(SHARED, keep.shared)] if keep.shared else []
        return sources, self.concat([self.nodes[(layer, key)] for key, _ in sources], f"l{layer}_cat")

    def build(self) -> GraphBuilder:
        m, b = self.model, self.b
        self.stem = emit(b, m.stem, "image", "stem")
        for layer, keep in enumerate(self.filters):
            branches = [(t, m.specific[t][layer], keep.specific[t]) for t in m.task_names if keep.specific[t]]
            branches += [(SHARED, m.shared[layer], keep.shared)] if keep.shared else []
            if layer == 0 and self.cut.merges_layer0:
                self.merged_layer0(branches)
                continue
            for key, block, kept in branches:
                task = None if key == SHARED else key
                prefix = f"l{layer}_psi" if task is None else f"l{layer}_phi_{task}"
                x, a, support = self.reader_input(layer - 1, task, f"{prefix}_in")
                self.nodes[(layer, key)] = emit(b, block, x, prefix, in_map=a, keep=kept, support=support)
        merged_heads = self.cut.merged_heads
        if merged_heads:
            self.merged_heads(merged_heads)
        for t in self.tasks:
            if t in merged_heads:
                continue
            # A classifier selects after pooling, which is cheaper than any selection before it.
            x, a, _ = self.reader_input(m.num_layers - 1, t, f"head_{t}_in",
                                        fold=isinstance(m.heads[t], ClassifierHead))
            b.output(t, emit(b, m.heads[t], x, f"head_{t}", in_map=a))
        return b

    # -- merged first convolutions: one conv call for layer 0's branches, one for the light heads -----------
    def take(self, name: str, x: str, width: int, index: list[int]) -> str:
        """Channels `index` of node `x` (`width` channels): `x` itself, a view of a contiguous run, else a copy."""
        if index == list(range(width)):
            return x
        if index == list(range(index[0], index[0] + len(index))):
            return self.b.narrow(name, x, index[0], len(index))
        return self.b.select(name, x, index)

    def merged_layer0(self, branches: list[tuple[str, GatedBlock, list[int]]]) -> None:
        """The kept branches of layer 0 (at least two) all read the stem: their conv1 runs as ONE convolution
        with their filters stacked (same weights, same FLOPs, one call instead of one per branch: at these widths
        a call costs more than its arithmetic). conv2, the shortcut and the residual add stay per branch (their
        kept filter counts differ), reading their slice of the result."""
        b, slot = self.b, self.model.slots[0]
        conv1 = branches[0][1].body.conv1
        folded = [fold_bn(block.body.conv1, block.body.bn1) for _, block, _ in branches]
        h = b.conv("l0_conv1", self.stem, torch.cat([w for w, _ in folded]), torch.cat([c for _, c in folded]),
                   stride=conv1.stride[0], padding=conv1.padding[0], dilation=conv1.dilation[0])
        h = b.relu("l0_relu1", h)
        for i, (key, block, kept) in enumerate(branches):
            prefix = "l0_psi" if key == SHARED else f"l0_phi_{key}"
            idx = torch.tensor(kept, dtype=torch.int64)
            y = b.conv_module(f"{prefix}_conv2", b.narrow(f"{prefix}_h", h, i * slot.cout, slot.cout),
                              block.body.conv2, block.body.bn2, out_index=idx)
            if block.ds is not None:
                wd, bd = fold_bn(block.ds.conv, block.ds.bn)
                r = b.conv(f"{prefix}_ds", self.stem, wd[idx], bd[idx], stride=block.ds.conv.stride[0],
                           padding=block.ds.conv.padding[0], dilation=block.ds.conv.dilation[0])
            else:  # identity shortcut: the kept rows of the stem
                r = self.take(f"{prefix}_res", self.stem, slot.cin, kept)
            self.nodes[(0, key)] = b.relu(f"{prefix}_out", b.add(f"{prefix}_add", y, r))

    def merged_heads(self, tasks: list[str]) -> None:
        """The light heads of `tasks` (at least two, alike): phi'_t of the last layer for every such task as ONE
        select from the layer's concat, their first conv as one grouped conv over it (group i = task i), then
        each head's output conv on its slice and its resize."""
        b, m = self.b, self.model
        layer = m.num_layers - 1
        sources, x = self.layer_concat(layer)
        index = [c for t in tasks
                 for c in _input_map(m, self.gates, layer, self.filters, t, sources)[1].argmax(dim=1).tolist()]
        x = self.take("heads_in", x, sum(len(k) for _, k in sources), index)
        heads = [m.heads[t] for t in tasks]
        folded = [fold_bn(hd.conv.conv, hd.conv.bn) for hd in heads]
        conv = heads[0].conv.conv
        h = b.conv("heads_conv", x, torch.cat([w for w, _ in folded]), torch.cat([c for _, c in folded]),
                   stride=conv.stride[0], padding=conv.padding[0], dilation=conv.dilation[0], groups=len(tasks))
        h = b.relu("heads_relu", h) if heads[0].conv.relu else h
        for i, (t, hd) in enumerate(zip(tasks, heads, strict=True)):
            hi = b.narrow(f"head_{t}_h", h, i * conv.out_channels, conv.out_channels)
            b.output(t, b.resize_to_input(f"head_{t}_up", b.conv_module(f"head_{t}_out", hi, hd.out)))


# -- per-layer-type surgery -----------------------------------------------------------------------
def _materialize(b: GraphBuilder, prefix: str, x: str, rows: torch.Tensor, support: torch.Tensor | None) -> str:
    """Node holding A[rows] X explicitly: a `select` for a selection (support None; rows one-hot), one `select`
    per term and a `wsum` of them for a mixture (terms where `support`)."""
    if support is None:
        return selected(b, prefix, x, rows)
    nonzero = [torch.nonzero(r).flatten().tolist() for r in support]
    terms = max(len(nz) for nz in nonzero)
    # Term j of row k reads column index[j][k] with weight A[k, index[j][k]]; a row with fewer terms reads
    # column 0 with weight 0.
    index = torch.tensor([[nz[j] if j < len(nz) else 0 for nz in nonzero] for j in range(terms)], dtype=torch.int64)
    present = torch.tensor([[j < len(nz) for nz in nonzero] for j in range(terms)])
    weight = torch.where(present, rows.gather(1, index.T).T, torch.zeros((), dtype=rows.dtype))
    selects = [b.select(f"{prefix}_sel{j}", x, index[j].tolist()) for j in range(terms)]
    return b.wsum(f"{prefix}_mix", selects, weight)


def _gated_block_params(m: GatedBlock, cin: int, keep: int, residual_terms: int = 0) -> int:
    """conv1 over the `cin` channels of X, conv2 and the shortcut keeping `keep` filters; an identity residual
    that materialises a mixture is a `wsum` of `residual_terms` selections of `keep` channels."""
    total = conv_params(m.body.conv1, cin) + conv_params(m.body.conv2, cout=keep)
    return total + (conv_params(m.ds.conv, cin, keep) if m.ds is not None else residual_terms * keep)


@register(GatedBlock, params=_gated_block_params)
def _gated_block(b: GraphBuilder, m: GatedBlock, x: str, prefix: str, *, in_map: torch.Tensor, keep: list[int],
                 support: torch.Tensor | None) -> str:
    """relu(ds(V) + body(V))[keep] with V = in_map @ X: conv1 whole (reads X through W A), conv2 and ds keep
    only the `keep` rows; an identity residual materialises V[keep]."""
    idx = torch.tensor(keep, dtype=torch.int64)
    body = m.body
    w1, b1 = fold_bn(body.conv1, body.bn1)
    h = b.conv(f"{prefix}_conv1", x, fold_input(w1, in_map), b1, stride=body.conv1.stride[0],
               padding=body.conv1.padding[0], dilation=body.conv1.dilation[0])
    h = b.relu(f"{prefix}_relu1", h)
    h = b.conv_module(f"{prefix}_conv2", h, body.conv2, body.bn2, out_index=idx)
    if m.ds is not None:
        wd, bd = fold_bn(m.ds.conv, m.ds.bn)
        r = b.conv(f"{prefix}_ds", x, fold_input(wd[idx], in_map), bd[idx], stride=m.ds.conv.stride[0],
                   padding=m.ds.conv.padding[0], dilation=m.ds.conv.dilation[0])
    else:
        r = _materialize(b, f"{prefix}_res", x, in_map[idx], None if support is None else support[idx])
    return b.relu(f"{prefix}_out", b.add(f"{prefix}_add", h, r))


# -- the prepared plan ----------------------------------------------------------------------------
class GatedCut(Cut[GatedSupernet, GatedOptions]):
    """A GatedMTL plan prepared against its supernet: the gates, the kept filters of every layer (rounded as the
    options say) and which convolutions merge."""

    def __init__(self, model: GatedSupernet, plan: Plan) -> None:
        super().__init__(model, plan)
        self.gates = _gates(model, self.decisions)
        self.filters = kept_filters(model, self.gates, self.tasks, self.options.round_channels)
        self.merges_layer0 = _merges_layer0(self.filters, self.options.merge_convs)
        self.merged_heads = _merged_heads(model, self.tasks, self.options.merge_convs)

    def build(self) -> GraphBuilder:
        return _Emitter(self).build()

    def _reader(self, layer: int, task: str | None) -> tuple[int, bool, int]:
        """(channels a reader of phi'_task^layer / psi'^layer convolves, is the blend folded into it, parameters of
        the blend node itself): the counting side of `_Emitter.reader_input`."""
        m = self.model
        if layer < 0:
            return m.slots[0].cin, False, 0
        channels = m.slots[layer].cout
        x_width = sum(len(kept) for _, kept in _mix_sources(m, self.gates, layer, self.filters, task))
        if _folds(self.options.fold_blends, x_width, channels):
            return x_width, True, 0
        return channels, False, len(m.task_names) * channels if task is None else 0  # psi' = wsum of every phi'_t

    def _mix_terms(self, layer: int, rows: list[int]) -> int:
        """Most mixing terms in the given rows of psi'^layer: one per task branch read, one for the shared."""
        gates, names = self.gates, self.model.task_names
        return max(sum(gates[t][layer][c] for t in names) + int(any(gates[t][layer][c] == 0 for t in names))
                   for c in rows)

    def expected_params(self) -> int:
        """The stem, every kept branch (its conv1 over what it reads, its kept filters), the blends materialised
        as nodes, the heads over what they read; a merged conv holds the same weights as its parts."""
        m = self.model
        total = count(m.stem)
        for layer, keep in enumerate(self.filters):
            for key, kept in [*keep.specific.items(), (SHARED, keep.shared)]:
                if not kept:
                    continue
                task = None if key == SHARED else key
                cin, folded, blend = self._reader(layer - 1, task)
                block = m.shared[layer] if task is None else m.specific[task][layer]
                # an identity residual reading a folded mixture materialises it: a wsum over its terms
                terms = self._mix_terms(layer - 1, kept) if block.ds is None and folded and task is None else 0
                total += blend + count(block, cin=cin, keep=len(kept), residual_terms=terms)
        for t in self.tasks:
            merged = t in self.merged_heads  # a merged head reads phi'_t materialised by one select
            cin, _, blend = (m.slots[-1].cout, False, 0) if merged else self._reader(m.num_layers - 1, t)
            total += blend + count(m.heads[t], cin=cin)
        return total

    def summary(self) -> dict[str, Any]:
        """Per layer: task-specific (G = 1) vs shared (G = 0) channels of every task, and the filters each branch
        keeps for the deployed tasks (no rounding); totals of kept and removed branches and filters."""
        model, gates = self.model, self.gates
        layers, kept_total, total_filters, removed = [], 0, 0, []
        for layer, keep in enumerate(kept_filters(model, gates, self.tasks)):
            width = model.slots[layer].cout
            kept = {"shared": len(keep.shared), "specific": {t: len(k) for t, k in keep.specific.items()}}
            kept_total += kept["shared"] + sum(kept["specific"].values())
            total_filters += width * (len(model.task_names) + 1)
            removed += [f"layer {layer} shared"] if not keep.shared else []
            removed += [f"layer {layer} task {t}" for t, k in keep.specific.items() if not k]
            layers.append({"layer": layer, "channels": width,
                           "specific": {t: sum(gates[t][layer]) for t in model.task_names},
                           "shared": {t: width - sum(gates[t][layer]) for t in model.task_names},
                           "kept_filters": kept})
        return {"family": "gated", "rule": self.decisions.get("rule", "alpha>0"), "tasks": list(self.tasks),
                "layers": layers, "kept_filters": kept_total, "total_filters": total_filters,
                "branches_total": model.num_layers * (len(model.task_names) + 1),
                "branches_removed": len(removed), "removed": removed}

    def draw(self, ax: Any) -> None:
        """Bar chart on a matplotlib axis: per layer, one bar per task stacking its task-specific channels (solid)
        on its shared channels (hatched); tasks not deployed are labelled so."""
        info = self.summary()
        names = self.model.task_names
        n = len(names)
        bar = 0.8 / n
        colors = [f"C{i}" for i in range(n)]
        for i, t in enumerate(names):
            xs = [layer["layer"] - 0.4 + (i + 0.5) * bar for layer in info["layers"]]
            spec = [layer["specific"][t] for layer in info["layers"]]
            shared = [layer["shared"][t] for layer in info["layers"]]
            label = f"{t} specific" + ("" if t in self.tasks else " (not deployed)")
            ax.bar(xs, spec, bar, color=colors[i], label=label)
            ax.bar(xs, shared, bar, bottom=spec, color="white", edgecolor=colors[i], hatch="//", label=f"{t} shared")
        ax.set_xticks([layer["layer"] for layer in info["layers"]])
        ax.set_xticklabels([f"{layer['layer']}\n({layer['channels']} ch)" for layer in info["layers"]])
        ax.set_xlabel("gated layer")
        ax.set_ylabel("channels")
        ax.set_title(f"GatedMTL gates ({info['rule']}): {info['kept_filters']}/{info['total_filters']} filters kept")
        ax.legend(fontsize="small", ncol=2)


class GatedSurgeon(Surgeon):
    family = "gated"
    supernet_cls = GatedSupernet
    options_model = GatedOptions
    cut_cls = GatedCut
