"""The GatedMTL surgeon: fixed gates -> a static graph that computes only the channels something reads.

Pruning rule (shared/METHODS.md, *derived*), over the deployed tasks D (a `--tasks` subset or all):

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
channel, also those only other tasks read); option "fold_blends" = "auto" (default) folds only where
|X| <= C and otherwise materialises V once and reads C channels; "always" / "never" force either way.
Materialising is arranged for few copies, since on CPU every extra op and copy costs latency that FLOPs do
not show: all blends of one layer select from ONE concat of the layer's kept branches (one `select` per
phi'_t, not a concat per task), and psi' is then a single `wsum` of the materialised phi'_t with the
constant weights softmax(beta)_t (exactly the supernet's formula), not one `select` per mixing term.

`round_channels = r` keeps each kept-filter count a multiple of r (capped at the branch width) by adding the
lowest-index unread filters; their outputs exist but every consumer has zero columns for them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import DeploymtlError
from ..models.gated import GatedBlock, GatedSupernet
from ..models.layers import ASPPHead, ClassifierHead, LightHead
from .builder import GraphBuilder, fold_bn
from .registry import emit, register

SHARED = "__shared__"  # key of the shared branch in per-layer maps (task names are identifiers; no clash)


# -- the plan: which filters survive -----------------------------------------------------------------
@dataclass
class LayerKeep:
    """Kept output filters of one gated layer, original channel indices in ascending order ([] = removed)."""

    shared: list[int]
    specific: dict[str, list[int]]


def _gates(model: GatedSupernet, decisions: dict[str, Any]) -> dict[str, list[list[int]]]:
    model.gate_tensors(decisions)  # validates shape and values
    return {t: [[int(v) for v in row] for row in decisions["gates"][t]] for t in model.task_names}


def _round(kept: list[int], width: int, multiple: int) -> list[int]:
    if not kept or multiple <= 1:
        return kept
    target = min(width, math.ceil(len(kept) / multiple) * multiple)
    chosen = set(kept)
    extra = [c for c in range(width) if c not in chosen][: target - len(kept)]
    return sorted(chosen | set(extra))


def keep_plan(model: GatedSupernet, decisions: dict[str, Any], tasks: list[str], round_channels: int = 1
              ) -> list[LayerKeep]:
    """Backward liveness over layers (module docstring); returns the kept filters of every layer."""
    gates = _gates(model, decisions)
    names = model.task_names
    need_phi = {t: t in tasks for t in names}  # is phi'_t of this layer needed (always as a whole)?
    need_psi = False  # is psi' of this layer needed? (the last layer's feeds nothing)
    plan: list[LayerKeep] = []
    for layer in reversed(range(model.num_layers)):
        width = model.slots[layer].cout
        readers = names if need_psi else [t for t in names if need_phi[t]]
        specific = {t: [c for c in range(width) if gates[t][layer][c] == 1] if t in readers else [] for t in names}
        shared = sorted({c for t in readers for c in range(width) if gates[t][layer][c] == 0})
        plan.append(LayerKeep(
            shared=_round(shared, width, round_channels),
            specific={t: _round(k, width, round_channels) for t, k in specific.items()}))
        need_phi = {t: bool(specific[t]) for t in names}
        need_psi = bool(shared)
    return plan[::-1]


# -- the interface the prune orchestration calls ---------------------------------------------------
def _check_model(model: Any) -> GatedSupernet:
    if not isinstance(model, GatedSupernet):
        raise DeploymtlError(f"the GatedMTL surgeon got a {type(model).__name__}", hint="expected a gated supernet")
    return model


def validate_plan(model: GatedSupernet, decisions: dict[str, Any], tasks: list[str]) -> None:
    """One-line DeploymtlError for a plan this supernet cannot deploy (unknown or no tasks, wrong layer or
    channel counts, values other than 0/1)."""
    model = _check_model(model)
    if not tasks:
        raise DeploymtlError("GatedMTL plan: no task to deploy", hint=f"expected some of {model.task_names}")
    unknown = [t for t in tasks if t not in model.task_names]
    if unknown:
        raise DeploymtlError(f"GatedMTL plan: unknown tasks {unknown}", hint=f"expected some of {model.task_names}")
    if len(set(tasks)) != len(tasks):
        raise DeploymtlError(f"GatedMTL plan: repeated tasks in {tasks}", hint="name each task once")
    model.gate_tensors(decisions)


def apply_plan(model: GatedSupernet, decisions: dict[str, Any]) -> None:
    """Make the supernet's deployed mode follow the plan's gates."""
    _check_model(model).set_decisions(decisions)


def _mix_sources(model: GatedSupernet, gates: dict[str, list[list[int]]], layer: int, plan: list[LayerKeep],
                 task: str | None) -> list[tuple[str, list[int]]]:
    """The kept source tensors of the input of layer `layer + 1`: phi'_task^layer (task given) or psi'^layer
    (task None), as (branch key, kept channels) in concat order: task branches in task order, then shared."""
    names = [task] if task is not None else model.task_names
    keep = plan[layer]
    out = [(t, keep.specific[t]) for t in names if any(gates[t][layer])]
    if any(v == 0 for t in names for v in gates[t][layer]):
        out.append((SHARED, keep.shared))
    return out


def _input_map(model: GatedSupernet, gates: dict[str, list[list[int]]], layer: int, plan: list[LayerKeep],
               task: str | None, sources: list[tuple[str, list[int]]] | None = None
               ) -> tuple[list[tuple[str, list[int]]], torch.Tensor, torch.Tensor]:
    """(sources, A, S): V = A X with X the concat of `sources` (default: what V reads, `_mix_sources`; a
    superset such as every kept branch of the layer works too); S (bool, like A) marks the terms of each row
    by structure (a beta weight that underflows to 0 still has its term)."""
    sources = sources if sources is not None else _mix_sources(model, gates, layer, plan, task)
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


FOLD_MODES = ("auto", "always", "never")


def _folds(mode: str, x_width: int, channels: int) -> bool:
    """Fold the blend into the readers' weights (conv over X), or materialise V first (conv over C channels)?
    "auto" folds unless X is wider than V: folding then costs more MACs than the select/wsum it saves."""
    return mode == "always" or (mode == "auto" and x_width <= channels)


def _merges_layer0(plan: list[LayerKeep], merge: bool) -> bool:
    """Do the kept branches of layer 0 run their conv1 as one convolution (`_Emitter.merged_layer0`)? They all
    read the stem, so stacking their filters costs no copy and no FLOP. Later layers' branches read different
    blends: stacking those for one grouped conv costs a copy, and ONNX Runtime runs grouped convolutions of
    such widths outside its blocked layout (measured: eager PyTorch 5% faster, ONNX Runtime 12% slower)."""
    keep = plan[0]
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
    """Walks the plan layer by layer, emitting kept branches, then the heads of the deployed tasks."""

    def __init__(self, model: GatedSupernet, decisions: dict[str, Any], tasks: list[str], round_channels: int,
                 fold: str, merge: bool):
        self.model, self.tasks, self.fold, self.merge = model, tasks, fold, merge
        self.gates = _gates(model, decisions)
        self.plan = keep_plan(model, decisions, tasks, round_channels)
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
        sources, a, support = _input_map(self.model, self.gates, layer, self.plan, task)
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
        _, a, _ = _input_map(self.model, self.gates, layer, self.plan, task, sources)
        return _materialize(self.b, name, x, a, None)

    def layer_concat(self, layer: int) -> tuple[list[tuple[str, list[int]]], str]:
        """(every kept branch of `layer` as (key, kept filters), the node of their concat, in that order)."""
        keep = self.plan[layer]
        sources = [(t, keep.specific[t]) for t in self.model.task_names if keep.specific[t]]
        sources += [(SHARED, keep.shared)] if keep.shared else []
        return sources, self.concat([self.nodes[(layer, key)] for key, _ in sources], f"l{layer}_cat")

    def build(self) -> GraphBuilder:
        m, b = self.model, self.b
        self.stem = emit(b, m.stem, "image", "stem")
        for layer, keep in enumerate(self.plan):
            branches = [(t, m.specific[t][layer], keep.specific[t]) for t in m.task_names if keep.specific[t]]
            branches += [(SHARED, m.shared[layer], keep.shared)] if keep.shared else []
            if layer == 0 and _merges_layer0(self.plan, self.merge):
                self.merged_layer0(branches)
                continue
            for key, block, kept in branches:
                task = None if key == SHARED else key
                prefix = f"l{layer}_psi" if task is None else f"l{layer}_phi_{task}"
                x, a, support = self.reader_input(layer - 1, task, f"{prefix}_in")
                self.nodes[(layer, key)] = emit(b, block, x, prefix, in_map=a, keep=kept, support=support)
        merged_heads = _merged_heads(m, self.tasks, self.merge)
        if merged_heads:
            self.merged_heads(merged_heads)
        for t in self.tasks:
            if t in merged_heads:
                continue
            # A classifier selects after pooling, which is cheaper than any selection before it.
            x, a, _ = self.reader_input(m.num_layers - 1, t, f"head_{t}_in",
                                        fold=isinstance(m.heads[t], ClassifierHead))
            b.output(t, emit_head(b, m.heads[t], x, f"head_{t}", a))
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
                 for c in _input_map(m, self.gates, layer, self.plan, t, sources)[1].argmax(dim=1).tolist()]
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


def build_graph(model: GatedSupernet, decisions: dict[str, Any], tasks: list[str],
                options: dict[str, Any] | None = None) -> GraphBuilder:
    """The static graph of the deployed `tasks` under the plan. Options: "round_channels" (int >= 1, default
    1); "fold_blends" ("auto" default, "always", "never": see `_folds`); "merge_convs" (bool, default True: see
    `_merges_layer0`, `_merged_heads`)."""
    model = _check_model(model)
    validate_plan(model, decisions, tasks)
    round_channels, fold, merge = _options(options)
    return _Emitter(model, decisions, list(tasks), round_channels, fold, merge).build()


def _options(options: dict[str, Any] | None) -> tuple[int, str, bool]:
    options = options or {}
    r = options.get("round_channels", 1)
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise DeploymtlError(f"round_channels is {r!r}", hint="expected an integer >= 1")
    fold = options.get("fold_blends", "auto")
    if fold not in FOLD_MODES:
        raise DeploymtlError(f"fold_blends is {fold!r}", hint=f"expected one of {', '.join(FOLD_MODES)}")
    merge = options.get("merge_convs", True)
    if not isinstance(merge, bool):
        raise DeploymtlError(f"merge_convs is {merge!r}", hint="expected true or false")
    return r, fold, merge


# -- per-layer-type surgery -----------------------------------------------------------------------
def _fold_in(weight: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Conv/linear weight (O, C, ...) reading V = A X -> weight (O, |X|, ...) reading X."""
    return torch.einsum("oc...,cx->ox...", weight.double(), a).float()


