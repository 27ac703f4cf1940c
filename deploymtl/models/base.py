"""The contract every supernet keeps, so the trainer, the surgeon and the profiler treat families alike.

Two modes: *search* (soft decisions: Gumbel samples, straight-through gates, sigmoid alphas; what the
trainer optimises) and *deployed* (hard decisions fixed by an explicit rule; exactly what the static model
must reproduce). `decisions()` returns the hard decisions as JSON-able data; `set_decisions()` fixes them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from pydantic import BaseModel
from torch import nn

from ..tasks import TaskSpec


class Supernet(nn.Module, ABC):
    family: ClassVar[str]  # its name in `deploymtl.families.FAMILIES`
    model_config_cls: ClassVar[type[BaseModel]]  # the recipe's `model:` section, the constructor's model_cfg
    search_config_cls: ClassVar[type[BaseModel]]  # the recipe's `search:` section, the constructor's search_cfg

    def __init__(self, tasks: list[TaskSpec]) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.deployed = False

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def set_deployed(self, deployed: bool = True) -> Supernet:
        """Switch to the hard-decision computation (and back)."""
        self.deployed = deployed
        return self

    @abstractmethod
    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw head outputs per task, at the input resolution for dense tasks."""

    @abstractmethod
    def arch_parameters(self) -> list[nn.Parameter]:
        """The search's decision parameters (policy logits, gate alphas/betas, fusion alphas)."""

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    @abstractmethod
    def decisions(self) -> dict[str, Any]:
        """Hard decisions as JSON-able data, with the rule that produced them under key "rule"."""

    @abstractmethod
    def set_decisions(self, decisions: dict[str, Any]) -> None:
        """Fix the hard decisions the deployed mode uses (e.g. from an edited plan)."""

    def regularizer(self, progress: float) -> torch.Tensor:
        """The family's search loss terms (sparsity, sharing, L1 ramp); `progress` in [0, 1]."""
        return torch.zeros(())

    def public_forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """The computation the family's public code runs at inference for all tasks (the "before" cost).
        Defaults to the deployed forward; AdaShare overrides it (one pass per task, both branches)."""
        return self.forward(image)
