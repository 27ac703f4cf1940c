"""AdaShare's schedule (docs/methods.md; public code `train.py` and `re-train.py`): three stages.

1. warm-up: every block executed, weights only, on the whole training split;
2. policy learning: per iteration a weight step on one half of the training split and a policy step on the
   other half (Gumbel-softmax policies, curriculum over the last k blocks, temperature x decay after each
   policy epoch); the policy step minimises task losses + sparsity + sharing;
3. the decisions are frozen with the recipe's explicit rule (argmax or seeded sample) and the network is
   re-trained from scratch (fresh weights) in deployed mode, i.e. exactly the computation the surgeon keeps.

Resumable: the temperature, curriculum and hard policy live in supernet buffers; the freeze and re-init happen
only before the first re-train epoch, so a resumed run continues the same re-train.
"""

from __future__ import annotations

import torch

from ..models.adashare import AdaShareSupernet
from ..models.base import Supernet
from .trainer import Phase, Trainer, multitask_loss

RETRAIN_SEED_OFFSET = 1  # re-train weights are drawn from seed + 1, not a replay of the warm-up init


def task_losses_only(model: Supernet, batch: dict[str, torch.Tensor], progress: float) -> torch.Tensor:
    """Weighted task losses (weight steps: the policy losses do not depend on the weights)."""
    return multitask_loss(model, model(batch["image"]), batch)[0]


def _started(trainer: Trainer, stage: str) -> bool:
    return any(name == stage for name, _ in trainer.done)


def search(trainer: Trainer) -> None:
    model = trainer.model
    if not isinstance(model, AdaShareSupernet):
        raise TypeError(f"AdaShare schedule got a {type(model).__name__}")  # our bug: registry mismatch
    cfg = model.search_cfg
    full = trainer.data["train"]

    if cfg.warmup_epochs:
        model.set_stage("warmup")
        trainer.run_stage("warmup", cfg.warmup_epochs,
                          [Phase("weights", trainer.weight_optimizer(), full, task_losses_only)])

    if cfg.policy_epochs:
        model.set_stage("search")
        if not _started(trainer, "policy"):
            model.start_policy_learning()
        weight_half, policy_half = trainer.split_train()
        trainer.run_stage("policy", cfg.policy_epochs, [
            Phase("weights", trainer.weight_optimizer(), weight_half, task_losses_only),
            Phase("policy", trainer.arch_optimizer(), policy_half),  # default loss: tasks + regularizer
        ], on_epoch_end=model.end_policy_epoch)

    if not _started(trainer, "retrain"):
        model.freeze_policy()
        if cfg.retrain_epochs:
            model.reinit_weights(trainer.recipe.seed + RETRAIN_SEED_OFFSET)
    if cfg.retrain_epochs:
        trainer.run_stage("retrain", cfg.retrain_epochs,
                          [Phase("weights", trainer.weight_optimizer(), full, task_losses_only)], deployed=True)