def _materialize(b: GraphBuilder, prefix: str, x: str, rows: torch.Tensor, support: torch.Tensor | None) -> str:
    """Node holding A[rows] X explicitly: a `select` for a selection (support None; rows one-hot), one `select`
    per term and a `wsum` of them for a mixture (terms where `support`)."""
    if support is None:
        index = rows.argmax(dim=1).tolist()
        if index == list(range(rows.shape[1])):
            return x
        return b.select(f"{prefix}_sel", x, index)
    nonzero = [torch.nonzero(r).flatten().tolist() for r in support]
    terms = max(len(nz) for nz in nonzero)
    # Term j of row k reads column index[j][k] with weight A[k, index[j][k]]; a row with fewer terms reads
    # column 0 with weight 0.
    index = torch.tensor([[nz[j] if j < len(nz) else 0 for nz in nonzero] for j in range(terms)], dtype=torch.int64)
    present = torch.tensor([[j < len(nz) for nz in nonzero] for j in range(terms)])
    weight = torch.where(present, rows.gather(1, index.T).T, torch.zeros((), dtype=rows.dtype))
    selects = [b.select(f"{prefix}_sel{j}", x, index[j].tolist()) for j in range(terms)]
    return b.wsum(f"{prefix}_mix", selects, weight)


@register(GatedBlock)
def _gated_block(b: GraphBuilder, m: GatedBlock, x: str, prefix: str, *, in_map: torch.Tensor, keep: list[int],
                 support: torch.Tensor | None) -> str:
    """relu(ds(V) + body(V))[keep] with V = in_map @ X: conv1 whole (reads X through W A), conv2 and ds keep
    only the `keep` rows; an identity residual materialises V[keep]."""
    idx = torch.tensor(keep, dtype=torch.int64)
    body = m.body
    w1, b1 = fold_bn(body.conv1, body.bn1)
    h = b.conv(f"{prefix}_conv1", x, _fold_in(w1, in_map), b1, stride=body.conv1.stride[0],
               padding=body.conv1.padding[0], dilation=body.conv1.dilation[0])
    h = b.relu(f"{prefix}_relu1", h)
    h = b.conv_module(f"{prefix}_conv2", h, body.conv2, body.bn2, out_index=idx)
    if m.ds is not None:
        wd, bd = fold_bn(m.ds.conv, m.ds.bn)
        r = b.conv(f"{prefix}_ds", x, _fold_in(wd[idx], in_map), bd[idx], stride=m.ds.conv.stride[0],
                   padding=m.ds.conv.padding[0], dilation=m.ds.conv.dilation[0])
    else:
        r = _materialize(b, f"{prefix}_res", x, in_map[idx], None if support is None else support[idx])
    return b.relu(f"{prefix}_out", b.add(f"{prefix}_add", h, r))


