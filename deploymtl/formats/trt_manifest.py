"""The engine sidecar `model.plan.json` and the compatibility check run before deserialising an engine.

A serialized TensorRT engine runs only on the TensorRT version and GPU compute capability that built it, unless it was
built with a hardware compatibility level (Ampere+, or same compute capability) and/or version compatibility
(docs/tensorrt.md, section 7, "Portability"). TensorRT itself answers a mismatch with `None` and a log line;
deploymtl reads the manifest first and says what to rebuild. Pure Python: fully testable without TensorRT.

    {"format": "deploymtl.trt_plan/1", "plan": "model.plan", "plan_sha256",
     "onnx": {"path", "sha256"}, "tensorrt_version", "cuda_version", "gpu": {"name", "compute_capability": [8, 6]},
     "compatibility": {"hardware_compatibility_level": "none|ampere_plus|same_compute_capability",
                       "version_compatible": false},
     "precision": "fp32|fp16|int8", "strongly_typed", "batch": {"min", "opt", "max"},
     "profile": {input: {"min", "opt", "max"}}, "io": [{"name", "mode", "dtype", "shape"}],
     "tasks": [...], "input": {...}, "build": {...}, "precision_check": {...}, "deploymtl_version"}
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from .. import __version__
from ..config import Precision
from ..errors import DeploymtlError
from ..io import read_json, write_json

MANIFEST_FORMAT = "deploymtl.trt_plan/1"
HARDWARE_LEVELS = ("none", "ampere_plus", "same_compute_capability")
PRECISIONS: tuple[str, ...] = tuple(p for p in get_args(Precision) if p != "auto")  # what a built file is in
_REQUIRED = ("tensorrt_version", "gpu", "compatibility", "precision", "profile", "io")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeInfo:
    """What the machine that loads (or builds) an engine offers."""

    tensorrt_version: str
    compute_capability: tuple[int, int]
    gpu_name: str = ""
    cuda_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"tensorrt_version": self.tensorrt_version, "cuda_version": self.cuda_version,
                "gpu": {"name": self.gpu_name, "compute_capability": list(self.compute_capability)}}


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


def manifest_path(engine: str | Path) -> Path:
    """`model.plan` -> `model.plan.json`."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def version_tuple(version: str) -> tuple[int, ...]:
    """'10.3.0.26' -> (10, 3, 0, 26); non-numeric suffixes such as '.post1' are ignored."""
    parts = []
    for piece in str(version).split("."):
        m = re.match(r"\d+", piece)
        if not m:
            break
        parts.append(int(m.group()))
    return tuple(parts)


def make_manifest(*, runtime: RuntimeInfo, precision: str, batch: dict[str, int], profile: dict[str, Any],
                  io: list[dict[str, Any]], tasks: list[Any], onnx_path: str, onnx_sha256: str, engine_name: str,
                  engine_sha256: str, hardware_compatibility: str = "none", version_compatible: bool = False,
                  strongly_typed: bool = True, input_meta: dict[str, Any] | None = None,
                  build: dict[str, Any] | None = None, precision_check: dict[str, Any] | None = None) -> dict[str, Any]:
    """Assemble the manifest dict (key order is the documented one). Keyword-only, one parameter per field of the
    documented manifest: a grouping object would only repeat them."""
    if precision not in PRECISIONS:
        raise DeploymtlError(f"unknown precision '{precision}'", hint=f"expected {', '.join(PRECISIONS)}")
    if hardware_compatibility not in HARDWARE_LEVELS:
        raise DeploymtlError(f"unknown hardware compatibility level '{hardware_compatibility}'",
                             hint=f"expected {', '.join(HARDWARE_LEVELS)}")
    return {
        "format": MANIFEST_FORMAT,
        "plan": engine_name,
        "plan_sha256": engine_sha256,
        "onnx": {"path": str(onnx_path), "sha256": onnx_sha256},
        **runtime.to_dict(),
        "compatibility": {"hardware_compatibility_level": hardware_compatibility,
                          "version_compatible": bool(version_compatible)},
        "precision": precision,
        "strongly_typed": bool(strongly_typed),
        "batch": dict(batch),
        "profile": profile,
        "io": io,
        "tasks": tasks,
        "input": input_meta or {},
        "build": build or {},
        "precision_check": precision_check or {},
        "deploymtl_version": __version__,
    }


