"""GatedMTL schedule (docs/methods.md): joint search of weights, gates and betas, then a fine-tune with the
gates fixed.

1. `search` stage: one optimiser step per batch on task losses + the hinge sparsity loss
   (`GatedSupernet.regularizer`), updating the weights (trainer.weight_optimizer settings) and the gate
   logits alpha and mixing logits beta (trainer.arch_optimizer settings) together; gates are binary in the
   forward pass (straight-through).
2. The gates are frozen by the rule alpha > 0 (`fix_gates`, kept in buffers so a resumed run keeps them).
3. `finetune` stage: weights only, in deployed mode (fixed gates); the betas stay as searched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .trainer import Phase

if TYPE_CHECKING:
    from ..models.gated import GatedSupernet
    from .trainer import Trainer


def search(trainer: Trainer) -> None:
    model: GatedSupernet = trainer.model  # type: ignore[assignment]
    cfg = model.search_cfg
    data = trainer.data["train"]
    if cfg.search_epochs > 0:
        joint = trainer.weight_optimizer()
        # The decision parameters join as a second group with the arch optimiser's own settings (lr, no decay).
        arch_group = dict(trainer.arch_optimizer().param_groups[0])
        joint.add_param_group(arch_group)
        trainer.run_stage("search", cfg.search_epochs, [Phase("joint", joint, data)], deployed=False)
    model.fix_gates()
    if cfg.finetune_epochs > 0:
        trainer.run_stage("finetune", cfg.finetune_epochs,
                          [Phase("weights", trainer.weight_optimizer(model.weight_parameters()), data)],
                          deployed=True)