def _conv_reading(b: GraphBuilder, name: str, x: str, conv: nn.Conv2d, bn: nn.BatchNorm2d | None,
                  a: torch.Tensor) -> str:
    """`conv` (+ folded `bn`) applied to V = A X, emitted as a conv over X with weight W A."""
    w, bias = fold_bn(conv, bn)
    return b.conv(name, x, _fold_in(w, a), bias, stride=conv.stride[0], padding=conv.padding[0],
                  dilation=conv.dilation[0])


def emit_head(b: GraphBuilder, head: nn.Module, x: str, prefix: str, a: torch.Tensor) -> str:
    """Emit `head` reading V = A X from node X (same nodes as the registry's head functions, with A folded into
    the layers that read the input). V = phi'_t is a selection of X, so the classifier selects after pooling."""
    if isinstance(head, LightHead):
        h = _conv_reading(b, f"{prefix}_conv", x, head.conv.conv, head.conv.bn, a)
        h = b.relu(f"{prefix}_relu", h) if head.conv.relu else h
        return b.resize_to_input(f"{prefix}_up", b.conv_module(f"{prefix}_out", h, head.out))
    if isinstance(head, ASPPHead):
        outs = []
        for i, br in enumerate(head.branches):  # dropout is training-only: gone
            h = b.relu(f"{prefix}_b{i}_relu1", _conv_reading(b, f"{prefix}_b{i}_conv1", x, br.conv1, None, a))
            h = b.relu(f"{prefix}_b{i}_relu2", b.conv_module(f"{prefix}_b{i}_conv2", h, br.conv2))
            outs.append(b.conv_module(f"{prefix}_b{i}_conv3", h, br.conv3))
        return b.resize_to_input(f"{prefix}_up", b.add(f"{prefix}_sum", *outs))
    if isinstance(head, ClassifierHead):
        pooled = _materialize(b, f"{prefix}_in", b.gap(f"{prefix}_gap", x), a, None)
        return b.linear(f"{prefix}_fc", pooled, head.fc)
    raise TypeError(f"GatedMTL surgeon: no surgery for head {type(head).__name__}")


