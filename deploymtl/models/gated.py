"""GatedMTL: per-channel gates between shared and task-specific features (docs/methods.md, GatedMTL).

GatedMTL (ICLR 2024 submission; later arXiv 2402.16848 "InterroGate"; no public code). Every residual block
slot l of the Deeplab-ResNet (`models/backbone.py`) is a gated layer holding a shared branch Psi^l and one
branch Phi_t^l per task t. With T tasks and C_l output channels at layer l:

    psi^l     = F(psi'^{l-1}; Psi^l)                         shared features, (N, C_l, H, W)
    phi_t^l   = F(phi'_t^{l-1}; Phi_t^l)                     task features, (N, C_l, H, W)
    G_t^l     = 1[alpha_t^l > 0]                             binary per-channel gate, alpha_t^l of shape (C_l,)
    phi'_t^l  = G_t^l * phi_t^l + (1 - G_t^l) * psi^l        the blend (per channel)
    psi'^l    = sum_t softmax(beta^l)_t * phi'_t^l           shared input of layer l+1

Layer 1 takes the (shared) stem output for both inputs; the heads read phi'_t of the last layer, so the last
layer has no beta. `F` is the residual block `relu(ds(x) + body(x))` (`ds(x) = x` where the slot has none).

Training: G is binary in the forward pass; its gradient is sigmoid's (straight-through estimator,
`binary_gate`). The sparsity loss pulls task channels toward sharing with a hinge on each task's rate:

    L_s = lambda_s * sum_t sum_l max(0, mean_c sigmoid(alpha_t^l[c]) - tau_t)

Deployed mode uses fixed binary gates (buffers; rule "alpha>0", recorded in every plan) and still computes
every branch (the masked computation); `deploymtl.surgery.gated` removes what the gates do not read.
Task branches may start from single-task weights (`search.init_from`, a `SingleTaskNet` state dict).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..errors import DeploymtlError
from ..io import load_torch
from ..tasks import TaskSpec
from .backbone import BackboneConfig, BlockBody, BlockSlot, SingleTaskNet, block_slots, make_ds
from .base import Supernet
from .layers import Stem, make_head

DECISION_RULE = "alpha>0"


class GatedModelConfig(BackboneConfig):
    """`model:` section: the Deeplab-ResNet shape; every residual block slot becomes one gated layer."""


class GatedSearchConfig(BaseModel):
    """`search:` section of a GatedMTL recipe."""

    model_config = ConfigDict(extra="forbid")

    search_epochs: int = Field(default=4, ge=0, description="joint training of weights, gates and betas")
    finetune_epochs: int = Field(default=2, ge=0, description="weights only, gates fixed (deployed mode)")
    lambda_s: float = Field(default=1.0, ge=0, description="weight of the hinge sparsity loss")
    tau: float | dict[str, float] = Field(
        default=0.5, description="target rate of task-specific channels, one for all tasks or per task")
    gate_init: float = Field(default=1.0, description="initial gate logit alpha (> 0: start task-specific)")
    gate_init_std: float = Field(default=0.0, ge=0, description="std of gaussian noise added to gate_init")
    decision_rule: Literal["alpha>0"] = DECISION_RULE
    init_from: dict[str, str] | None = Field(
        default=None, description="{task: single-task checkpoint} to initialise that task's branches and head")

    def tau_for(self, tasks: list[str]) -> dict[str, float]:
        """Per-task target rates; every task needs one, and no unknown task may have one."""
        if not isinstance(self.tau, dict):
            rates = {t: float(self.tau) for t in tasks}
        else:
            unknown = sorted(set(self.tau) - set(tasks))
            missing = [t for t in tasks if t not in self.tau]
            if unknown or missing:
                raise DeploymtlError(f"search.tau: unknown tasks {unknown}, missing tasks {missing}",
                                     hint=f"expected one rate per task of {tasks} or a single number")
            rates = {t: float(self.tau[t]) for t in tasks}
        for t, r in rates.items():
            if not 0.0 <= r <= 1.0:
                raise DeploymtlError(f"search.tau for task '{t}' is {r}", hint="expected a rate in [0, 1]")
        return rates


def binary_gate(alpha: torch.Tensor) -> torch.Tensor:
    """G = 1[alpha > 0] in the forward pass, dG/dalpha = sigmoid'(alpha) in the backward pass.

    `hard + (soft - soft.detach())`: the bracket is exactly 0.0 in floating point, so the forward value is
    exactly binary and the gradient is sigmoid's (straight-through estimator)."""
    soft = torch.sigmoid(alpha)
    hard = (alpha > 0).to(alpha.dtype)
    return hard + (soft - soft.detach())


