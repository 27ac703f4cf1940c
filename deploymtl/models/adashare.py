"""AdaShare: per-task layer skipping on a shared Deeplab-ResNet (Sun, Panda, Feris, Saenko, "AdaShare: Learning
What To Share For Efficient Deep Multi-Task Learning", NeurIPS 2020; public code sunxm2357/AdaShare).
Facts and conventions: docs/methods.md, AdaShare.

Notation: t a task, l = 0..L-1 a residual block, alpha_t in R^{L x 2} the task's policy logits (column 0 execute,
column 1 skip), tau the Gumbel-softmax temperature.

- Policy sample (paper Sec. 3, Gumbel-softmax relaxation of u_{t,l} ~ Bernoulli(softmax(alpha_{t,l})[0])):
      p_{t,l} = softmax((alpha_{t,l} + g) / tau),  g ~ Gumbel(0, 1)^2,   p_{t,l} in R^2, rows sum to 1.
  Curriculum (public code): only the last k blocks are learned, blocks l < L-k use p = (1, 0) (executed);
  k = min(L, start + step * (epoch // speed)) grows over the policy epochs.
- Soft block (search):  r = ds(x) if the block has a shortcut ds else x;  f = relu(r + body(x));
      x' = p0 * f + p1 * r.  One backbone pass per task.
- Hard block (deployed): x' = f if policy_{t,l} = 1 else r -- a skipped first-of-segment block STILL applies ds.
- Sparsity (public code, `get_sparsity_loss2`):
      L_sparse = sum_t 2 * mean_{l in last k} [ w_l * -log softmax(alpha_{t,l})[skip] ],   w_l = (l+1)/L.
  With k = L (no curriculum, or once it has grown) this is exactly the formula of docs/methods.md; during the curriculum
  the public code restricts it to the learned blocks, so blocks forced to execute are not pushed towards skip.
- Sharing (public code, `get_hamming_loss`):  L_share = sum_{i<j} sum_l w_l |alpha_{i,l,0} - alpha_{j,l,0}|.
- Policy objective: sum_t lambda_t L_t + sparsity_weight * L_sparse + sharing_weight * L_share.

The test-time policy is chosen by an explicit rule (`decision_rule`): "argmax" (execute iff
softmax(alpha)[0] > 0.5; ties execute) or "sample" (the public code's rule: execute with probability
softmax(alpha)[0], drawn with `sample_seed` so it is reproducible).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..errors import DeploymtlError
from ..tasks import TaskSpec
from .backbone import BackboneConfig, BlockBody, BlockSlot, block_slots, make_ds
from .base import Supernet
from .layers import Stem, make_head

Stage = Literal["warmup", "search"]


class AdaShareModelConfig(BackboneConfig):
    """The recipe's `model:` section: the shared Deeplab-ResNet and the heads (see BackboneConfig)."""


class AdaShareSearchConfig(BaseModel):
    """The recipe's `search:` section: the three stages and the policy losses."""

    model_config = ConfigDict(extra="forbid")

    warmup_epochs: int = Field(default=2, ge=0, description="all blocks executed, weights only")
    policy_epochs: int = Field(default=4, ge=0, description="alternating weight / policy epochs")
    retrain_epochs: int = Field(default=4, ge=0, description="re-train from scratch with the fixed policy")
    init_temperature: float = Field(default=5.0, gt=0)
    temperature_decay: float = Field(default=0.965, gt=0, le=1, description="x after each policy epoch")
    sparsity_weight: float = Field(default=0.001, ge=0, description="public code reg_w")
    sharing_weight: float = Field(default=0.05, ge=0, description="public code reg_w_hamming")
    curriculum: bool = True
    curriculum_start: int = Field(default=1, ge=1, description="blocks learned in the first policy epoch")
    curriculum_step: int = Field(default=1, ge=1, description="blocks added per curriculum increase")
    curriculum_speed: int = Field(default=1, ge=1, description="policy epochs between increases (public: 3)")
    decision_rule: Literal["argmax", "sample"] = "argmax"
    sample_seed: int = 0
    init_logits: tuple[float, float] = Field(
        default=(0.5, 0.5), description="initial (execute, skip) logits of every block (public code: 'equal')")