# -- counting from the plan alone -------------------------------------------------------------------
def _conv_params(conv: nn.Conv2d, cin: int, cout: int) -> int:
    """A static conv with `cin` inputs and `cout` outputs, always with a bias (BN folded or its own)."""
    kh, kw = conv.kernel_size
    return cout * cin * kh * kw + cout


def _head_params(head: nn.Module, cin: int) -> int:
    """Parameters of a static head whose input layers read `cin` channels (the classifier reads V itself)."""
    if isinstance(head, LightHead):
        return _conv_params(head.conv.conv, cin, head.conv.conv.out_channels) + _conv_params(
            head.out, head.out.in_channels, head.out.out_channels)
    if isinstance(head, ASPPHead):
        return sum(_conv_params(br.conv1, cin, br.conv1.out_channels)
                   + _conv_params(br.conv2, br.conv2.in_channels, br.conv2.out_channels)
                   + _conv_params(br.conv3, br.conv3.in_channels, br.conv3.out_channels) for br in head.branches)
    if isinstance(head, ClassifierHead):
        return head.fc.out_features * head.fc.in_features + head.fc.out_features
    raise TypeError(f"GatedMTL surgeon: no parameter count for head {type(head).__name__}")


def expected_params(model: GatedSupernet, decisions: dict[str, Any], tasks: list[str],
                    options: dict[str, Any] | None = None) -> int:
    """Parameter count of the static model, from the plan and layer shapes alone (not from the builder)."""
    model = _check_model(model)
    validate_plan(model, decisions, tasks)
    round_channels, fold, merge = _options(options)
    gates = _gates(model, decisions)
    names = model.task_names
    plan = keep_plan(model, decisions, list(tasks), round_channels)
    width = {(layer, key): len(kept) for layer, keep in enumerate(plan)
             for key, kept in [*keep.specific.items(), (SHARED, keep.shared)]}

    def terms(layer: int, rows: list[int]) -> int:
        """Most mixing terms in the given rows of psi'^layer: one per task branch read, one for the shared."""
        return max(sum(gates[t][layer][c] for t in names) + int(any(gates[t][layer][c] == 0 for t in names))
                   for c in rows)

    def reader(layer: int, task: str | None) -> tuple[int, bool, int]:
        """(channels a reader of phi'_task^layer / psi'^layer convolves, is it folded, params of the blend)."""
        if layer < 0:
            return model.slots[0].cin, False, 0
        channels = model.slots[layer].cout
        x_width = sum(width[(layer, key)] for key, _ in _mix_sources(model, gates, layer, plan, task))
        if _folds(fold, x_width, channels):
            return x_width, True, 0
        return channels, False, len(names) * channels if task is None else 0  # psi' = wsum of every phi'_t

    total = _conv_params(model.stem.conv.conv, model.stem.conv.conv.in_channels, model.slots[0].cin)
    for layer, (slot, keep) in enumerate(zip(model.slots, plan, strict=True)):
        for key, kept in [*keep.specific.items(), (SHARED, keep.shared)]:
            if not kept:
                continue
            task = None if key == SHARED else key
            cin, folded, blend = reader(layer - 1, task)  # a merged layer 0 has the same weights
            k = len(kept)
            block = model.shared[layer] if task is None else model.specific[task][layer]
            total += blend + _conv_params(block.body.conv1, cin, slot.cout) + _conv_params(block.body.conv2,
                                                                                        slot.cout, k)
            if block.ds is not None:
                total += _conv_params(block.ds.conv, cin, k)
            elif folded and task is None:  # the residual is a wsum of the mixture's kept rows
                total += terms(layer - 1, kept) * k
    heads = _merged_heads(model, list(tasks), merge)
    for t in tasks:
        cin, _, blend = (model.slots[-1].cout, False, 0) if t in heads else reader(model.num_layers - 1, t)
        total += blend + _head_params(model.heads[t], cin)
    return total


