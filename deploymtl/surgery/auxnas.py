"""Aux-NAS surgeon: the auxiliary columns, every removed link and the alphas disappear (shared/METHODS.md, Aux-NAS).

With every aux->primary link removed, the deployed primary outputs depend on the primary column alone; each primary
fusion ReLU(BN(W [x ; 0 * y])) becomes ReLU(conv1x1(x)) with W restricted to x's input columns and BN folded in.
A plan may also *keep* an aux->primary link at stage s: the static model then keeps the auxiliary column's prefix
that link reads (stem, stages 1..s, fusions 1..s-1), and the link weight sigmoid(alpha) is folded into the fusion's
input columns. Deployable tasks are the primary tasks (any non-empty subset); auxiliary heads never are.

Interface used by the surgeon core (`deploymtl prune`): validate_plan, apply_plan, build_graph, expected_params,
summary, draw, approximation_links. The approximation error of removing small but non-zero links is measured
against the supernet run with `model.soft_links()` (every link at its real sigmoid weight).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import DeploymtlError
from ..ir import INPUT
from ..models.auxnas import STAGES, AuxNasSupernet, NddrFusion, ResBlock
from .builder import GraphBuilder, fold_bn
from .registry import emit, register


# -- per-layer surgery -------------------------------------------------------------------------------------------
@register(ResBlock)
def _res_block(b: GraphBuilder, m: ResBlock, x: str, prefix: str) -> str:
    h = b.relu(f"{prefix}_relu1", b.conv_module(f"{prefix}_conv1", x, m.body.conv1, m.body.bn1))
    h = b.conv_module(f"{prefix}_conv2", h, m.body.conv2, m.body.bn2)
    residual = emit(b, m.ds, x, f"{prefix}_ds") if m.ds is not None else x
    return b.relu(f"{prefix}_relu", b.add(f"{prefix}_add", h, residual))


@register(NddrFusion)
def _fusion(b: GraphBuilder, m: NddrFusion, x: str, prefix: str,
            others: list[tuple[int, str, float]] | tuple = ()) -> str:
    """`others`: (input slot j, node, link weight) of the kept links; the removed slots' columns are dropped and
    the weights are folded into the kept columns: W [x ; w y] = [W_x , w W_y] [x ; y]."""
    weight, bias = fold_bn(m.conv, m.bn)
    c = m.channels
    cols = [weight[:, :c]] + [weight[:, c * (1 + j):c * (2 + j)] * w for j, _, w in others]
    inp = b.concat(f"{prefix}_cat", x, *[node for _, node, _ in others]) if others else x
    return b.relu(f"{prefix}_relu", b.conv(f"{prefix}_conv", inp, torch.cat(cols, dim=1), bias))


# -- the plan ----------------------------------------------------------------------------------------------------
def _model(model: nn.Module) -> AuxNasSupernet:
    if not isinstance(model, AuxNasSupernet):
        raise TypeError(f"auxnas surgery got a {type(model).__name__}")  # dispatch bug, not user input
    return model


def _check_tasks(model: AuxNasSupernet, tasks: Any) -> list[str]:
    if not isinstance(tasks, (list, tuple)) or not tasks or not all(isinstance(t, str) for t in tasks):
        raise DeploymtlError(f"auxnas plan: tasks must be a non-empty list of task names, got {tasks!r}",
                             hint=f"expected a subset of the primary tasks {model.primary_tasks}")
    if len(set(tasks)) != len(tasks):
        raise DeploymtlError(f"auxnas plan: tasks repeat a name: {list(tasks)}")
    for t in tasks:
        if t not in model.task_names:
            raise DeploymtlError(f"auxnas plan: unknown task '{t}'", hint=f"expected one of {model.primary_tasks}")
        if t not in model.primary_tasks:
            raise DeploymtlError(f"auxnas plan: task '{t}' is auxiliary; Aux-NAS deploys only its primary tasks",
                                 hint=f"expected a subset of {model.primary_tasks}")
    return list(tasks)


def validate_plan(model: nn.Module, decisions: dict, tasks: list[str]) -> None:
    """One-line DeploymtlError for unknown/missing links, bad values, unknown or auxiliary tasks."""
    m = _model(model)
    m.parse_decisions(decisions)
    _check_tasks(m, tasks)


def apply_plan(model: nn.Module, decisions: dict) -> None:
    """Fix the plan's decisions on the supernet and switch it to the deployed mode the static model reproduces."""
    m = _model(model)
    m.set_decisions(decisions)
    m.set_deployed(True)


