"""Build a TensorRT engine from a verified ONNX graph: `model.plan` (raw serialized engine) + `model.plan.json`.

The calls follow the TensorRT 10.x/11.x Python API as documented (docs/tensorrt.md, section 7, "Build"):
Builder -> strongly typed network -> OnnxParser.parse -> builder config (workspace pool limit, optimisation level,
DETAILED profiling verbosity, timing cache, optional hardware/version compatibility) -> one optimisation profile
from the batch specification -> build_serialized_network. Precision comes from the graph (the fp16 ONNX or the Q/DQ
int8 ONNX of the export stage), never from builder flags: TensorRT 11 has none, and 10.x ignores them under strong
typing. After the build the engine is deserialised once to record its IO and to inspect which precision its layers
actually run (`precision.py`); an engine that silently ignored the requested precision is refused.

Only `export_trt` touches TensorRT (imported through `deploymtl.backends.trt_env`, shared with the engine runner);
everything it decides on is pure and unit-tested (lint, profile, manifest, precision).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import onnx

from ...backends.trt_env import make_logger, require_tensorrt, runtime_info
from ...config import BatchSpec, parse_batch
from ...errors import DeploymtlError
from ...formats.onnx_metadata import from_props
from ...formats.trt_manifest import (
    HARDWARE_LEVELS,
    PRECISIONS,
    InputProfile,
    dtype_name,
    make_manifest,
    profiles_to_dict,
    write_manifest,
)
from ...io import atomic_write_bytes, atomic_write_text, ensure_dir, sha256_file
from ...onnxkit.load import load_onnx
from .lint import errors, lint_onnx
from .precision import graph_precision, parse_engine_layers, precision_report, require_honoured
from .profile import derive_profiles

log = logging.getLogger(__name__)

ENGINE_NAME = "model.plan"  # the engine file: Triton's name for a TensorRT model
_HW_ENUM = {"none": "NONE", "ampere_plus": "AMPERE_PLUS", "same_compute_capability": "SAME_COMPUTE_CAPABILITY"}


@dataclass(frozen=True)
class ParserError:
    """One `IParserError`: `node` is the node index (-1 when the error is not about a node)."""

    desc: str
    node: int = -1
    node_name: str = ""
    op: str = ""
    code: str = ""


def format_parser_errors(errs: list[ParserError], onnx_path: str | Path) -> str:
    """One line naming the first rejected node and operator; the count of further errors."""
    if not errs:
        return f"TensorRT's ONNX parser rejected {onnx_path} without an error record"
    e = errs[0]
    who = f"node '{e.node_name}'" if e.node_name else (f"node #{e.node}" if e.node >= 0 else "the model")
    op = f" ({e.op})" if e.op else ""
    desc = " ".join(e.desc.split())[:240]
    more = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
    return f"TensorRT's ONNX parser rejected {who}{op} in {onnx_path}: {desc}{more}"


def _parser_errors(parser: Any) -> list[ParserError]:
    out = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        code = e.code()
        out.append(ParserError(
            desc=str(e.desc()), node=int(e.node()), code=getattr(code, "name", str(code)),
            node_name=str(e.node_name()) if hasattr(e, "node_name") else "",  # from 10.0
            op=str(e.node_operator()) if hasattr(e, "node_operator") else ""))
    return out


def check_build_options(precision: str, workspace_mb: int, builder_optimization_level: int,
                        hardware_compatibility: str) -> None:
    """Validate options before anything needs TensorRT."""
    if precision not in PRECISIONS:
        raise DeploymtlError(f"--precision {precision} is not supported for TensorRT", hint=f"expected "
                             f"{', '.join(PRECISIONS)}")
    if workspace_mb < 1:
        raise DeploymtlError(f"workspace of {workspace_mb} MiB", hint="expected at least 1 MiB")
    if not 0 <= builder_optimization_level <= 5:
        raise DeploymtlError(f"builder optimisation level {builder_optimization_level}", hint="expected 0..5")
    if hardware_compatibility not in HARDWARE_LEVELS:
        raise DeploymtlError(f"hardware compatibility '{hardware_compatibility}'",
                             hint=f"expected {', '.join(HARDWARE_LEVELS)}")


def check_graph(model: onnx.ModelProto, onnx_path: Path, precision: str) -> None:
    """Refuse, before reaching TensorRT, a graph the lint rejects or whose dtypes do not carry `precision`."""
    errs = errors(lint_onnx(model))
    if errs:
        more = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
        raise DeploymtlError(f"{onnx_path} is not TensorRT-compatible: {errs[0]}{more}",
                             hint=f"run deploymtl lint {onnx_path} for the full list")
    found = graph_precision(model)
    if found != precision:
        raise DeploymtlError(
            f"{onnx_path} is an {found} graph but --precision {precision} was requested; TensorRT takes precision "
            "from the graph", hint=f"export the {precision} ONNX first: deploymtl export MODEL --target onnx "
                                   f"--precision {precision}")


def export_trt(onnx_path: str | Path, out_dir: str | Path, *, precision: str, batch: BatchSpec | str,
               workspace_mb: int = 1024, timing_cache: Path | None = None, builder_optimization_level: int = 3,
               hardware_compatibility: str = "none", version_compatible: bool = False) -> dict[str, Any]:
    """Build `out_dir/model.plan` + `model.plan.json` from `onnx_path`; returns the manifest.

    One sequence in TensorRT's documented build order (parse, configure, profile, build, inspect, write), kept whole:
    the objects it creates must live together until the build ends (the ONNX parser owns the network's weights).
    Its keyword parameters are the builder settings the manifest records.

    `timing_cache` (default `out_dir/timing.cache`) is read if present and rewritten after the build, so rebuilds
    reuse measured tactics. fp32 engines clear TF32 so they meet fp32 parity tolerances.
    Raises DeploymtlError (exit 2) for unusable input or a failed build, VerificationError (exit 1) when the built
    engine does not run the requested precision (the engine and manifest are kept for inspection).
    """
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    batch = parse_batch(batch)
    check_build_options(precision, workspace_mb, builder_optimization_level, hardware_compatibility)
    trt = require_tensorrt()
    model = load_onnx(onnx_path, external_data=False)
    check_graph(model, onnx_path, precision)
    profiles = derive_profiles(model, batch)
    meta = from_props({p.key: p.value for p in model.metadata_props})
    ensure_dir(out_dir)
    cache_path = Path(timing_cache) if timing_cache else out_dir / "timing.cache"
    info = runtime_info(trt)
    logger = make_logger(trt)

    t0 = time.perf_counter()
    builder = trt.Builder(logger)
    strongly_typed = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes(), str(onnx_path)):
        raise DeploymtlError(format_parser_errors(_parser_errors(parser), onnx_path),
                             hint=f"run deploymtl lint {onnx_path}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    config.builder_optimization_level = int(builder_optimization_level)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    tf32 = precision != "fp32"
    if not tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    _set_compatibility(trt, config, hardware_compatibility, version_compatible)
    _add_profile(builder, config, network, profiles)
    cache = _load_timing_cache(config, cache_path)  # kept alive for the build
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        last = "; ".join(logger.errors()[-3:]) or "no error was logged"
        raise DeploymtlError(f"TensorRT could not build an engine from {onnx_path}: {last}",
                             hint="check the workspace (--workspace-mb) and run deploymtl lint on the ONNX")
    data = bytes(serialized)
    atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    del cache
    build_s = time.perf_counter() - t0

    io, layers_json = _inspect_engine(trt, logger, data, version_compatible)
    report = precision_report(parse_engine_layers(layers_json), precision)
    engine_path = out_dir / ENGINE_NAME
    atomic_write_bytes(engine_path, data)  # the raw engine, no header: loadable by trtexec and Triton as is
    atomic_write_text(out_dir / "model.plan.layers.json", layers_json)
    manifest = make_manifest(
        runtime=info, precision=precision, batch=batch.to_dict(), profile=profiles_to_dict(profiles), io=io,
        tasks=meta.get("tasks") or [o["name"] for o in io if o["mode"] == "output"], onnx_path=str(onnx_path),
        onnx_sha256=sha256_file(onnx_path), engine_name=ENGINE_NAME, engine_sha256=hashlib.sha256(data).hexdigest(),
        hardware_compatibility=hardware_compatibility, version_compatible=version_compatible,
        strongly_typed=strongly_typed, input_meta=meta.get("input"),
        build={"workspace_mb": int(workspace_mb), "builder_optimization_level": int(builder_optimization_level),
               "tf32": tf32, "timing_cache": str(cache_path), "seconds": round(build_s, 3),
               "warnings": [m for s, m in logger.messages if s == "WARNING"][-20:]},
        precision_check=report)
    write_manifest(out_dir / "model.plan.json", manifest)
    require_honoured(report, str(engine_path))
    return manifest


def _set_compatibility(trt: ModuleType, config: Any, level: str, version_compatible: bool) -> None:
    if level != "none":
        enum = getattr(trt, "HardwareCompatibilityLevel", None)
        if enum is None or not hasattr(enum, _HW_ENUM[level]):
            raise DeploymtlError(f"this TensorRT ({trt.__version__}) has no hardware compatibility level {level}",
                                 hint="build without --hardware-compatibility or upgrade TensorRT")
        config.hardware_compatibility_level = getattr(enum, _HW_ENUM[level])
    if version_compatible:
        if not hasattr(trt.BuilderFlag, "VERSION_COMPATIBLE"):
            raise DeploymtlError(f"this TensorRT ({trt.__version__}) cannot build version-compatible engines")
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)


def _add_profile(builder: Any, config: Any, network: Any, profiles: dict[str, InputProfile]) -> None:
    """One optimisation profile covering every network input (required whenever an input is dynamic)."""
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name not in profiles:
            raise DeploymtlError(f"network input '{name}' has no profile shapes",
                                 hint=f"expected one of {', '.join(profiles)}")
        p = profiles[name]
        profile.set_shape(name, p.min, p.opt, p.max)
    if config.add_optimization_profile(profile) < 0:
        shapes = "; ".join(f"{n}: {p.to_dict()}" for n, p in profiles.items())
        raise DeploymtlError(f"TensorRT rejected the optimisation profile ({shapes})",
                             hint="expected 1 <= MIN <= OPT <= MAX batch and the ONNX input shapes")


def _load_timing_cache(config: Any, path: Path) -> Any:
    """Reuse a saved timing cache; one from another GPU or TensorRT version is replaced by a fresh one."""
    blob = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(blob)
    if cache is not None and config.set_timing_cache(cache, False):
        return cache
    log.warning("timing cache %s does not match this GPU/TensorRT; starting a fresh one", path)
    cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, False)
    return cache


def _inspect_engine(trt: ModuleType, logger: Any, data: bytes,
                    version_compatible: bool) -> tuple[list[dict[str, Any]], str]:
    """IO tensors (name, mode, dtype, shape) and the inspector's layer JSON of a freshly built engine."""
    runtime = trt.Runtime(logger)
    if version_compatible:
        runtime.engine_host_code_allowed = True  # we built this engine ourselves a moment ago
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        last = "; ".join(logger.errors()[-3:]) or "no error was logged"
        raise DeploymtlError(f"TensorRT built an engine it cannot deserialise: {last}")
    io = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        mode = "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"
        io.append({"name": name, "mode": mode, "dtype": dtype_name(engine.get_tensor_dtype(name)),
                   "shape": [int(d) for d in engine.get_tensor_shape(name)]})
    inspector = engine.create_engine_inspector()
    layers_json = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    return io, str(layers_json)
