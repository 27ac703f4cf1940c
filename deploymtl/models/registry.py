"""Families by name. Each family module exposes `SPEC`; imports are lazy so `deploymtl --help` stays fast."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from ..errors import DeploymtlError

FAMILY_MODULES = {
    "adashare": "deploymtl.models.adashare",
    "gated": "deploymtl.models.gated",
    "auxnas": "deploymtl.models.auxnas",
}


@dataclass(frozen=True)
class FamilySpec:
    name: str
    supernet_cls: type  # subclass of Supernet, constructed as cls(tasks, model_cfg, search_cfg)
    model_config_cls: Any  # pydantic model of the recipe's `model:` section
    search_config_cls: Any  # pydantic model of the recipe's `search:` section


def family_spec(name: str) -> FamilySpec:
    if name not in FAMILY_MODULES:
        raise DeploymtlError(f"unknown family '{name}'", hint=f"expected one of {', '.join(FAMILY_MODULES)}")
    return importlib.import_module(FAMILY_MODULES[name]).SPEC


def build_supernet(family: str, tasks: list, model: dict | Any, search: dict | Any) -> Any:
    spec = family_spec(family)
    mcfg = model if isinstance(model, spec.model_config_cls) else spec.model_config_cls.model_validate(model)
    scfg = search if isinstance(search, spec.search_config_cls) else spec.search_config_cls.model_validate(search)
    return spec.supernet_cls(tasks, mcfg, scfg)
