"""`profile_artifacts(paths, options)`: everything `deploymtl profile` measures, as one JSON-able dict.

Per artifact: load it as a runtime `Session`; batch sweep (sweep.py); compute times at every batch size the
edge sweep needs, then the edge scenario and the batcher-setting sweep (edge.py); params/FLOPs (cost.py);
file size; peak memory in a child process (memory.py). Across artifacts: the comparison (compare.py).
Options extend the recipe's `profile:` section (`deploymtl.config.ProfileConfig`), so a recipe and the CLI
set the same fields.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from .. import __version__
from ..backends.load import artifact_kind
from ..config import ProfileConfig
from ..errors import DeploymtlError, validation_message
from ..runtime.session import load
from .compare import compare
from .cost import artifact_cost
from .edge import ComputeModel, EdgeScenario, simulate, sweep_settings
from .memory import peak_memory
from .sweep import SweepSettings, sweep

PROFILE_FORMAT = "deploymtl.profile/1"


class ProfileOptions(ProfileConfig):
    """The recipe's profile section plus what only a profiling run chooses."""

    provider: Literal["cpu", "cuda", "trt"] = "cpu"
    arrival: Literal["periodic", "poisson"] = "periodic"
    jitter_ms: float = Field(default=2.0, ge=0)
    deadline_ms: float | None = Field(default=None, gt=0, description="default: the frame period")
    budget_ms: float | None = Field(default=None, gt=0, description="p99 budget of the setting sweep; "
                                    "default: the deadline")
    edge_duration_s: float = Field(default=10.0, gt=0, description="simulated seconds of streams")
    preferred_batch_sizes: list[int] = []
    warmup: int = Field(default=3, ge=0)
    max_windows: int = Field(default=5, ge=2)
    tolerance: float = Field(default=0.05, gt=0)
    memory: bool = True
    edge: bool = True
    seed: int = 0

    @classmethod
    def parse(cls, values: dict[str, Any]) -> ProfileOptions:
        """Validate, turning pydantic's report into one line naming the option."""
        try:
            return cls.model_validate({k: v for k, v in values.items() if v is not None})
        except ValidationError as exc:
            raise DeploymtlError(validation_message(exc, "profile options")) from None

    @property
    def torch_device(self) -> str:
        return "cpu" if self.provider == "cpu" else "cuda"

    def scenario(self) -> EdgeScenario:
        return EdgeScenario(streams=self.streams, fps=self.fps, arrival=self.arrival, jitter_ms=self.jitter_ms,
                            duration_s=self.edge_duration_s, deadline_ms=self.deadline_ms, max_batch=self.max_batch,
                            max_delay_ms=self.max_delay_ms, preferred=tuple(self.preferred_batch_sizes),
                            seed=self.seed)

    def sweep_settings(self) -> SweepSettings:
        return SweepSettings(batch_sizes=tuple(self.batch_sizes), duration_s=self.duration_s, warmup=self.warmup,
                             max_windows=self.max_windows, tolerance=self.tolerance)


def artifact_names(paths: list[Path]) -> list[str]:
    """Short unique display names: the file name, or parent/file name where file names repeat."""
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def profile_artifacts(paths: list[str | Path], options: ProfileOptions,
                      log: Callable[[str], None] = lambda _msg: None) -> dict[str, Any]:
    """Measure every artifact; returns the profile (format deploymtl.profile/1, stable keys)."""
    if not paths:
        raise DeploymtlError("no artifact to profile", hint="expected one or more pruned.pt / .onnx / .plan paths")
    settings = options.sweep_settings()
    scenario = options.scenario() if options.edge else None
    paths = [Path(p) for p in paths]
    for p in paths:
        artifact_kind(p)  # an unknown type or a missing file fails before minutes of measuring the others
    entries, warnings = [], []
    for path, name in zip(paths, artifact_names(paths), strict=True):
        log(f"profiling {name}")
        with load(path, provider=options.provider if path.suffix.lower() == ".onnx" else "cpu",
                  device=options.torch_device, threads=options.threads) as session:
            for note in session.notes:  # e.g. a file shaped for another runtime: its figures are not its best
                log(f"note: {note}")
                warnings.append(note)
            rows, warn = sweep(session, settings, seed=options.seed)
            warnings += warn
            samples = {r["batch"]: [s / 1000.0 for s in r.pop("samples_ms")] for r in rows}
            entry: dict[str, Any] = {"name": name, **session.info(), "size_bytes": path.stat().st_size,
                                     "sweep": rows}
            if scenario is not None:
                entry["edge"] = _edge(session, scenario, options, samples)
        entry["cost"] = artifact_cost(path, entry["kind"])
        if options.memory:
            entry["memory"] = peak_memory(path, batch=max(options.batch_sizes), provider=entry["provider"] or "cpu",
                                          device=entry["device"], threads=options.threads)
        entries.append(entry)
    return {"format": PROFILE_FORMAT, "deploymtl_version": __version__, "options": options.model_dump(),
            "environment": environment(), "artifacts": entries, "comparison": compare(entries),
            "warnings": warnings}


def _edge(session: Any, scenario: EdgeScenario, options: ProfileOptions,
          samples: dict[int, list[float]]) -> dict[str, Any]:
    limit = session.max_batch
    if limit is not None and scenario.max_batch > limit:
        raise DeploymtlError(f"--max-batch {scenario.max_batch} exceeds the maximum batch {limit} of {session.path}",
                             hint=f"use --max-batch <= {limit}")
    top = max(8, scenario.max_batch) if limit is None else min(max(8, scenario.max_batch), limit)
    grid_batches = sorted({b for b in (1, 2, 4, 8, 16, 32) if b <= top} | {scenario.max_batch})
    compute = ComputeModel.measure(session, range(1, max(grid_batches) + 1), known=samples, seed=options.seed)
    result = simulate(scenario, compute)
    return {"mode": "discrete-event simulation on measured compute times", "scenario": scenario.to_dict(),
            "result": result,
            "compute_p50_ms": {b: float(sorted(s)[len(s) // 2] * 1e3) for b, s in compute.samples.items()},
            "settings": sweep_settings(scenario, compute, options.budget_ms, max_batches=grid_batches)}


def environment() -> dict[str, Any]:
    import numpy

    env = {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
           "numpy": numpy.__version__}
    for mod in ("torch", "onnxruntime"):
        try:
            env[mod] = __import__(mod).__version__
        except ImportError:
            env[mod] = None
    return env
