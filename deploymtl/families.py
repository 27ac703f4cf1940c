"""The family registry: one line per family names its supernet class, training schedule and surgeon.

A family is three modules, one in each stage package -- `models/<family>.py` (the supernet, whose class declares
its recipe sections `model_config_cls` / `search_config_cls`), `train/<family>.py` (the schedule,
`search(trainer)`), `surgery/<family>.py` (the `Surgeon` subclass) -- and its line in `FAMILIES`. Nothing else
lists families: the recipe's `family:` choices, the checkpoint check and the CLI read this table.

The entries are import paths ("package.module:attribute" under `deploymtl`), so this module imports nothing
heavy: `config` reads the family names from it, and `deploymtl --help` does not import torch. `family_spec(name)`
imports a family's modules on first use and checks that each entry is what it claims to be.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import DeploymtlError, InternalError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from .models.base import Supernet
    from .surgery.base import Surgeon
    from .tasks import TaskSpec

FAMILIES: dict[str, tuple[str, str, str]] = {
    # name:     (supernet class,                        training schedule,       surgeon class)
    "adashare": ("models.adashare:AdaShareSupernet", "train.adashare:search", "surgery.adashare:AdaShareSurgeon"),
    "gated": ("models.gated:GatedSupernet", "train.gated:search", "surgery.gated:GatedSurgeon"),
    "auxnas": ("models.auxnas:AuxNasSupernet", "train.auxnas:search", "surgery.auxnas:AuxNasSurgeon"),
}
FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)


@dataclass(frozen=True)
class FamilySpec:
    """Everything deploymtl knows about one family, resolved from its registry line."""

    name: str
    supernet_cls: type[Supernet]  # constructed as cls(tasks, model_cfg, search_cfg)
    model_config_cls: type[BaseModel]  # the recipe's `model:` section
    search_config_cls: type[BaseModel]  # the recipe's `search:` section
    schedule: Callable[[Any], None]  # search(trainer): the family's training stages
    surgeon: Surgeon  # supernet + plan -> static graph


def _resolve(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(f"deploymtl.{module}"), attr)


@functools.cache
def family_spec(name: str) -> FamilySpec:
    """The resolved registry entry of `name`; an unknown name is a one-line user error, a registry line that does
    not resolve to the right kinds of objects is our bug."""
    if name not in FAMILIES:
        raise DeploymtlError(f"unknown family '{name}'", hint=f"expected one of {', '.join(FAMILIES)}")
    from .models.base import Supernet
    from .surgery.base import Surgeon

    supernet, schedule, surgeon = (_resolve(p) for p in FAMILIES[name])
    if not (isinstance(supernet, type) and issubclass(supernet, Supernet) and supernet.family == name):
        raise InternalError(f"family registry: {FAMILIES[name][0]} is not the {name} Supernet subclass")
    if not (isinstance(surgeon, type) and issubclass(surgeon, Surgeon) and surgeon.family == name):
        raise InternalError(f"family registry: {FAMILIES[name][2]} is not the {name} Surgeon subclass")
    if not callable(schedule):
        raise InternalError(f"family registry: {FAMILIES[name][1]} is not a schedule function")
    return FamilySpec(name, supernet, supernet.model_config_cls, supernet.search_config_cls, schedule, surgeon())


def build_supernet(family: str, tasks: list[TaskSpec], model: dict[str, Any] | Any, search: dict[str, Any] | Any
                   ) -> Supernet:
    """A fresh supernet of `family`; `model` / `search` are the recipe's sections (dicts or validated configs)."""
    spec = family_spec(family)
    mcfg = model if isinstance(model, spec.model_config_cls) else spec.model_config_cls.model_validate(model)
    scfg = search if isinstance(search, spec.search_config_cls) else spec.search_config_cls.model_validate(search)
    return spec.supernet_cls(tasks, mcfg, scfg)
