"""The links of a release supernet and the plan that records which were cut, with their alpha values.

The release's connectivity (`config.VitArch.links`): stage s of each network reads the other network's outputs of
stages j in its group of 3 with j <= s (s - j < 3), through one alpha each: `aux_prim_alphas[s, j]` for the
auxiliary->primary link into primary stage s, `prim_aux_alphas[s, j]` for the primary->auxiliary one. The public
link weight is sigmoid(alpha). The public evaluation sets every auxiliary->primary weight to 0 whatever its alpha
(`set_zero_connectivity`); the primary->auxiliary links change only the auxiliary output.

The plan (`deploymtl.plan/1`, family `auxnas`) names each link as `block{s}<-aux.block{j}` (aux->primary) or
`aux.block{s}<-block{j}` (primary->aux), with `alpha`, `weight` = sigmoid(alpha) and `kept`; rule
`public-evaluation` (every aux->primary link cut: the primary network alone) or `keep-links` (`--keep-links`:
every link kept at its weight, both networks deployed).
"""

from __future__ import annotations

from typing import Any

import torch

from ...formats.plan import Plan
from .checkpoint import ReleaseCheckpoint
from .config import VitArch

CUT_RULE = "public-evaluation"
KEEP_RULE = "keep-links"


def link_name(s: int, j: int, direction: str) -> str:
    return f"block{s}<-aux.block{j}" if direction == "a2p" else f"aux.block{s}<-block{j}"


def link_weights(ckpt: ReleaseCheckpoint) -> tuple[torch.Tensor, torch.Tensor]:
    """sigmoid(alpha): (aux->primary, primary->aux), each depth x depth (row = stage, column = source)."""
    return (torch.sigmoid(ckpt.state["aux_prim_alphas"].float()),  # float32, as the public forward computes them
            torch.sigmoid(ckpt.state["prim_aux_alphas"].float()))


def links(arch: VitArch, ckpt: ReleaseCheckpoint, keep: bool) -> dict[str, dict[str, Any]]:
    if ckpt.kind != "supernet":
        return {}
    out = {}
    for direction, key in (("a2p", "aux_prim_alphas"), ("p2a", "prim_aux_alphas")):
        alphas = ckpt.state[key].double()
        for s, j in arch.links():
            a = float(alphas[s, j])
            out[link_name(s, j, direction)] = {"alpha": a, "weight": float(torch.sigmoid(alphas[s, j])),
                                               "kept": keep}
    return out


def make_plan(arch: VitArch, ckpt: ReleaseCheckpoint, keep: bool) -> dict[str, Any]:
    """The plan pruned.pt and plan.json carry (validated as any deploymtl plan envelope)."""
    tasks = [arch.primary.name, arch.auxiliary.name] if keep else [arch.primary.name]
    decisions = {"source": "Aux-NAS ViT release", "rule": KEEP_RULE if keep else CUT_RULE,
                 "primary": [arch.primary.name], "aux_networks": [[arch.auxiliary.name]],
                 "checkpoint_kind": ckpt.kind, "links": links(arch, ckpt, keep)}
    plan = Plan(family="auxnas", tasks=tasks, rule=decisions["rule"], decisions=decisions)
    return plan.to_dict()


def summary(plan: dict[str, Any]) -> dict[str, Any]:
    """Counts and extremes of the links, per direction, for the report."""
    out: dict[str, Any] = {}
    for direction, mark in (("aux->primary", "<-aux."), ("primary->aux", "aux.block")):
        ls = {k: v for k, v in plan["decisions"]["links"].items() if (mark in k if mark == "<-aux." else
                                                                       k.startswith(mark))}
        if not ls:
            continue
        weights = [v["weight"] for v in ls.values()]
        out[direction] = {"links": len(ls), "kept": sum(v["kept"] for v in ls.values()),
                          "weight_min": min(weights), "weight_max": max(weights),
                          "alpha_min": min(v["alpha"] for v in ls.values()),
                          "alpha_max": max(v["alpha"] for v in ls.values())}
    return out
