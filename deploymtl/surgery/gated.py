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

`round_channels = r` keeps each kept-filter count a multiple of r (capped at the branch width) by adding the
lowest-index unread filters; their outputs exist but every consumer has zero columns for them.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import DeploymtlError
from ..models.gated import GatedBlock, GatedSupernet
from ..models.layers import ASPPHead, ClassifierHead, LightHead
from .graph import GraphBuilder, fold_bn
from .registry import emit, register

SHARED = "__shared__"  # key of the shared branch in per-layer maps (task names are identifiers; no clash)


# -- the plan: which filters survive -----------------------------------------------------------------
@dataclass
class LayerKeep:
    """Kept output filters of one gated layer, original channel indices in ascending order ([] = removed)."""

    shared: list[int]
    specific: dict[str, list[int]]
    needed: list[int] = field(default_factory=list)  # before rounding, for reports
    needed_specific: dict[str, list[int]] = field(default_factory=dict)


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
            specific={t: _round(k, width, round_channels) for t, k in specific.items()},
            needed=shared, needed_specific=specific))
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
               task: str | None) -> tuple[list[tuple[str, list[int]]], torch.Tensor, torch.Tensor]:
    """(sources, A, S): V = A X with X the concat of `sources`; S (bool, like A) marks the terms of each row
    by structure (a beta weight that underflows to 0 still has its term)."""
    sources = _mix_sources(model, gates, layer, plan, task)
    width = model.slots[layer].cout
    offsets, pos = {}, 0
    for key, kept in sources:
        offsets[key] = {c: pos + i for i, c in enumerate(kept)}
        pos += len(kept)
    a = torch.zeros(width, pos, dtype=torch.float64)
    support = torch.zeros(width, pos, dtype=torch.bool)
    if task is not None:
        weights = {task: 1.0}
    else:
        with torch.no_grad():
            mix = model.mixing(layer).double()
        weights = {t: float(mix[i]) for i, t in enumerate(model.task_names)}
    for t, w in weights.items():
        for c in range(width):
            src = t if gates[t][layer][c] == 1 else SHARED
            a[c, offsets[src][c]] += w
            support[c, offsets[src][c]] = True
    return sources, a, support


class _Emitter:
    """Walks the plan layer by layer, emitting kept branches; tracks each emitted tensor's channel count."""

    def __init__(self, model: GatedSupernet, decisions: dict[str, Any], tasks: list[str], round_channels: int):
        self.model, self.tasks = model, tasks
        self.gates = _gates(model, decisions)
        self.plan = keep_plan(model, decisions, tasks, round_channels)
        self.b = GraphBuilder()
        self.nodes: dict[tuple[int, str], str] = {}  # (layer, branch key) -> node
        self.cats: dict[tuple[str, ...], str] = {}

    def concat(self, parts: list[str], name: str) -> str:
        if len(parts) == 1:
            return parts[0]
        key = tuple(parts)
        if key not in self.cats:
            self.cats[key] = self.b.concat(name, *parts)
        return self.cats[key]

    def branch_input(self, layer: int, task: str | None) -> tuple[str, torch.Tensor, torch.Tensor | None]:
        """(node X, A, S or None for a pure selection) for a branch of `layer` (task branch when `task`)."""
        if layer == 0:
            width = self.model.slots[0].cin
            return self.stem, torch.eye(width, dtype=torch.float64), None
        sources, a, support = _input_map(self.model, self.gates, layer - 1, self.plan, task)
        x = self.concat([self.nodes[(layer - 1, key)] for key, _ in sources],
                        f"l{layer}_{'psi' if task is None else 'phi_' + task}_in")
        return x, a, support if task is None else None

    def build(self) -> GraphBuilder:
        m, b = self.model, self.b
        self.stem = emit(b, m.stem, "image", "stem")
        for layer, keep in enumerate(self.plan):
            branches = [(t, m.specific[t][layer], keep.specific[t]) for t in m.task_names]
            branches.append((SHARED, m.shared[layer], keep.shared))
            for key, block, kept in branches:
                if not kept:
                    continue
                task = None if key == SHARED else key
                x, a, support = self.branch_input(layer, task)
                prefix = f"l{layer}_psi" if task is None else f"l{layer}_phi_{task}"
                self.nodes[(layer, key)] = emit(b, block, x, prefix, in_map=a, keep=kept, support=support)
        last = m.num_layers - 1
        for t in self.tasks:
            sources, a, _ = _input_map(m, self.gates, last, self.plan, t)
            x = self.concat([self.nodes[(last, key)] for key, _ in sources], f"head_{t}_in")
            b.output(t, emit_head(b, m.heads[t], x, f"head_{t}", a))
        return b


def build_graph(model: GatedSupernet, decisions: dict[str, Any], tasks: list[str],
                options: dict[str, Any] | None = None) -> GraphBuilder:
    """The static graph of the deployed `tasks` under the plan; options["round_channels"] (int, default 1)."""
    model = _check_model(model)
    validate_plan(model, decisions, tasks)
    return _Emitter(model, decisions, list(tasks), _round_option(options)).build()


