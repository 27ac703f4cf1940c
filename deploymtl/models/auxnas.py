"""Aux-NAS: auxiliary branches that vanish at inference (Gao et al., "Aux-NAS: Exploiting Auxiliary Labels with
Negligibly Extra Inference Cost", ICLR 2024; public code ethanygao/Aux-NAS). CNN variant on Deeplab-ResNet.

Architecture (paper Sec. 3; docs/methods.md, Aux-NAS):
- a *primary* column P carrying the primary task heads and auxiliary column(s) A_j carrying the auxiliary heads,
  all Deeplab-ResNet columns of the same shape (`models/backbone.py`: stem, 4 stages of BasicBlocks);
- after every stage s (s = 1..4) a fusion op on each column, in both directions (NDDR / MTL-NAS):
      x_s'   = ReLU(BN(W^P_s [x_s ; sigmoid(alpha^P_{s,1}) y_{1,s} ; ... ]))       aux -> primary
      y_j,s' = ReLU(BN(W^A_{j,s} [y_j,s ; sigmoid(alpha^A_{s,j}) x_s]))             primary -> aux
  W are 1x1 convolutions without bias, initialised as the identity on the column's own input and zero on the
  others (so at init a fusion is ReLU(BN(x_self))). As in the public code the *pre-fusion* stage outputs cross over.
  Shapes: x_s, y_j,s are (N, C_s, h_s, w_s) with C_s = width * 2^(s-1), stride 4 at stage 1 and 8 after.

Search (paper Sec. 3.3, Eq. 5): alternate a weight step (task losses) on one half of the training split and an
architecture step (task losses + L1) on the other half. The L1 penalty on the aux->primary links
      R(t) = lambda(t) * mean_{s,j} sigmoid(alpha^P_{s,j}),
      lambda(t) = 0 for t <= t0, lambda_max for t >= t1, linear in between (public code: `poly`, power 1),
with (t0, t1) = (50%, 80%) of training and lambda_max = 1000 drives those links to ~0.

Decisions: a link is *kept* iff sigmoid(alpha) >= threshold (0.01 by default); removed links are exactly 0 in the
deployed mode, so the primary outputs are the primary column alone and the surgeon (`surgery/auxnas.py`) drops every
auxiliary column, every removed input and the alphas. `soft_links()` runs the real (soft) link weights, against
which the surgeon reports the approximation error of removing small but non-zero links.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from ..errors import DeploymtlError
from ..tasks import TaskSpec
from .backbone import BackboneConfig, BlockBody, BlockSlot, block_slots, make_ds
from .base import Supernet
from .layers import Stem, make_head

STAGES = 4
DEFAULT_RULE = "a link is kept iff sigmoid(alpha) >= threshold; removed links are exactly 0 when deployed"


class AuxNasModelConfig(BackboneConfig):
    """`model:` section: the backbone plus which tasks are primary and how auxiliary tasks share columns."""

    primary: list[str] | None = Field(default=None, min_length=1,
                                      description="primary task names (deployed); default: the first task")
    aux_networks: Literal["shared", "per_task"] | list[list[str]] = Field(
        default="shared", description="'shared': one auxiliary column with every auxiliary head; 'per_task': one "
                                      "column per auxiliary task; or explicit groups of auxiliary task names")


class AuxNasSearchConfig(BaseModel):
    """`search:` section: the schedule of `train/auxnas.py` and the decision rule."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(default=4, ge=1, description="epochs of alternating weight/architecture steps")
    finetune_epochs: int = Field(default=0, ge=0, description="deployed-mode fine-tuning epochs after the search")
    l1_weight: float = Field(default=1000.0, ge=0, description="lambda_max of the aux->primary L1 penalty")
    l1_window: tuple[float, float] = Field(default=(0.5, 0.8), description="ramp start/end, fractions of the search")
    threshold: float = Field(default=0.01, gt=0, lt=1, description="link kept iff sigmoid(alpha) >= threshold")
    init_a2p: float = Field(default=0.5, gt=0, lt=1, description="initial sigmoid(alpha^P) (aux -> primary)")
    init_p2a: float = Field(default=0.5, gt=0, lt=1, description="initial sigmoid(alpha^A) (primary -> aux)")

    @field_validator("l1_window")
    @classmethod
    def _window(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= v[0] < v[1] <= 1.0:
            raise ValueError(f"l1_window must satisfy 0 <= start < end <= 1, got {list(v)}")
        return v

    def l1_lambda(self, progress: float) -> float:
        """lambda(t) of Eq. 5: 0 before the window, l1_weight after it, linear inside."""
        t0, t1 = self.l1_window
        if progress <= t0:
            return 0.0
        if progress >= t1:
            return self.l1_weight
        return self.l1_weight * (progress - t0) / (t1 - t0)


# -- blocks ------------------------------------------------------------------------------------------------------
class ResBlock(nn.Module):
    """Deeplab-ResNet BasicBlock: relu(ds(x) + body(x)), ds the identity unless the slot needs a shortcut."""

    def __init__(self, slot: BlockSlot) -> None:
        super().__init__()
        self.body = BlockBody(slot)
        self.ds = make_ds(slot)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu((self.ds(x) if self.ds is not None else x) + self.body(x))


class Column(nn.Module):
    """One Deeplab-ResNet column cut at its 4 stages (segments), so fusions can sit between them."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        slots = block_slots(cfg)
        self.stem = Stem(cfg.in_channels, cfg.width)
        self.stages = nn.ModuleList(nn.Sequential(*[ResBlock(s) for s in slots if s.segment == i])
                                    for i in range(STAGES))
        self.channels = [cfg.width * 2**i for i in range(STAGES)]


class NddrFusion(nn.Module):
    """ReLU(BN(Conv1x1([x_self ; w_1 x_1 ; ...]))), no bias, identity on x_self at init (NDDR-CNN / MTL-NAS).

    x_self and every x_j are (N, C, h, w); `weights` holds the link weights w_j = sigmoid(alpha_j) (possibly
    masked to 0). The conv's input columns are [self, other_1, ..., other_n] in blocks of C."""

    def __init__(self, channels: int, others: int) -> None:
        super().__init__()
        self.channels, self.others = channels, others
        self.conv = nn.Conv2d(channels * (1 + others), channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, :channels, 0, 0].copy_(torch.eye(channels))

    def forward(self, x_self: torch.Tensor, others: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
        inputs = [x_self] + [weights[j] * x for j, x in enumerate(others)]
        return F.relu(self.bn(self.conv(torch.cat(inputs, dim=1))))


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def link_name(stage: int, aux: int, direction: Literal["a2p", "p2a"]) -> str:
    """Plan key of a link; `stage` is 0-based in code, 1-based in names (ResNet layer1..layer4)."""
    return f"stage{stage + 1}/aux{aux}->primary" if direction == "a2p" else f"stage{stage + 1}/primary->aux{aux}"


# -- the supernet ------------------------------------------------------------------------------------------------
class AuxNasSupernet(Supernet):
    """Primary column + auxiliary column(s) with bidirectional fusions after each stage.

    forward(image (N,3,H,W)) -> {task: raw head output}: primary tasks from the primary column, auxiliary tasks from
    their auxiliary column. Search mode uses sigmoid(alpha) on every link; deployed mode multiplies removed links by
    exactly 0 (every column still runs, so auxiliary outputs stay available for evaluation)."""

    family = "auxnas"
    model_config_cls = AuxNasModelConfig
    search_config_cls = AuxNasSearchConfig

    def __init__(self, tasks: list[TaskSpec], model_cfg: AuxNasModelConfig, search_cfg: AuxNasSearchConfig) -> None:
        super().__init__(tasks)
        self.model_cfg, self.search_cfg = model_cfg, search_cfg
        self.primary_tasks, self.aux_groups = _resolve_roles(self.task_names, model_cfg)
        n_aux = len(self.aux_groups)
        self.primary = Column(model_cfg)
        self.aux = nn.ModuleList(Column(model_cfg) for _ in range(n_aux))
        channels = self.primary.channels
        self.primary_fusions = nn.ModuleList(NddrFusion(c, n_aux) for c in channels)
        self.aux_fusions = nn.ModuleList(nn.ModuleList(NddrFusion(c, 1) for c in channels) for _ in range(n_aux))
        self.heads = nn.ModuleDict({t.name: make_head(t, channels[-1], model_cfg.head, model_cfg.head_hidden)
                                    for t in tasks})
        # alpha[s, j]: stage s, auxiliary column j. P = aux -> primary, A = primary -> aux (paper notation).
        self.alpha_p = nn.Parameter(torch.full((STAGES, n_aux), _logit(search_cfg.init_a2p)))
        self.alpha_a = nn.Parameter(torch.full((STAGES, n_aux), _logit(search_cfg.init_p2a)))
        # Fixed decisions live in buffers so that a resumed or reloaded model deploys the same links.
        self.register_buffer("kept_p", torch.ones(STAGES, n_aux))
        self.register_buffer("kept_a", torch.ones(STAGES, n_aux))
        self.register_buffer("frozen", torch.zeros((), dtype=torch.bool))
        self._rule = DEFAULT_RULE
        self._soft = False

    # -- forward ------------------------------------------------------------------------------------------------
    @property
    def threshold(self) -> float:
        return self.search_cfg.threshold

    def rule_kept(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Kept masks (float 0/1, (4, n_aux)) by the threshold rule on the current alphas."""
        with torch.no_grad():
            return ((torch.sigmoid(self.alpha_p) >= self.threshold).float(),
                    (torch.sigmoid(self.alpha_a) >= self.threshold).float())

    def kept_masks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The masks the deployed mode uses: the fixed decisions if set, else the rule on the current alphas."""
        return (self.kept_p, self.kept_a) if bool(self.frozen) else self.rule_kept()

    def link_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(w^P, w^A), each (4, n_aux): sigmoid(alpha), times the kept masks when deployed (unless soft_links)."""
        wp, wa = torch.sigmoid(self.alpha_p), torch.sigmoid(self.alpha_a)
        if self.deployed and not self._soft:
            kp, ka = self.kept_masks()
            wp, wa = wp * kp, wa * ka
        return wp, wa

    @contextlib.contextmanager
    def soft_links(self) -> Iterator[AuxNasSupernet]:
        """Run every link at its real weight sigmoid(alpha), even removed ones and even when deployed: the network
        the search actually trained, against which removing small links is an approximation."""
        previous, self._soft = self._soft, True
        try:
            yield self
        finally:
            self._soft = previous

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        wp, wa = self.link_weights()
        x = self.primary.stem(image)
        ys = [col.stem(image) for col in self.aux]
        for s in range(STAGES):
            x_pre = self.primary.stages[s](x)
            y_pre = [col.stages[s](y) for col, y in zip(self.aux, ys, strict=True)]
            x = self.primary_fusions[s](x_pre, y_pre, wp[s])
            ys = [self.aux_fusions[j][s](y_pre[j], [x_pre], wa[s, j:j + 1]) for j in range(len(self.aux))]
        size = image.shape[-2:]
        out = {t: self.heads[t](x, size) for t in self.primary_tasks}
        for j, group in enumerate(self.aux_groups):
            out.update({t: self.heads[t](ys[j], size) for t in group})
        return {t: out[t] for t in self.task_names}

    def public_forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """The public code's inference: every column and every fusion runs; removed links are multiplied by 0
        (`set_zero_connectivity`), never skipped. This is the deployed forward, which is exactly that."""
        return self.forward(image)

    # -- search terms -------------------------------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha_p, self.alpha_a]

    def primary_parameters(self) -> list[nn.Parameter]:
        """The weights a deployment with every aux->primary link removed keeps: primary column, fusions, heads."""
        mods = [self.primary, self.primary_fusions] + [self.heads[t] for t in self.primary_tasks]
        return [p for m in mods for p in m.parameters()]

    def regularizer(self, progress: float) -> torch.Tensor:
        """R(t) = lambda(t) * mean(sigmoid(alpha^P)) (Eq. 5); zero before the ramp window."""
        lam = self.search_cfg.l1_lambda(progress)
        if lam == 0.0:
            return torch.zeros((), device=self.alpha_p.device)
        return lam * torch.sigmoid(self.alpha_p).mean()

    # -- decisions ----------------------------------------------------------------------------------------------
    def link_names(self) -> list[str]:
        return list(self.link_index())

    def link_index(self) -> dict[str, tuple[str, int, int]]:
        """Plan key -> (direction "a2p"|"p2a", stage 0-based, aux column)."""
        n_aux = len(self.aux_groups)
        return {link_name(s, j, d): (d, s, j) for d in ("a2p", "p2a") for s in range(STAGES) for j in range(n_aux)}

    def decisions(self) -> dict[str, Any]:
        with torch.no_grad():
            wp, wa = torch.sigmoid(self.alpha_p).cpu(), torch.sigmoid(self.alpha_a).cpu()
        kp, ka = (m.cpu() for m in self.kept_masks())
        links = {}
        for name, (d, s, j) in self.link_index().items():  # a2p links first, then p2a, stage-major
            w, k = (wp, kp) if d == "a2p" else (wa, ka)
            links[name] = {"weight": float(w[s, j]), "kept": bool(k[s, j] > 0)}
        return {"rule": self._rule if bool(self.frozen) else DEFAULT_RULE, "threshold": self.threshold,
                "primary": list(self.primary_tasks), "aux_networks": [list(g) for g in self.aux_groups],
                "links": links}

    def parse_decisions(self, decisions: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate a decisions dict (e.g. an edited plan) against this model; returns the kept masks.
        Raises a one-line DeploymtlError naming the first problem."""
        if not isinstance(decisions, dict) or not isinstance(decisions.get("links"), dict):
            raise DeploymtlError("auxnas plan: decisions must be a mapping with a 'links' mapping",
                                 hint="expected {'rule', 'threshold', 'links': {'stage1/aux0->primary': ...}}")
        for key in ("primary", "aux_networks"):
            if key in decisions and decisions[key] != (self.primary_tasks if key == "primary"
                                                       else [list(g) for g in self.aux_groups]):
                raise DeploymtlError(f"auxnas plan: '{key}' is {decisions[key]!r} but the checkpoint's model has "
                                     f"{self.primary_tasks if key == 'primary' else self.aux_groups!r}",
                                     hint="roles are fixed at training time; edit links' 'kept' instead")
        index, links = self.link_index(), decisions["links"]
        unknown = sorted(set(links) - set(index))
        if unknown:
            raise DeploymtlError(f"auxnas plan: unknown link '{unknown[0]}'",
                                 hint=f"expected keys like {self.link_names()[0]}")
        missing = [k for k in self.link_names() if k not in links]
        if missing:
            raise DeploymtlError(f"auxnas plan: link '{missing[0]}' is missing", hint="every link needs an entry")
        wp, wa = (torch.sigmoid(a.detach()).cpu() for a in (self.alpha_p, self.alpha_a))
        kp, ka = torch.zeros_like(wp), torch.zeros_like(wa)
        for name, (d, s, j) in index.items():
            entry = links[name]
            if not isinstance(entry, dict) or not isinstance(entry.get("kept"), bool):
                raise DeploymtlError(f"auxnas plan: link '{name}' needs a boolean 'kept', got {entry!r}")
            weight = entry.get("weight")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= weight <= 1.0:
                raise DeploymtlError(f"auxnas plan: link '{name}' weight must be a number in [0, 1], got {weight!r}")
            actual = float((wp if d == "a2p" else wa)[s, j])
            if abs(actual - weight) > 1e-5 + 1e-4 * actual:
                raise DeploymtlError(f"auxnas plan: link '{name}' weight {weight:.6g} does not match the checkpoint's "
                                     f"sigmoid(alpha) {actual:.6g}",
                                     hint="weights are the trained alphas; set 'kept' to remove or keep a link")
            (kp if d == "a2p" else ka)[s, j] = float(entry["kept"])
        return kp, ka

    def set_decisions(self, decisions: dict[str, Any]) -> None:
        kp, ka = self.parse_decisions(decisions)
        self.kept_p.copy_(kp)
        self.kept_a.copy_(ka)
        self.frozen.fill_(True)
        rule = decisions.get("rule")
        self._rule = rule if isinstance(rule, str) and rule else DEFAULT_RULE

    def aux_depths(self, kept_p: torch.Tensor) -> list[int]:
        """Per auxiliary column, how many stages the deployed primary outputs need (0 = none): a kept aux->primary
        link at stage s needs the column's stem, stages 1..s and fusions 1..s-1."""
        return [max((s + 1 for s in range(STAGES) if kept_p[s, j] > 0), default=0) for j in range(len(self.aux))]

    def decision_summary(self) -> dict[str, Any]:
        with torch.no_grad():
            wp, wa = torch.sigmoid(self.alpha_p), torch.sigmoid(self.alpha_a)
        kp, ka = self.kept_masks()
        return {
            "threshold": self.threshold, "primary": list(self.primary_tasks),
            "aux_networks": [list(g) for g in self.aux_groups],
            "aux_to_primary": {"kept": int(kp.sum()), "removed": int((kp == 0).sum()),
                               "max_weight": float(wp.max())},
            "primary_to_aux": {"kept": int(ka.sum()), "removed": int((ka == 0).sum()),
                               "mean_weight": float(wa.mean())},
            "aux_columns_needed_at_inference": sum(d > 0 for d in self.aux_depths(kp)),
        }


def _resolve_roles(names: list[str], cfg: AuxNasModelConfig) -> tuple[list[str], list[list[str]]]:
    """(primary tasks, auxiliary task groups, one per auxiliary column), checked against the recipe's tasks."""
    primary = list(cfg.primary) if cfg.primary else [names[0]]
    for t in primary:
        if t not in names:
            raise DeploymtlError(f"auxnas: model.primary names unknown task '{t}'", hint=f"expected one of {names}")
    if len(set(primary)) != len(primary):
        raise DeploymtlError(f"auxnas: model.primary repeats a task: {primary}")
    aux = [t for t in names if t not in primary]
    if not aux:
        raise DeploymtlError("auxnas: every task is primary, Aux-NAS needs at least one auxiliary task",
                             hint="list fewer tasks in model.primary")
    if cfg.aux_networks == "shared":
        return primary, [aux]
    if cfg.aux_networks == "per_task":
        return primary, [[t] for t in aux]
    groups = [list(g) for g in cfg.aux_networks]
    flat = [t for g in groups for t in g]
    if any(not g for g in groups) or sorted(flat) != sorted(aux):
        raise DeploymtlError(f"auxnas: model.aux_networks {groups} must split the auxiliary tasks {aux} into "
                             "non-empty groups, each task exactly once")
    return primary, groups
