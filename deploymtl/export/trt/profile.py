"""TensorRT optimisation profiles derived from the batch specification and the ONNX input dims.

The same `BatchSpec` (MIN:OPT:MAX) that set the ONNX dynamic batch axis sets the profile: for every network input,
min/opt/max shapes equal its ONNX dims with the batch axis (dim 0) replaced by MIN, OPT and MAX. Other dims must be
static: deploymtl's models take a fixed image size, and a profile cannot guess a range for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from ...errors import DeploymtlError
from ...onnxkit.load import load_onnx
from ..batch import BatchSpec


@dataclass(frozen=True)
class InputProfile:
    """Shapes of one network input for `IOptimizationProfile.set_shape(name, min, opt, max)`."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    def batch_range(self) -> tuple[int, int]:
        return (self.min[0], self.max[0]) if self.min else (1, 1)

    def contains(self, shape: tuple[int, ...]) -> bool:
        if len(shape) != len(self.min):
            return False
        return all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max, strict=True))


def _load_graph(model: onnx.ModelProto | str | Path) -> tuple[onnx.GraphProto, str]:
    where = "the ONNX model" if isinstance(model, onnx.ModelProto) else str(model)
    return load_onnx(model, external_data=False).graph, where


def derive_profiles(model: onnx.ModelProto | str | Path, batch: BatchSpec) -> dict[str, InputProfile]:
    """One profile entry per network input (initializers excluded), in graph order."""
    graph, where = _load_graph(model)
    init = {t.name for t in graph.initializer}
    profiles: dict[str, InputProfile] = {}
    for inp in graph.input:
        if inp.name in init:
            continue
        t = inp.type.tensor_type
        if not t.HasField("shape"):
            raise DeploymtlError(f"input '{inp.name}' of {where} has no shape",
                                 hint="re-export the ONNX with shapes (deploymtl export --target onnx)")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if not dims:
            profiles[inp.name] = InputProfile(inp.name, (), (), ())
            continue
        lead, rest = dims[0], dims[1:]
        if lead is not None and not (batch.min == batch.max == lead):
            raise DeploymtlError(
                f"input '{inp.name}' of {where} has a static batch of {lead} but --batch {batch} was requested",
                hint=f"re-export with a dynamic batch axis: deploymtl export MODEL --target onnx --batch {batch}")
        for axis, d in enumerate(rest, start=1):
            if d is None:
                raise DeploymtlError(f"input '{inp.name}' of {where} has a dynamic dimension {axis}",
                                     hint="deploymtl profiles only the batch axis; export with a fixed image size")
        profiles[inp.name] = InputProfile(inp.name, (batch.min, *rest), (batch.opt, *rest), (batch.max, *rest))
    if not profiles:
        raise DeploymtlError(f"{where} has no inputs", hint="expected the image input of a deploymtl export")
    return profiles


def profiles_to_dict(profiles: Mapping[str, InputProfile]) -> dict[str, dict[str, list[int]]]:
    return {name: p.to_dict() for name, p in profiles.items()}


def profiles_from_dict(data: Mapping[str, Any], where: str = "manifest") -> dict[str, InputProfile]:
    """Inverse of `profiles_to_dict`, validating what a (possibly edited) manifest holds."""
    out: dict[str, InputProfile] = {}
    if not isinstance(data, Mapping) or not data:
        raise DeploymtlError(f"{where}: 'profile' must map input names to min/opt/max shapes")
    for name, shapes in data.items():
        try:
            lo, opt, hi = (tuple(int(v) for v in shapes[k]) for k in ("min", "opt", "max"))
        except (KeyError, TypeError, ValueError):
            raise DeploymtlError(f"{where}: profile of input '{name}' needs integer lists min, opt, max") from None
        if not (len(lo) == len(opt) == len(hi)) or not all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)):
            raise DeploymtlError(f"{where}: profile of input '{name}' needs min <= opt <= max of equal rank, "
                                 f"got {list(lo)}, {list(opt)}, {list(hi)}")
        out[str(name)] = InputProfile(str(name), lo, opt, hi)
    return out
