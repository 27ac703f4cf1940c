"""Aux-NAS surgeon: the auxiliary columns, every removed link and the alphas disappear (docs/methods.md, Aux-NAS).

With every aux->primary link removed, the deployed primary outputs depend on the primary column alone; each primary
fusion ReLU(BN(W [x ; 0 * y])) becomes ReLU(conv1x1(x)) with W restricted to x's input columns and BN folded in.
A plan may also *keep* an aux->primary link at stage s: the static model then keeps the auxiliary column's prefix
that link reads (stem, stages 1..s, fusions 1..s-1), and the link weight sigmoid(alpha) is folded into the fusion's
input columns. Deployable tasks are the primary tasks (any non-empty subset); auxiliary heads never are.

`AuxNasSurgeon.prepare(model, plan)` parses the links and checks the tasks once; the `AuxNasCut` keeps the kept-link
masks and the auxiliary depths they need, and also answers `approximation_links`: the approximation error of
removing small but non-zero links is measured against the supernet run with `model.soft_links()` (every link at
its real sigmoid weight). Aux-NAS has no options of its own (it removes whole columns, not channels).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import DeploymtlError
from ..formats.plan import Plan, PlanOptions
from ..ir import INPUT
from ..models.auxnas import STAGES, AuxNasSupernet, NddrFusion, ResBlock
from .base import Cut, Surgeon
from .builder import GraphBuilder, fold_bn
from .registry import conv_params, count, emit, register


# -- per-layer surgery -------------------------------------------------------------------------------------------
def _res_block_params(m: ResBlock) -> int:
    return conv_params(m.body.conv1) + conv_params(m.body.conv2) + (count(m.ds) if m.ds is not None else 0)


@register(ResBlock, params=_res_block_params)
def _res_block(b: GraphBuilder, m: ResBlock, x: str, prefix: str) -> str:
    h = b.relu(f"{prefix}_relu1", b.conv_module(f"{prefix}_conv1", x, m.body.conv1, m.body.bn1))
    h = b.conv_module(f"{prefix}_conv2", h, m.body.conv2, m.body.bn2)
    residual = emit(b, m.ds, x, f"{prefix}_ds") if m.ds is not None else x
    return b.relu(f"{prefix}_relu", b.add(f"{prefix}_add", h, residual))


def _fusion_params(m: NddrFusion, links: int = 0) -> int:
    """The fusion conv keeps its own input columns and those of the `links` kept links."""
    return conv_params(m.conv, cin=m.channels * (1 + links))


@register(NddrFusion, params=_fusion_params)
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
def _check_tasks(model: AuxNasSupernet, tasks: list[str]) -> None:
    for t in tasks:
        if t not in model.primary_tasks:
            raise DeploymtlError(f"auxnas plan: task '{t}' is auxiliary; Aux-NAS deploys only its primary tasks",
                                 hint=f"expected a subset of {model.primary_tasks}")


def _stage(b: GraphBuilder, stage: nn.Sequential, x: str, prefix: str) -> str:
    for i, block in enumerate(stage):
        x = emit(b, block, x, f"{prefix}_b{i}")
    return x


def _stage_params(stage: nn.Sequential) -> int:
    return sum(count(block) for block in stage)


class AuxNasCut(Cut[AuxNasSupernet, PlanOptions]):
    """An Aux-NAS plan prepared against its supernet: the kept link masks (kp: aux->primary, ka: primary->aux,
    (stages, aux columns)) and per auxiliary column the number of stages the primary outputs need."""

    def __init__(self, model: AuxNasSupernet, plan: Plan) -> None:
        super().__init__(model, plan)
        self.kp, self.ka = model.parse_decisions(self.decisions)
        _check_tasks(model, self.tasks)
        self.depths = model.aux_depths(self.kp)

    def _link_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return torch.sigmoid(self.model.alpha_p.detach()).cpu(), torch.sigmoid(self.model.alpha_a.detach()).cpu()

    def build(self) -> GraphBuilder:
        """The static graph of the primary column (+ the auxiliary prefixes kept links need) for the tasks."""
        m, kp, ka, depths = self.model, self.kp, self.ka, self.depths
        wp, wa = self._link_weights()
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
        for t in self.tasks:
            b.output(t, emit(b, m.heads[t], x, f"head_{t}"))
        return b

    def expected_params(self) -> int:
        """The primary column with its fusions (own columns + kept links), each needed auxiliary prefix with the
        fusions inside it, the deployed heads."""
        m, kp, ka = self.model, self.kp, self.ka
        total = count(m.primary.stem) + sum(_stage_params(st) for st in m.primary.stages)
        total += sum(count(m.primary_fusions[s], links=int(kp[s].sum())) for s in range(STAGES))
        for j, d in enumerate(self.depths):
            if d:
                total += count(m.aux[j].stem) + sum(_stage_params(m.aux[j].stages[s]) for s in range(d))
                total += sum(count(m.aux_fusions[j][s], links=int(ka[s, j])) for s in range(d - 1))
        return total + sum(count(m.heads[t]) for t in self.tasks)

    def approximation_links(self) -> dict[str, float]:
        """Removed links that change the deployed primary outputs although their weight sigmoid(alpha) is not
        exactly 0: every removed aux->primary link, and removed primary->aux links inside a kept auxiliary prefix."""
        kp, ka, depths = self.kp, self.ka, self.depths
        wp, wa = self._link_weights()
        out = {}
        for name, (d, s, j) in self.model.link_index().items():
            if d == "a2p" and kp[s, j] == 0 and wp[s, j] != 0:
                out[name] = float(wp[s, j])
            elif d == "p2a" and ka[s, j] == 0 and wa[s, j] != 0 and s < depths[j] - 1:
                out[name] = float(wa[s, j])
        return out

    def soft_reference(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The supernet run with every link at its real sigmoid weight (`soft_links`), removed ones included."""
        with self.model.soft_links():
            return self.model(images)

    def summary(self) -> dict[str, Any]:
        """What the surgeon keeps and removes, for the prune report."""
        m, kp, ka, depths = self.model, self.kp, self.ka, self.depths
        kept_links = [n for n, (d, s, j) in m.link_index().items()
                      if (d == "a2p" and kp[s, j] > 0) or (d == "p2a" and ka[s, j] > 0 and s < depths[j] - 1)]
        return {
            "family": "auxnas", "tasks": list(self.tasks), "primary": list(m.primary_tasks),
            "aux_networks": [list(g) for g in m.aux_groups], "threshold": m.threshold,
            "aux_stages_kept": {f"aux{j}": d for j, d in enumerate(depths)},
            "aux_networks_removed": sum(d == 0 for d in depths),
            "links_kept": kept_links,
            "links_removed": [n for n in m.link_names() if n not in kept_links],
            "approximation_links": self.approximation_links(),
            "heads_removed": [t for t in m.task_names if t not in self.tasks],
            "alphas_removed": int(m.alpha_p.numel() + m.alpha_a.numel()),
            "params": {"supernet": sum(p.numel() for p in m.parameters()), "static": self.expected_params()},
        }

    def draw(self, ax: Any) -> None:
        """Bar chart of the link weights sigmoid(alpha) per stage and direction (log scale), the threshold as a
        line; removed links hatched."""
        m, kp, ka = self.model, self.kp, self.ka
        wp, wa = self._link_weights()
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
        ax.set_title(f"Aux-NAS links (hatched = removed), deployed: {', '.join(self.tasks)}")
        ax.legend(fontsize="small", loc="upper right", ncol=2)


class AuxNasSurgeon(Surgeon):
    family = "auxnas"
    supernet_cls = AuxNasSupernet
    cut_cls = AuxNasCut

    def default_tasks(self, model: AuxNasSupernet) -> list[str]:  # type: ignore[override]
        """Aux-NAS deploys its primary tasks unless told otherwise."""
        return list(model.primary_tasks)
