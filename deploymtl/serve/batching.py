"""The dynamic batcher setting a served model gets, and where it came from.

One batch specification (`--batch MIN:OPT:MAX`) bounds it: Triton's `max_batch_size` is its MAX. Within that, the
setting is, in order of precedence:

1. what the user passes (`--preferred`, `--max-delay-ms`);
2. the profiler's best batcher setting for this artifact (`deploymtl profile`, the edge scenario's setting sweep:
   the least busy setting whose p99 fits the budget), read from a `profile.json` beside the artifact, in the
   `profile/` folder of a `deploymtl run` directory, or given with `--profile`;
3. the recipe's `profile:` section (`max_batch`, `max_delay_ms`), from `recipe.json` beside the artifact;
4. the recipe defaults (`deploymtl.config.ProfileConfig`).

The setting's max batch becomes Triton's preferred batch size (a batch is sent as soon as it reaches it) and its
delay Triton's `max_queue_delay_microseconds`: the rule of deploymtl's own `Batcher` (runtime/policy.py), which
follows Triton's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config import ProfileConfig
from ..errors import DeploymtlError
from ..io import read_json


@dataclass(frozen=True)
class Batching:
    """Triton's batching fields; `source` says where the values came from (shown in READMEs and logs)."""

    max_batch_size: int
    preferred: tuple[int, ...]
    max_queue_delay_us: int
    source: str = "defaults"

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise DeploymtlError(f"max_batch_size {self.max_batch_size}", hint="expected >= 1")
        bad = [p for p in self.preferred if not 1 <= p <= self.max_batch_size]
        if bad:
            raise DeploymtlError(f"preferred batch sizes {bad} are outside 1..{self.max_batch_size} (the batch "
                                 "specification's maximum)", hint=f"use sizes up to {self.max_batch_size}")
        if self.max_queue_delay_us < 0:
            raise DeploymtlError(f"max queue delay {self.max_queue_delay_us} us", hint="expected >= 0")

    @property
    def max_delay_ms(self) -> float:
        return self.max_queue_delay_us / 1000.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"preferred": list(self.preferred)}


def delay_us(ms: float, where: str = "--max-delay-ms") -> int:
    if not math.isfinite(ms) or ms < 0:
        raise DeploymtlError(f"{where} {ms} must be a finite number >= 0")
    return round(ms * 1000.0)


def resolve_batching(artifact: Path, max_batch_size: int, *, preferred: list[int] | None = None,
                     max_delay_ms: float | None = None, profile: Path | None = None) -> Batching:
    """The setting for `artifact` (see the module docstring), capped by `max_batch_size`."""
    found = _from_profile(artifact, profile)
    if found is None:
        found = _from_recipe(artifact)
    setting_batch, setting_delay, source = found
    if preferred is not None or max_delay_ms is not None:
        source = "command line" + (f" over {source}" if preferred is None or max_delay_ms is None else "")
    pref = tuple(sorted(set(preferred))) if preferred is not None else (min(setting_batch, max_batch_size),)
    delay = delay_us(max_delay_ms) if max_delay_ms is not None else delay_us(setting_delay, f"{source}: max_delay_ms")
    return Batching(max_batch_size, pref, delay, source)


def _from_profile(artifact: Path, explicit: Path | None) -> tuple[int, float, str] | None:
    """The best setting recorded for `artifact` in a profile.json (explicit, beside it, or a run's profile/)."""
    candidates = [explicit] if explicit is not None else [artifact.parent / "profile.json",
                                                          artifact.parent.parent.parent / "profile" / "profile.json"]
    target = artifact.resolve()
    for path in candidates:
        if not path.is_file():
            if explicit is not None:
                raise DeploymtlError(f"--profile {path}: file not found", hint="expected a profile.json of "
                                     "deploymtl profile")
            continue
        data = read_json(path, "profile")
        entries = data.get("artifacts") if isinstance(data, dict) else None
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict) or not _same_file(entry.get("path"), target, path.parent):
                continue
            best = ((entry.get("edge") or {}).get("settings") or {}).get("best")
            if isinstance(best, dict) and isinstance(best.get("max_batch"), int) and \
                    isinstance(best.get("max_delay_ms"), int | float):
                return best["max_batch"], float(best["max_delay_ms"]), f"profile {path} (best edge setting)"
        if explicit is not None:
            raise DeploymtlError(f"--profile {path} has no best batcher setting for {artifact}",
                                 hint="profile this artifact with the edge scenario (deploymtl profile ARTIFACT)")
    return None


def _same_file(recorded: Any, target: Path, base: Path) -> bool:
    if not isinstance(recorded, str):
        return False
    p = Path(recorded)
    # profile.json records paths as given on the command line: relative to where it ran, usually the cwd
    return any(c.resolve() == target for c in (p, base / p) if c.exists())


def _from_recipe(artifact: Path) -> tuple[int, float, str]:
    recipe_path = artifact.parent / "recipe.json"
    if recipe_path.is_file():
        recipe = read_json(recipe_path, "recipe")
        section = recipe.get("profile", {}) if isinstance(recipe, dict) else {}
        try:
            cfg = ProfileConfig.model_validate(section if isinstance(section, dict) else {})
        except ValueError as exc:
            raise DeploymtlError(f"{recipe_path}: profile section is invalid ({str(exc).splitlines()[0]})",
                                 hint="expected the recipe deploymtl export writes") from None
        name = recipe.get("name") if isinstance(recipe, dict) else None
        return cfg.max_batch, cfg.max_delay_ms, f"the profile section of recipe {name or recipe_path}"
    cfg = ProfileConfig()
    return cfg.max_batch, cfg.max_delay_ms, "recipe defaults"
