"""Aux-NAS search schedule (Gao et al., ICLR 2024, Sec. 3.3; public code `trainer/Trainer.py: nas_train`).

1. *search* (`search.epochs`): each iteration takes a weight step (task losses, Adam on every weight) on one half
   of the training split and an architecture step (task losses + the ramped L1 penalty of Eq. 5, Adam on the
   alphas) on the other half. The trainer's `progress` is the fraction of the search done, so the L1 weight is 0
   for the first 50%, ramps to `l1_weight` by 80% and stays there.
2. The decisions are frozen by the threshold rule (removed links become exactly 0 in the deployed mode).
3. *finetune* (`search.finetune_epochs`, optional, not in the paper): steps on the primary tasks' losses over the
   whole training split in the deployed mode, updating only the primary column, its fusions and heads, so that
   what is deployed adapts to the removal of the last, small aux->primary links.
"""

from __future__ import annotations

import torch

from ..models.auxnas import AuxNasSupernet
from ..models.base import Supernet
from ..tasks import task_loss
from .trainer import Phase, Trainer, multitask_loss


def weight_loss(model: Supernet, batch: dict[str, torch.Tensor], progress: float) -> torch.Tensor:
    """Task losses only: the L1 term depends on the alphas alone, which the weight step does not update."""
    return multitask_loss(model, model(batch["image"]), batch)[0]


def arch_loss(model: Supernet, batch: dict[str, torch.Tensor], progress: float) -> torch.Tensor:
    """Task losses + lambda(progress) * mean(sigmoid(alpha^P))."""
    return multitask_loss(model, model(batch["image"]), batch)[0] + model.regularizer(progress)


def primary_loss(model: Supernet, batch: dict[str, torch.Tensor], progress: float) -> torch.Tensor:
    """Losses of the primary tasks (the deployed fine-tune)."""
    out = model(batch["image"])
    return sum((t.loss_weight * task_loss(t, out[t.name], batch[t.name]) for t in model.tasks
                if t.name in model.primary_tasks), torch.zeros((), device=batch["image"].device))


def search(trainer: Trainer) -> None:
    model = trainer.model
    if not isinstance(model, AuxNasSupernet):
        raise TypeError(f"auxnas schedule got a {type(model).__name__}")  # registry bug, not user input
    cfg = model.search_cfg
    weights_half, arch_half = trainer.split_train()
    trainer.run_stage("search", cfg.epochs, [
        Phase("weights", trainer.weight_optimizer(), weights_half, weight_loss),
        Phase("arch", trainer.arch_optimizer(), arch_half, arch_loss),
    ], deployed=False)
    model.set_decisions(model.decisions())
    if cfg.finetune_epochs:
        # Only what is deployed trains: the auxiliary columns keep their searched weights (and metrics), which
        # the primary column no longer reads once its links are exactly 0.
        trainer.run_stage("finetune", cfg.finetune_epochs, [
            Phase("primary", trainer.weight_optimizer(model.primary_parameters()), trainer.data["train"],
                  primary_loss),
        ], deployed=True)