def _round_option(options: dict[str, Any] | None) -> int:
    r = (options or {}).get("round_channels", 1)
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise DeploymtlError(f"round_channels is {r!r}", hint="expected an integer >= 1")
    return r


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
    selects, weight = [], torch.zeros(terms, rows.shape[0])
    for j in range(terms):
        index = [nz[j] if j < len(nz) else 0 for nz in nonzero]  # missing terms read channel 0 with weight 0
        for k, nz in enumerate(nonzero):
            if j < len(nz):
                weight[j, k] = float(rows[k, nz[j]])
        selects.append(b.select(f"{prefix}_sel{j}", x, index))
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


def _head_inputs(head: nn.Module) -> list[nn.Module]:
    """The layers of a head that read its input (where the input map folds in)."""
    if isinstance(head, LightHead):
        return [head.conv.conv]
    if isinstance(head, ASPPHead):
        return [br.conv1 for br in head.branches]
    if isinstance(head, ClassifierHead):  # gap is per channel, so the map folds into the linear layer
        return [head.fc]
    raise TypeError(f"GatedMTL surgeon: no input folding for head {type(head).__name__}")


def emit_head(b: GraphBuilder, head: nn.Module, x: str, prefix: str, a: torch.Tensor) -> str:
    """Emit `head` reading V = A X from node X: a copy whose input layers carry W A, then the head's own
    surgery function."""
    folded = copy.deepcopy(head)
    for layer in _head_inputs(folded):
        layer.weight = nn.Parameter(_fold_in(layer.weight.detach(), a), requires_grad=False)
        if isinstance(layer, nn.Conv2d):
            layer.in_channels = a.shape[1]
        else:
            layer.in_features = a.shape[1]
    return emit(b, folded, x, prefix)


# -- counting from the plan alone -------------------------------------------------------------------
def _conv_params(conv: nn.Conv2d, cin: int, cout: int) -> int:
    """A static conv with `cin` inputs and `cout` outputs, always with a bias (BN folded or its own)."""
    kh, kw = conv.kernel_size
    return cout * cin * kh * kw + cout


def _head_params(head: nn.Module, cin: int) -> int:
    if isinstance(head, LightHead):
        return _conv_params(head.conv.conv, cin, head.conv.conv.out_channels) + _conv_params(
            head.out, head.out.in_channels, head.out.out_channels)
    if isinstance(head, ASPPHead):
        return sum(_conv_params(br.conv1, cin, br.conv1.out_channels)
                   + _conv_params(br.conv2, br.conv2.in_channels, br.conv2.out_channels)
                   + _conv_params(br.conv3, br.conv3.in_channels, br.conv3.out_channels) for br in head.branches)
    if isinstance(head, ClassifierHead):
        return head.fc.out_features * cin + head.fc.out_features
    raise TypeError(f"GatedMTL surgeon: no parameter count for head {type(head).__name__}")


def expected_params(model: GatedSupernet, decisions: dict[str, Any], tasks: list[str],
                    options: dict[str, Any] | None = None) -> int:
    """Parameter count of the static model, from the plan and layer shapes alone (not from the builder)."""
    model = _check_model(model)
    validate_plan(model, decisions, tasks)
    gates = _gates(model, decisions)
    plan = keep_plan(model, decisions, list(tasks), _round_option(options))
    width = {(layer, key): len(kept) for layer, keep in enumerate(plan)
             for key, kept in [*keep.specific.items(), (SHARED, keep.shared)]}

    def read_width(layer: int, task: str | None) -> int:
        """Channels of X for a reader of phi'_task^layer (task given) or psi'^layer."""
        return sum(width[(layer, key)] for key, _ in _mix_sources(model, gates, layer, plan, task))

    total = _conv_params(model.stem.conv.conv, model.stem.conv.conv.in_channels, model.slots[0].cin)
    for layer, (slot, keep) in enumerate(zip(model.slots, plan, strict=True)):
        for key, kept in [*keep.specific.items(), (SHARED, keep.shared)]:
            if not kept:
                continue
            task = None if key == SHARED else key
            cin, k = (slot.cin if layer == 0 else read_width(layer - 1, task)), len(kept)
            block = model.shared[layer] if task is None else model.specific[task][layer]
            total += _conv_params(block.body.conv1, cin, slot.cout) + _conv_params(block.body.conv2, slot.cout, k)
            if block.ds is not None:
                total += _conv_params(block.ds.conv, cin, k)
            elif task is None and layer > 0:  # the residual of a mixture is a wsum: (terms, k) coefficients
                terms = max(sum(gates[t][layer - 1][c] for t in model.task_names)
                            + int(any(gates[t][layer - 1][c] == 0 for t in model.task_names)) for c in kept)
                total += terms * k
    return total + sum(_head_params(model.heads[t], read_width(model.num_layers - 1, t)) for t in tasks)


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
        kept = {t: len(k) for t, k in keep.specific.items()} | {"shared": len(keep.shared)}
        kept_filters += sum(kept.values())
        total_filters += width * (len(model.task_names) + 1)
        removed += [f"layer {layer} {'shared' if key == 'shared' else 'task ' + key}" for key, n in kept.items()
                    if n == 0]
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