def _layout(m: AuxNasSupernet, decisions: dict) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(kept a2p mask, kept p2a mask, per auxiliary column the number of stages the primary outputs need)."""
    kp, ka = m.parse_decisions(decisions)
    return kp, ka, m.aux_depths(kp)


def build_graph(model: nn.Module, decisions: dict, tasks: list[str], options: dict | None = None) -> GraphBuilder:
    """The static graph of the primary column (+ the auxiliary prefixes kept links need) for `tasks`.
    `options` (the prune section) has nothing to tune here: Aux-NAS removes whole columns, not channels."""
    m = _model(model)
    tasks = _check_tasks(m, tasks)
    kp, ka, depths = _layout(m, decisions)
    with torch.no_grad():
        wp, wa = torch.sigmoid(m.alpha_p.detach()).cpu(), torch.sigmoid(m.alpha_a.detach()).cpu()
    b = GraphBuilder()
    x = emit(b, m.primary.stem, INPUT, "p_stem")
    ys = {j: emit(b, m.aux[j].stem, INPUT, f"a{j}_stem") for j, d in enumerate(depths) if d > 0}
    for s in range(STAGES):
        x_pre = _stage(b, m.primary.stages[s], x, f"p_s{s + 1}")
        y_pre = {j: _stage(b, m.aux[j].stages[s], y, f"a{j}_s{s + 1}") for j, y in ys.items() if depths[j] > s}
        links = [(j, y_pre[j], float(wp[s, j])) for j in range(len(m.aux)) if kp[s, j] > 0]
        x = emit(b, m.primary_fusions[s], x_pre, f"p_fuse{s + 1}", others=links)
        # an auxiliary fusion is needed only if a later stage of that column is
        ys = {j: emit(b, m.aux_fusions[j][s], y_pre[j], f"a{j}_fuse{s + 1}",
                      others=[(0, x_pre, float(wa[s, j]))] if ka[s, j] > 0 else [])
              for j in y_pre if depths[j] > s + 1}
    for t in tasks:
        b.output(t, emit(b, m.heads[t], x, f"head_{t}"))
    return b


def _stage(b: GraphBuilder, stage: nn.Sequential, x: str, prefix: str) -> str:
    for i, block in enumerate(stage):
        x = emit(b, block, x, f"{prefix}_b{i}")
    return x


def _folded_params(module: nn.Module) -> int:
    """Parameters of `module` once BN is folded: each conv keeps its weight and gains a bias; BN vanishes."""
    total = 0
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            total += sub.weight.numel() + sub.out_channels
        elif isinstance(sub, nn.Linear):
            total += sub.weight.numel() + (sub.bias.numel() if sub.bias is not None else 0)
    return total


def expected_params(model: nn.Module, decisions: dict, tasks: list[str], options: dict | None = None) -> int:
    """Parameter count of the static model, from the plan and the layer shapes alone (not from the graph)."""
    m = _model(model)
    tasks = _check_tasks(m, tasks)
    kp, ka, depths = _layout(m, decisions)
    c = m.primary.channels
    total = _folded_params(m.primary.stem) + sum(_folded_params(st) for st in m.primary.stages)
    total += sum(c[s] * c[s] * (1 + int(kp[s].sum())) + c[s] for s in range(STAGES))
    for j, d in enumerate(depths):
        if d:
            total += _folded_params(m.aux[j].stem) + sum(_folded_params(m.aux[j].stages[s]) for s in range(d))
            total += sum(c[s] * c[s] * (1 + int(ka[s, j])) + c[s] for s in range(d - 1))
    return total + sum(_folded_params(m.heads[t]) for t in tasks)


def approximation_links(model: nn.Module, decisions: dict) -> dict[str, float]:
    """Removed links that change the deployed primary outputs although their weight sigmoid(alpha) is not exactly 0:
    every removed aux->primary link, and removed primary->aux links inside a kept auxiliary prefix."""
    m = _model(model)
    kp, ka, depths = _layout(m, decisions)
    with torch.no_grad():
        wp, wa = torch.sigmoid(m.alpha_p.detach()).cpu(), torch.sigmoid(m.alpha_a.detach()).cpu()
    out = {}
    for name, (d, s, j) in m.link_index().items():
        if d == "a2p" and kp[s, j] == 0 and wp[s, j] != 0:
            out[name] = float(wp[s, j])
        elif d == "p2a" and ka[s, j] == 0 and wa[s, j] != 0 and s < depths[j] - 1:
            out[name] = float(wa[s, j])
    return out


def summary(model: nn.Module, decisions: dict, tasks: list[str]) -> dict[str, Any]:
    """What the surgeon keeps and removes, for the prune report."""
    m = _model(model)
    tasks = _check_tasks(m, tasks)
    kp, ka, depths = _layout(m, decisions)
    kept_links = [n for n, (d, s, j) in m.link_index().items()
                  if (d == "a2p" and kp[s, j] > 0) or (d == "p2a" and ka[s, j] > 0 and s < depths[j] - 1)]
    return {
        "family": "auxnas", "tasks": tasks, "primary": list(m.primary_tasks),
        "aux_networks": [list(g) for g in m.aux_groups], "threshold": m.threshold,
        "aux_stages_kept": {f"aux{j}": d for j, d in enumerate(depths)},
        "aux_networks_removed": sum(d == 0 for d in depths),
        "links_kept": kept_links,
        "links_removed": [n for n in m.link_names() if n not in kept_links],
        "approximation_links": approximation_links(m, decisions),
        "heads_removed": [t for t in m.task_names if t not in tasks],
        "alphas_removed": int(m.alpha_p.numel() + m.alpha_a.numel()),
        "params": {"supernet": sum(p.numel() for p in m.parameters()),
                   "static": expected_params(m, decisions, tasks, {})},
    }


def draw(model: nn.Module, decisions: dict, tasks: list[str], ax: Any) -> None:
    """Bar chart of the link weights sigmoid(alpha) per stage and direction (log scale), the threshold as a line;
    removed links hatched."""
    m = _model(model)
    _check_tasks(m, tasks)
    kp, ka, _ = _layout(m, decisions)
    with torch.no_grad():
        wp, wa = torch.sigmoid(m.alpha_p.detach()).cpu(), torch.sigmoid(m.alpha_a.detach()).cpu()
    n_aux = len(m.aux)
    series = [(f"aux{j}->primary", wp[:, j], kp[:, j], "tab:red") for j in range(n_aux)] + \
             [(f"primary->aux{j}", wa[:, j], ka[:, j], "tab:blue") for j in range(n_aux)]
    width = 0.8 / len(series)
    floor = 1e-8  # weights that underflow to 0 still get a visible stub on the log axis
    for i, (label, w, kept, color) in enumerate(series):
        xs = [s + (i - (len(series) - 1) / 2) * width for s in range(STAGES)]
        bars = ax.bar(xs, [max(float(v), floor) for v in w], width, label=label, color=color,
                      alpha=0.5 + 0.5 * (i < n_aux))
        for bar, k in zip(bars, kept, strict=True):
            if k == 0:
                bar.set_hatch("//")
                bar.set_edgecolor("black")
    ax.axhline(m.threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {m.threshold:g}")
    ax.set_yscale("log")
    ax.set_ylim(floor, 30.0)  # headroom above 1 for the legend
    ax.set_xticks(range(STAGES), [f"stage{s + 1}" for s in range(STAGES)])
    ax.set_ylabel("link weight sigmoid(alpha)")
    ax.set_title(f"Aux-NAS links (hatched = removed), deployed: {', '.join(tasks)}")
    ax.legend(fontsize="small", loc="upper right", ncol=2)