class GatedBlock(nn.Module):
    """One branch of a gated layer: the residual block `relu(ds(x) + body(x))`, (N, cin, H, W) ->
    (N, cout, H/stride, W/stride)."""

    def __init__(self, slot: BlockSlot) -> None:
        super().__init__()
        self.slot = slot
        self.body = BlockBody(slot)
        self.ds = make_ds(slot)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.ds(x) if self.ds is not None else x
        return F.relu(residual + self.body(x))


class GatedSupernet(Supernet):
    """Shared stem, then per layer a shared branch and one branch per task blended by per-channel gates."""

    family = "gated"
    model_config_cls = GatedModelConfig
    search_config_cls = GatedSearchConfig

    def __init__(self, tasks: list[TaskSpec], model_cfg: GatedModelConfig, search_cfg: GatedSearchConfig) -> None:
        super().__init__(tasks)
        self.model_cfg = model_cfg
        self.search_cfg = search_cfg
        names = self.task_names
        self.tau = search_cfg.tau_for(names)
        self.slots = block_slots(model_cfg)
        n_layers, n_tasks = len(self.slots), len(names)
        self.stem = Stem(model_cfg.in_channels, model_cfg.width)
        self.shared = nn.ModuleList(GatedBlock(s) for s in self.slots)
        self.specific = nn.ModuleDict({t: nn.ModuleList(GatedBlock(s) for s in self.slots) for t in names})
        cout = self.slots[-1].cout
        self.heads = nn.ModuleDict({t.name: make_head(t, cout, model_cfg.head, model_cfg.head_hidden)
                                    for t in tasks})
        # alpha[l]: (T, C_l) gate logits; beta: (L-1, T) mixing logits (the last layer feeds only the heads).
        self.alpha = nn.ParameterList(nn.Parameter(self._initial_alpha(n_tasks, s.cout)) for s in self.slots)
        self.beta = nn.Parameter(torch.zeros(max(n_layers - 1, 0), n_tasks))
        # Fixed gates of the deployed mode; until fixed, the deployed mode applies the rule to the live alphas.
        for layer, s in enumerate(self.slots):
            self.register_buffer(f"fixed_gate_{layer}", torch.zeros(n_tasks, s.cout))
        self.register_buffer("gates_fixed", torch.zeros((), dtype=torch.bool))
        if search_cfg.init_from:
            self._init_from(search_cfg.init_from)

    def _initial_alpha(self, n_tasks: int, channels: int) -> torch.Tensor:
        alpha = torch.full((n_tasks, channels), float(self.search_cfg.gate_init))
        if self.search_cfg.gate_init_std > 0:  # noise breaks the symmetry between channels of one layer
            alpha = alpha + self.search_cfg.gate_init_std * torch.randn(n_tasks, channels)
        return alpha

    # -- blocks and forward ------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.slots)

    def layer_gates(self, layer: int) -> torch.Tensor:
        """(T, C_l) gates of one layer: straight-through binary while searching, fixed when deployed."""
        if not self.deployed:
            return binary_gate(self.alpha[layer])
        if bool(self.gates_fixed):
            return getattr(self, f"fixed_gate_{layer}")
        return (self.alpha[layer] > 0).to(self.alpha[layer].dtype).detach()

    def mixing(self, layer: int) -> torch.Tensor:
        """(T,) softmax(beta^l): weights of the task blends in the shared input of layer l+1."""
        return torch.softmax(self.beta[layer], dim=0)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        names = self.task_names
        x = self.stem(image)
        psi_in, phi_in = x, dict.fromkeys(names, x)
        for layer in range(self.num_layers):
            psi = self.shared[layer](psi_in)
            gates = self.layer_gates(layer)
            blended = {}
            for i, t in enumerate(names):
                g = gates[i].view(1, -1, 1, 1)
                blended[t] = g * self.specific[t][layer](phi_in[t]) + (1 - g) * psi
            if layer < self.num_layers - 1:
                w = self.mixing(layer)
                psi_in = sum(w[i] * blended[t] for i, t in enumerate(names))
            phi_in = blended
        size = image.shape[-2:]
        return {t: self.heads[t](phi_in[t], size) for t in names}

    def arch_parameters(self) -> list[nn.Parameter]:
        return [*self.alpha, self.beta]

    def regularizer(self, progress: float) -> torch.Tensor:
        """Hinge sparsity loss `lambda_s * sum_t sum_l max(0, mean_c sigmoid(alpha_t^l) - tau_t)`; zero in
        deployed mode, where the gates are fixed and nothing is left for it to move."""
        if self.deployed or self.search_cfg.lambda_s == 0:
            return torch.zeros((), device=self.beta.device)
        tau = torch.tensor([self.tau[t] for t in self.task_names], device=self.beta.device)
        total = torch.zeros((), device=self.beta.device)
        for alpha in self.alpha:
            total = total + F.relu(torch.sigmoid(alpha).mean(dim=1) - tau).sum()
        return self.search_cfg.lambda_s * total

    # -- initialisation from single-task nets --------------------------------------------------------
    def _init_from(self, paths: dict[str, str]) -> None:
        """Task branches and head from each task's `SingleTaskNet` state dict; the shared stem and branches
        from the first listed task's (the paper initialises from single-task weights; which net the shared
        path copies is our choice)."""
        unknown = sorted(set(paths) - set(self.task_names))
        if unknown:
            raise DeploymtlError(f"search.init_from: unknown tasks {unknown}",
                                 hint=f"expected tasks of {self.task_names}")
        for i, (task, path) in enumerate(paths.items()):
            spec = next(t for t in self.tasks if t.name == task)
            data = load_torch(path, what=f"search.init_from.{task} checkpoint")
            state = data.get("state_dict", data) if isinstance(data, dict) else None
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise DeploymtlError(f"search.init_from.{task}: {path} holds no state dict",
                                     hint="expected a SingleTaskNet state dict (or {'state_dict': ...})")
            net = SingleTaskNet(spec, self.model_cfg)
            try:
                net.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise DeploymtlError(f"search.init_from.{task}: {path} does not match the model section "
                                     f"({str(exc).splitlines()[0][:120]})",
                                     hint="expected a SingleTaskNet of the same blocks, width and head") from None
            targets = [self.specific[task]] + ([self.shared] if i == 0 else [])
            for branches in targets:
                for layer, block in enumerate(branches):
                    block.body.load_state_dict(net.bodies[layer].state_dict())
                    if block.ds is not None:
                        block.ds.load_state_dict(net.ds[layer].state_dict())
            self.heads[task].load_state_dict(net.head.state_dict())
            if i == 0:
                self.stem.load_state_dict(net.stem.state_dict())

    # -- decisions ----------------------------------------------------------------------------------
    def current_gates(self) -> list[torch.Tensor]:
        """Per layer, the (T, C_l) 0/1 gates the deployed mode uses now."""
        if bool(self.gates_fixed):
            return [getattr(self, f"fixed_gate_{layer}").detach().clone() for layer in range(self.num_layers)]
        return [(a > 0).float().detach() for a in self.alpha]

    def fix_gates(self) -> None:
        """Freeze the rule's gates from the current alphas (start of the fine-tune)."""
        self.set_decisions(self.decisions())

    def decisions(self) -> dict[str, Any]:
        """{"rule": "alpha>0", "gates": {task: [[0/1 per channel] per layer]}} plus, for pictures only,
        "probabilities" (sigmoid(alpha)) and "mixing" (softmax(beta) per layer but the last)."""
        gates = self.current_gates()
        names = self.task_names
        with torch.no_grad():
            probs = [torch.sigmoid(a) for a in self.alpha]
            mixing = [self.mixing(layer) for layer in range(self.num_layers - 1)]
        return {
            "rule": self.search_cfg.decision_rule,
            "gates": {t: [[int(v) for v in g[i].tolist()] for g in gates] for i, t in enumerate(names)},
            "probabilities": {t: [[round(float(v), 4) for v in p[i]] for p in probs] for i, t in enumerate(names)},
            "mixing": {t: [round(float(w[i]), 4) for w in mixing] for i, t in enumerate(names)},
        }

    def gate_tensors(self, decisions: dict[str, Any]) -> list[torch.Tensor]:
        """Validate the plan's gates against this supernet and return them as (T, C_l) float tensors."""
        check_gates(self, decisions)
        g = decisions["gates"]
        return [torch.tensor([g[t][layer] for t in self.task_names], dtype=torch.float32)
                for layer in range(self.num_layers)]

    def set_decisions(self, decisions: dict[str, Any]) -> None:
        for layer, gates in enumerate(self.gate_tensors(decisions)):
            getattr(self, f"fixed_gate_{layer}").copy_(gates)
        self.gates_fixed.fill_(True)

    def decision_summary(self) -> dict[str, Any]:
        """Per layer and task, how many channels are task-specific (G = 1) and how many shared (G = 0)."""
        gates = self.current_gates()
        names = self.task_names
        layers = []
        for layer, g in enumerate(gates):
            spec = {t: int(g[i].sum()) for i, t in enumerate(names)}
            layers.append({"layer": layer, "channels": int(g.shape[1]), "specific": spec,
                           "shared": {t: int(g.shape[1]) - n for t, n in spec.items()}})
        total = sum(int(g.shape[1]) for g in gates)
        specific = {t: sum(layer["specific"][t] for layer in layers) for t in names}
        return {"rule": self.search_cfg.decision_rule, "layers": layers,
                "specific_fraction": {t: round(n / total, 4) for t, n in specific.items()},
                "specific_channels": sum(specific.values()), "gated_channels": total * len(names)}