# -- reports --------------------------------------------------------------------------------------
def summary(model: GatedSupernet, decisions: dict[str, Any], tasks: list[str]) -> dict[str, Any]:
    """Per layer: task-specific (G = 1) vs shared (G = 0) channels of every task, and the filters each branch
    keeps for the deployed `tasks` (no rounding); totals of kept and removed branches and filters."""
    model = _check_model(model)
    validate_plan(model, decisions, tasks)
    gates = _gates(model, decisions)
    plan = keep_plan(model, decisions, list(tasks))
    layers, kept_filters, total_filters, removed = [], 0, 0, []
    for layer, keep in enumerate(plan):
        width = model.slots[layer].cout
        kept = {"shared": len(keep.shared), "specific": {t: len(k) for t, k in keep.specific.items()}}
        kept_filters += kept["shared"] + sum(kept["specific"].values())
        total_filters += width * (len(model.task_names) + 1)
        removed += [f"layer {layer} shared"] if not keep.shared else []
        removed += [f"layer {layer} task {t}" for t, k in keep.specific.items() if not k]
        layers.append({"layer": layer, "channels": width,
                       "specific": {t: sum(gates[t][layer]) for t in model.task_names},
                       "shared": {t: width - sum(gates[t][layer]) for t in model.task_names},
                       "kept_filters": kept})
    return {"family": "gated", "rule": decisions.get("rule", "alpha>0"), "tasks": list(tasks), "layers": layers,
            "kept_filters": kept_filters, "total_filters": total_filters,
            "branches_total": model.num_layers * (len(model.task_names) + 1),
            "branches_removed": len(removed), "removed": removed}


def draw(model: GatedSupernet, decisions: dict[str, Any], tasks: list[str], ax: Any) -> None:
    """Bar chart on a matplotlib axis: per layer, one bar per task stacking its task-specific channels (solid)
    on its shared channels (hatched); tasks outside `tasks` are labelled "not deployed"."""
    info = summary(model, decisions, tasks)
    names = model.task_names
    n = len(names)
    bar = 0.8 / n
    colors = [f"C{i}" for i in range(n)]
    for i, t in enumerate(names):
        xs = [layer["layer"] - 0.4 + (i + 0.5) * bar for layer in info["layers"]]
        spec = [layer["specific"][t] for layer in info["layers"]]
        shared = [layer["shared"][t] for layer in info["layers"]]
        ax.bar(xs, spec, bar, color=colors[i], label=f"{t} specific" + ("" if t in tasks else " (not deployed)"))
        ax.bar(xs, shared, bar, bottom=spec, color="white", edgecolor=colors[i], hatch="//", label=f"{t} shared")
    ax.set_xticks([layer["layer"] for layer in info["layers"]])
    ax.set_xticklabels([f"{layer['layer']}\n({layer['channels']} ch)" for layer in info["layers"]])
    ax.set_xlabel("gated layer")
    ax.set_ylabel("channels")
    ax.set_title(f"GatedMTL gates ({info['rule']}): {info['kept_filters']}/{info['total_filters']} filters kept")
    ax.legend(fontsize="small", ncol=2)
