"""What a family's surgeon is: a `Surgeon` that prepares a plan against a supernet into a `Cut`.

`surgeon.prepare(model, plan)` checks the plan against the supernet ONCE (family, deployed tasks, then the family's
decisions, in the Cut's constructor) and the Cut keeps what it derived from them (AdaShare's policies and block
runs, GatedMTL's kept filters, Aux-NAS's kept links). Everything downstream asks the Cut:

- `apply()`: the supernet's deployed mode follows the plan (the reference the static model must equal);
- `build() -> GraphBuilder`: the static graph with its folded weights; it reads the supernet's tensors each time
  it runs, so the proof of removal can rebuild it with autograd following the weights;
- `expected_params()`: the static model's parameter count from the plan and the layer shapes alone
  (`registry.count`), never from the builder: the proof of removal compares the two;
- `summary()`, `draw(ax)`: the report's summary of the decisions and their picture;
- `approximation_links()`: removed parts whose trained weight is not exactly zero ({} unless the family has such),
  and `soft_reference(images)`: the supernet with them at their trained weights, to measure the approximation.

The family's typed options (`options_model`, a `PlanOptions` subclass) live in the plan's `options`; the plan
envelope validates them through the family, so a Cut reads `self.options` as a typed object.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Generic, TypeVar

import torch

from ..errors import DeploymtlError, InternalError
from ..formats.plan import Plan, PlanOptions
from ..models.base import Supernet
from .builder import GraphBuilder

ModelT = TypeVar("ModelT", bound=Supernet)
OptionsT = TypeVar("OptionsT", bound=PlanOptions)


class Cut(ABC, Generic[ModelT, OptionsT]):
    """A plan prepared against one supernet. Subclasses validate the family's decisions in `__init__` (raising
    one-line DeploymtlErrors) and cache what they derive. `Surgeon.prepare` has checked that `model` and
    `plan.options` are the family's types."""

    def __init__(self, model: ModelT, plan: Plan) -> None:
        self.model: ModelT = model
        self.plan = plan
        self.tasks: list[str] = list(plan.tasks)
        self.decisions: dict[str, Any] = plan.decisions
        self.options: OptionsT = plan.options  # type: ignore[assignment]  # checked by Surgeon.prepare

    def apply(self) -> None:
        """Fix the plan's decisions on the supernet and switch it to deployed (eval) mode."""
        self.model.set_decisions(self.decisions)
        self.model.eval().set_deployed(True)

    @abstractmethod
    def build(self) -> GraphBuilder:
        """The static graph (nodes + folded weights) computing the deployed tasks, outputs in plan order."""

    @abstractmethod
    def expected_params(self) -> int:
        """Parameters the static model must hold, from the plan and the layer shapes (not from `build`)."""

    @abstractmethod
    def summary(self) -> dict[str, Any]:
        """A short JSON-able summary of the decisions for reports and `deploymtl inspect`."""

    @abstractmethod
    def draw(self, ax: Any) -> None:
        """A matplotlib picture of the decisions on `ax`."""

    def approximation_links(self) -> dict[str, float]:
        """Removed links whose trained weight is not exactly zero, by name: what removing them approximates."""
        return {}

    def soft_reference(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The supernet's outputs with every link at its trained weight: what the static model approximates when
        `approximation_links()` is not empty (a family that has such links overrides this)."""
        raise InternalError(f"the {type(self).__name__} has no approximate links to measure")


class Surgeon(ABC):
    """One instance per family (`deploymtl.families`): its supernet class, typed options and Cut."""

    family: ClassVar[str]
    supernet_cls: ClassVar[type[Supernet]]
    options_model: ClassVar[type[PlanOptions]] = PlanOptions
    cut_cls: ClassVar[type[Cut[Any, Any]]]

    def default_tasks(self, model: Supernet) -> list[str]:
        """Tasks deployed when neither the user nor the recipe names them: every task of the supernet."""
        return list(model.task_names)

    def prepare(self, model: Supernet, plan: Plan) -> Cut:
        """Check `plan` against `model` once and derive the Cut. Errors are one line, starting with the plan field
        at fault (`family: ...`, `tasks: ...`, `decisions: ...`)."""
        if not isinstance(model, self.supernet_cls):  # the registry builds the model: a mismatch is our bug
            raise InternalError(f"the {self.family} surgeon got a {type(model).__name__}")
        if plan.family != self.family:
            raise DeploymtlError(f"family: plan is for '{plan.family}' but the checkpoint is '{self.family}'",
                                 hint="make the plan from this checkpoint with deploymtl inspect")
        names = list(model.task_names)
        for task in plan.tasks:
            if task not in names:
                raise DeploymtlError(f"tasks: unknown task '{task}'", hint=f"expected some of {', '.join(names)}")
        if not isinstance(plan.options, self.options_model):  # Plan validates options through the family
            raise InternalError(f"plan options are a {type(plan.options).__name__}, not {self.options_model.__name__}")
        try:
            return self.cut_cls(model, plan)
        except InternalError:
            raise
        except DeploymtlError as exc:
            raise DeploymtlError(f"decisions: {exc}", hint=exc.hint) from None