class AdaShareBlock(nn.Module):
    """One selectable residual block: `body` (conv-bn-relu-conv-bn) and the optional shortcut `ds`."""

    def __init__(self, slot: BlockSlot) -> None:
        super().__init__()
        self.slot = slot
        self.body = BlockBody(slot)
        self.ds = make_ds(slot)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.ds(x) if self.ds is not None else x

    def execute(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return F.relu(residual + self.body(x))


def block_name(slot: BlockSlot, slots: list[BlockSlot]) -> str:
    """Human name of a block in plans and pictures: `s{segment}b{index within segment}`."""
    first = next(s.index for s in slots if s.segment == slot.segment)
    return f"s{slot.segment}b{slot.index - first}"


class AdaShareSupernet(Supernet):
    """Shared stem + L selectable blocks + one head per task; per-task policy logits (L, 2).

    `forward(image (N,C,H,W)) -> {task: raw head output}`; mode:
      deployed       -> hard policy buffer (T, L), skipped block = residual ("masked": computed, then selected);
      stage "warmup" -> every block executed, one backbone pass shared by all tasks;
      stage "search" -> Gumbel-softmax soft policy per task (curriculum applied), one backbone pass per task.
    Temperature, curriculum k and the hard policy are buffers, so they resume with the weights.
    """

    family = "adashare"
    model_config_cls = AdaShareModelConfig
    search_config_cls = AdaShareSearchConfig

    def __init__(self, tasks: list[TaskSpec], model_cfg: AdaShareModelConfig, search_cfg: AdaShareSearchConfig
                 ) -> None:
        super().__init__(tasks)
        self.model_cfg = model_cfg
        self.search_cfg = search_cfg
        self.slots = block_slots(model_cfg)
        self.block_names = [block_name(s, self.slots) for s in self.slots]
        self.stem = Stem(model_cfg.in_channels, model_cfg.width)
        self.blocks = nn.ModuleList(AdaShareBlock(s) for s in self.slots)
        self.heads = nn.ModuleDict({t.name: make_head(t, self.slots[-1].cout, model_cfg.head, model_cfg.head_hidden)
                                    for t in tasks})
        n = len(self.slots)
        init = torch.tensor(search_cfg.init_logits, dtype=torch.float32).expand(n, 2).clone()
        self.logits = nn.ParameterDict({t.name: nn.Parameter(init.clone()) for t in tasks})
        self.register_buffer("temperature", torch.tensor(float(search_cfg.init_temperature)))
        self.register_buffer("curriculum_k", torch.tensor(self._curriculum_k(0), dtype=torch.int64))
        self.register_buffer("policy", torch.ones(len(tasks), n, dtype=torch.int64))
        self.stage: Stage = "search"
        self.rule: str = search_cfg.decision_rule

    @property
    def num_blocks(self) -> int:
        return len(self.slots)

    def set_stage(self, stage: Stage) -> AdaShareSupernet:
        self.stage = stage
        return self

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.logits[t] for t in self.task_names]

    # -- search state -------------------------------------------------------------------------------------
    def _curriculum_k(self, policy_epoch: int) -> int:
        c = self.search_cfg
        if not c.curriculum:
            return self.num_blocks
        return min(self.num_blocks, c.curriculum_start + c.curriculum_step * (policy_epoch // c.curriculum_speed))

    def start_policy_learning(self) -> None:
        """Temperature and curriculum at the first policy epoch."""
        self.temperature.fill_(self.search_cfg.init_temperature)
        self.curriculum_k.fill_(self._curriculum_k(0))

    def end_policy_epoch(self, epoch: int) -> None:
        """After policy epoch `epoch`: tau *= decay, k for the next epoch, hard policy refreshed by the rule
        (so validation judges what would be deployed now)."""
        self.temperature.mul_(self.search_cfg.temperature_decay)
        self.curriculum_k.fill_(self._curriculum_k(epoch + 1))
        self.freeze_policy()

    @torch.no_grad()
    def reinit_weights(self, seed: int) -> None:
        """Fresh weights (and BN statistics) for the re-train stage; policy logits and buffers are kept."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for m in self.modules():
                if m is not self and hasattr(m, "reset_parameters"):
                    m.reset_parameters()

    # -- forward --------------------------------------------------------------------------------------------
    def sample_policy(self, task: str) -> torch.Tensor:
        """Soft policy (L, 2) of one task: Gumbel-softmax at the current temperature, curriculum applied."""
        soft = F.gumbel_softmax(self.logits[task], tau=float(self.temperature), hard=False)
        frozen = self.frozen_blocks
        if frozen > 0:
            forced = torch.zeros(frozen, 2, device=soft.device, dtype=soft.dtype)
            forced[:, 0] = 1.0
            soft = torch.cat([forced, soft[frozen:]], dim=0)
        return soft

    @property
    def frozen_blocks(self) -> int:
        """Leading blocks the curriculum forces to execute (L - k)."""
        return self.num_blocks - int(self.curriculum_k)

    def _soft_pass(self, x: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
        frozen = self.frozen_blocks
        for j, block in enumerate(self.blocks):
            residual = block.residual(x)
            if j < frozen:  # forced (1, 0): the blend would be the executed branch exactly
                x = block.execute(x, residual)
            else:
                x = policy[j, 0] * block.execute(x, residual) + policy[j, 1] * residual
        return x

    def _masked_pass(self, x: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
        """Deployed computation: every block computed, then the branch the hard policy names is selected."""
        for j, block in enumerate(self.blocks):
            residual = block.residual(x)
            x = torch.where(policy[j].bool(), block.execute(x, residual), residual)
        return x

    def _warmup_pass(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block.execute(x, block.residual(x))
        return x

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        size = image.shape[-2:]
        stem = self.stem(image)
        shared = self._warmup_pass(stem) if not self.deployed and self.stage == "warmup" else None
        out = {}
        for i, task in enumerate(self.task_names):
            if self.deployed:
                feat = self._masked_pass(stem, self.policy[i])
            elif shared is not None:
                feat = shared
            else:
                feat = self._soft_pass(stem, self.sample_policy(task))
            out[task] = self.heads[task](feat, size)
        return out

    def public_forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """The public code's inference (`Deeplab_ResNet_Backbone.forward` with a fixed policy): per task the
        stem and every block, both branches, blended with the 0/1 policy: x = f * p0 + r * p1."""
        size = image.shape[-2:]
        out = {}
        for i, task in enumerate(self.task_names):
            x = self.stem(image)
            p = self.policy[i].to(image.dtype)
            for j, block in enumerate(self.blocks):
                residual = block.residual(x)
                x = block.execute(x, residual) * p[j] + residual * (1.0 - p[j])
            out[task] = self.heads[task](x, size)
        return out

    # -- losses ---------------------------------------------------------------------------------------------
    def layer_weights(self) -> torch.Tensor:
        """w_l = (l+1)/L, shape (L,)."""
        n = self.num_blocks
        return torch.arange(1, n + 1, dtype=torch.float32, device=self.temperature.device) / n

    def sparsity_loss(self) -> torch.Tensor:
        """sum_t 2 * mean_{l in last k} [w_l * -log softmax(alpha_{t,l})[skip]]."""
        k = int(self.curriculum_k)
        w = self.layer_weights()[-k:]
        total = torch.zeros((), device=w.device)
        for t in self.task_names:
            nll_skip = -F.log_softmax(self.logits[t], dim=-1)[-k:, 1]
            total = total + 2.0 * (w * nll_skip).mean()
        return total

    def sharing_loss(self) -> torch.Tensor:
        """sum_{i<j} sum_l w_l |alpha_{i,l,0} - alpha_{j,l,0}|."""
        w = self.layer_weights()
        names = self.task_names
        total = torch.zeros((), device=w.device)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                total = total + (w * (self.logits[a][:, 0] - self.logits[b][:, 0]).abs()).sum()
        return total

    def regularizer(self, progress: float) -> torch.Tensor:
        c = self.search_cfg
        return c.sparsity_weight * self.sparsity_loss() + c.sharing_weight * self.sharing_loss()

    # -- decisions ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def exec_probabilities(self) -> torch.Tensor:
        """softmax(alpha_t)[execute] per task and block, shape (T, L)."""
        return torch.stack([F.softmax(self.logits[t].detach().float(), dim=-1)[:, 0] for t in self.task_names])

    @torch.no_grad()
    def freeze_policy(self) -> None:
        """Fix the hard policy buffer from the logits with the configured rule."""
        probs = self.exec_probabilities().cpu()
        if self.search_cfg.decision_rule == "argmax":
            hard = (probs >= 0.5).long()
        else:
            gen = torch.Generator().manual_seed(self.search_cfg.sample_seed)
            hard = (torch.rand(probs.shape, generator=gen) < probs).long()
        self.policy.copy_(hard.to(self.policy.device))
        self.rule = self.search_cfg.decision_rule

    def decisions(self) -> dict[str, Any]:
        """{"rule", "blocks": [names], "policy": {task: [1 execute / 0 skip per block]},
        "logits": {task: [[alpha_exec, alpha_skip], ...]}, "probs": {task: [[p_exec, p_skip], ...]},
        "temperature"}. An imported policy (rule "imported") has no logits of its own: the public re-train
        checkpoint holds the initial ones (docs/methods.md), so only the rule, blocks and policy are given."""
        policy = {t: [int(v) for v in self.policy[i].tolist()] for i, t in enumerate(self.task_names)}
        if self.rule == "imported":
            return {"rule": self.rule, "blocks": list(self.block_names), "policy": policy}
        probs = {t: F.softmax(self.logits[t].detach().float().cpu(), dim=-1) for t in self.task_names}
        return {
            "rule": self.rule,
            "blocks": list(self.block_names),
            "policy": policy,
            "logits": {t: [[round(float(a), 6) for a in row] for row in self.logits[t].detach().cpu().tolist()]
                       for t in self.task_names},
            "probs": {t: [[round(float(a), 6) for a in row] for row in probs[t].tolist()] for t in self.task_names},
            "temperature": round(float(self.temperature), 6),
        }

    def set_decisions(self, decisions: dict[str, Any]) -> None:
        """Fix the hard policy of every task named in `decisions["policy"]` (others keep theirs)."""
        check_decisions(decisions, self.task_names, self.block_names, required=[])
        for t, row in decisions["policy"].items():
            self.policy[self.task_names.index(t)] = torch.tensor([int(v) for v in row], dtype=torch.int64)
        self.rule = str(decisions.get("rule", "manual"))

    def decision_summary(self) -> dict[str, Any]:
        """Blocks executed per task, blocks run by every / no task, and the depth all tasks share."""
        pol = {t: self.policy[i].tolist() for i, t in enumerate(self.task_names)}
        cols = list(zip(*pol.values(), strict=True))
        return {
            "rule": self.rule,
            "blocks": self.num_blocks,
            "executed": {t: int(sum(p)) for t, p in pol.items()},
            "executed_by_all": sum(all(c) for c in cols),
            "executed_by_none": sum(not any(c) for c in cols),
            "shared_prefix": shared_prefix(list(pol.values())),
            "distinct_policies": len({tuple(p) for p in pol.values()}),
        }


def shared_prefix(policies: list[list[int]]) -> int:
    """Number of leading blocks on which all the given policies agree (the depth they can share)."""
    depth = 0
    for column in zip(*policies, strict=True):
        if len(set(column)) != 1:
            break
        depth += 1
    return depth


def check_decisions(decisions: Any, task_names: list[str], block_names: list[str], required: list[str]) -> None:
    """Validate an AdaShare plan (possibly edited by a person); one-line DeploymtlError naming what is wrong.

    `decisions["policy"]` maps task -> list of L values in {0, 1}; every task in `required` must be present;
    an optional `decisions["blocks"]` must list the model's block names in order."""
    if not isinstance(decisions, dict) or not isinstance(decisions.get("policy"), dict):
        raise DeploymtlError("AdaShare plan: missing 'policy' mapping",
                             hint="expected {'policy': {task: [1 or 0 per block]}} as written by deploymtl train")
    blocks = decisions.get("blocks")
    if blocks is not None:
        if not isinstance(blocks, list) or blocks != block_names:
            unknown = [b for b in blocks if b not in block_names] if isinstance(blocks, list) else blocks
            raise DeploymtlError(f"AdaShare plan: 'blocks' {unknown or blocks} does not match the model's blocks",
                                 hint=f"expected {block_names}")
    policy = decisions["policy"]
    for task in policy:
        if task not in task_names:
            raise DeploymtlError(f"AdaShare plan: unknown task '{task}' in policy",
                                 hint=f"expected one of {', '.join(task_names)}")
    for task in required:
        if task not in policy:
            raise DeploymtlError(f"AdaShare plan: no policy for task '{task}'",
                                 hint=f"expected policy entries for {', '.join(required)}")
    for task, row in policy.items():
        if not isinstance(row, list) or len(row) != len(block_names):
            got = len(row) if isinstance(row, list) else type(row).__name__
            raise DeploymtlError(f"AdaShare plan: policy of task '{task}' has {got} entries",
                                 hint=f"expected a list of {len(block_names)} values, one per block")
        for i, v in enumerate(row):
            if not isinstance(v, int) or v not in (0, 1):
                raise DeploymtlError(f"AdaShare plan: policy of task '{task}' block {block_names[i]} is {v!r}",
                                     hint="expected 1 (execute) or 0 (skip)")