def check_gates(model: GatedSupernet, decisions: Any) -> None:
    """One-line DeploymtlError unless `decisions["gates"]` gives every task of `model` one 0/1 list per layer
    of the layer's channel count (an edited plan must still describe this supernet)."""
    if not isinstance(decisions, dict) or not isinstance(decisions.get("gates"), dict):
        raise DeploymtlError("GatedMTL plan has no 'gates' mapping",
                             hint="expected {'rule': 'alpha>0', 'gates': {task: [[0/1 per channel] per layer]}}")
    rule = decisions.get("rule", DECISION_RULE)
    if rule != DECISION_RULE:
        raise DeploymtlError(f"GatedMTL plan rule is {rule!r}", hint=f"expected {DECISION_RULE!r}")
    gates = decisions["gates"]
    unknown = sorted(set(gates) - set(model.task_names))
    if unknown:
        raise DeploymtlError(f"GatedMTL plan has gates for unknown tasks {unknown}",
                             hint=f"expected tasks of {model.task_names}")
    for t in model.task_names:
        if t not in gates:
            raise DeploymtlError(f"GatedMTL plan has no gates for task '{t}'",
                                 hint="every task's gates shape the shared path, even for a task subset")
        layers = gates[t]
        if not isinstance(layers, list) or len(layers) != model.num_layers:
            got = len(layers) if isinstance(layers, list) else type(layers).__name__
            raise DeploymtlError(f"GatedMTL plan gates.{t}: {got} layers", hint=f"expected {model.num_layers}")
        for layer, (row, slot) in enumerate(zip(layers, model.slots, strict=True)):
            if not isinstance(row, list) or len(row) != slot.cout:
                got = len(row) if isinstance(row, list) else type(row).__name__
                raise DeploymtlError(f"GatedMTL plan gates.{t}[{layer}]: {got} channels",
                                     hint=f"expected a list of {slot.cout} values 0/1")
            bad = [v for v in row if not isinstance(v, (int, float)) or v not in (0, 1)]
            if bad:
                raise DeploymtlError(f"GatedMTL plan gates.{t}[{layer}] has value {bad[0]!r}",
                                     hint="expected 0 (shared) or 1 (task-specific)")