def write_manifest(path: str | Path, manifest: dict[str, Any]) -> Path:
    return write_json(path, manifest)


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Load and validate a manifest; a missing or malformed one is a one-line DeploymtlError."""
    path = Path(path)
    if not path.is_file():
        raise DeploymtlError(f"engine manifest not found: {path}",
                             hint="engines built by deploymtl carry a model.plan.json beside model.plan; rebuild "
                                  "with deploymtl export MODEL --target trt")
    data = read_json(path, "engine manifest")
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise DeploymtlError(f"{path} is not a deploymtl engine manifest (format {found!r})",
                             hint=f"expected format {MANIFEST_FORMAT}")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise DeploymtlError(f"engine manifest {path} lacks {', '.join(missing)}", hint="rebuild the engine")
    try:
        _compute_capability(data)
        level = data["compatibility"]["hardware_compatibility_level"]
    except (KeyError, TypeError, ValueError):
        raise DeploymtlError(f"engine manifest {path}: malformed gpu/compatibility entries",
                             hint="rebuild the engine") from None
    if level not in HARDWARE_LEVELS:
        raise DeploymtlError(f"engine manifest {path}: unknown hardware_compatibility_level '{level}'",
                             hint=f"expected {', '.join(HARDWARE_LEVELS)}")
    return data


def _compute_capability(manifest: dict[str, Any]) -> tuple[int, int]:
    major, minor = manifest["gpu"]["compute_capability"]
    return int(major), int(minor)


def rebuild_command(manifest: dict[str, Any]) -> str:
    onnx_path = manifest.get("onnx", {}).get("path") or "MODEL"
    batch = manifest.get("batch") or {}
    spec = f" --batch {batch['min']}:{batch['opt']}:{batch['max']}" if {"min", "opt", "max"} <= set(batch) else ""
    return f"deploymtl export {onnx_path} --target trt --precision {manifest.get('precision', 'fp32')}{spec}"


def check_compatible(manifest: dict[str, Any], runtime: RuntimeInfo) -> None:
    """Raise DeploymtlError, naming the rebuild, when this machine cannot load the engine the manifest describes."""
    engine = manifest.get("plan", "model.plan")
    rebuild = f"rebuild with `{rebuild_command(manifest)}` on this machine"
    compat = manifest["compatibility"]
    built_v, run_v = version_tuple(manifest["tensorrt_version"]), version_tuple(runtime.tensorrt_version)
    here = runtime.gpu_name or "this GPU"
    if compat.get("version_compatible"):
        # A version-compatible engine runs on the same major version, from the version that built it onward.
        if not built_v or run_v[:1] != built_v[:1] or run_v[:3] < built_v[:3]:
            raise DeploymtlError(
                f"{engine} is a version-compatible engine built with TensorRT {manifest['tensorrt_version']}; it runs "
                f"on the same major version from that release on, not on TensorRT {runtime.tensorrt_version}",
                hint=rebuild)
    elif run_v[:3] != built_v[:3]:
        raise DeploymtlError(
            f"{engine} was built with TensorRT {manifest['tensorrt_version']} but this machine has TensorRT "
            f"{runtime.tensorrt_version}; engines only load on the TensorRT version that built them", hint=rebuild)
    built_cc, run_cc = _compute_capability(manifest), tuple(runtime.compute_capability)
    level = compat.get("hardware_compatibility_level", "none")
    gpu = manifest["gpu"].get("name") or "?"
    if level == "ampere_plus":
        if run_cc[0] < 8:
            raise DeploymtlError(
                f"{engine} was built for Ampere or newer GPUs (compute capability >= 8.0) but {here} has compute "
                f"capability {run_cc[0]}.{run_cc[1]}", hint=rebuild)
    elif run_cc != built_cc:
        raise DeploymtlError(
            f"{engine} was built for compute capability {built_cc[0]}.{built_cc[1]} ({gpu}) but {here} has "
            f"{run_cc[0]}.{run_cc[1]}", hint=rebuild)
    elif runtime.gpu_name and gpu != "?" and runtime.gpu_name != gpu:
        log.warning("%s was built on %s and loads on %s (same compute capability): it runs, but its tactics were "
                    "timed on the other GPU; rebuild here for best latency", engine, gpu, runtime.gpu_name)


# TensorRT DataType enum names -> numpy dtype names (docs/tensorrt.md, section 7, "Run"); by name, as 11.x
# renumbered enums.
TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "INT32": "int32",
              "INT64": "int64", "BOOL": "bool", "UINT8": "uint8"}


def dtype_name(trt_dtype: Any) -> str:
    """numpy name of a `tensorrt.DataType` member (or its enum name); DeploymtlError for types deploymtl cannot feed."""
    name = getattr(trt_dtype, "name", None) or str(trt_dtype).rsplit(".", 1)[-1]
    if name not in TRT_DTYPES:
        raise DeploymtlError(f"engine tensor type {name} has no numpy equivalent",
                             hint=f"expected one of {', '.join(TRT_DTYPES)}")
    return TRT_DTYPES[name]
