"""A Triton model directory checked offline: its config.pbtxt against Triton's schema and against its model file.

Triton's schema (modelconfig.py) rejects what protobuf can see. The rest would only surface when a real Triton
loads the model, so deploymtl checks it here, in this order, and names the first problem in one line:

- layout: `NAME/config.pbtxt`, a numeric version folder (the highest is the one Triton serves by default) holding
  `model.onnx` (platform `onnxruntime_onnx`) or `model.plan` (`tensorrt_plan`); `name` equals the folder name;
- batching: `max_batch_size` >= 1 and at most the model file's batch maximum (the batch specification's MAX);
  preferred batch sizes within 1..max_batch_size;
- tensors: the config's inputs and outputs are the model file's, by name, data type and dims (without the batch
  axis; -1 only where the model's dim is variable);
- instances: KIND_CPU / KIND_GPU / KIND_AUTO, count >= 1; a TensorRT plan runs only on a GPU, and so does the
  ONNX Runtime TensorRT accelerator;
- warm-up: every sample names a model input with its dtype and dims, a batch size within max_batch_size, and a
  file under `warmup/` of exactly one sample's bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DeploymtlError
from .interface import MODEL_FILES, ModelInterface, TensorSpec, read_interface
from .modelconfig import CONFIG_NAME, parse_config, schema, tensors

KINDS = ("KIND_CPU", "KIND_GPU", "KIND_AUTO")


@dataclass(frozen=True)
class RepositoryModel:
    """A checked model directory: its parsed config and the model file it serves."""

    name: str
    directory: Path
    config: Any  # model_config_pb2.ModelConfig
    version: int
    model_file: Path
    interface: ModelInterface


def find_model(path: str | Path, name: str | None = None) -> Path:
    """The model directory meant by `path`: a model directory itself, or a repository (then `name`, or its only
    model)."""
    p = Path(path)
    if (p / CONFIG_NAME).is_file():
        if name is not None and p.name != name:
            raise DeploymtlError(f"{p} is the model directory of '{p.name}', not of '{name}'",
                                 hint="pass the repository folder with --name, or drop --name")
        return p
    if not p.is_dir():
        raise DeploymtlError(f"{p} is not a Triton model repository", hint="expected a folder REPO with REPO/NAME/"
                             "config.pbtxt (deploymtl export ARTIFACT --target triton -o REPO writes one)")
    models = sorted(d.name for d in p.iterdir() if (d / CONFIG_NAME).is_file())
    if name is not None:
        if name not in models:
            raise DeploymtlError(f"model '{name}' is not in the repository {p}",
                                 hint=f"models there: {', '.join(models) or 'none'}")
        return p / name
    if len(models) != 1:
        raise DeploymtlError(f"{p} holds {len(models)} models ({', '.join(models) or 'no config.pbtxt found'})",
                             hint="pick one with --name" if models else "expected REPO/NAME/config.pbtxt")
    return p / models[0]


def check_model_dir(directory: str | Path) -> RepositoryModel:
    """Parse and check `directory` (see the module docstring); DeploymtlError naming the first problem."""
    d = Path(directory)
    cfg_path = d / CONFIG_NAME
    cfg = parse_config(cfg_path)
    name = cfg.name or d.name
    if name != d.name:
        raise DeploymtlError(f"{cfg_path}: name '{cfg.name}' differs from its folder '{d.name}'",
                             hint="Triton requires the model name to equal its directory name")
    if cfg.platform not in MODEL_FILES:
        raise DeploymtlError(f"{cfg_path}: platform '{cfg.platform}' is not one deploymtl writes",
                             hint=f"expected {' or '.join(MODEL_FILES)}")
    version, model_file = _model_file(d, cfg)
    interface = read_interface(model_file)
    where = f"{cfg_path}"
    _check_batching(cfg, interface, where)
    for kind in ("input", "output"):
        _check_tensors(tensors(cfg, kind), getattr(interface, f"{kind}s"), kind, model_file, where)
    _check_instances(cfg, where)
    _check_warmup(cfg, interface, d, where)
    return RepositoryModel(name, d, cfg, version, model_file, interface)


def _model_file(d: Path, cfg: Any) -> tuple[int, Path]:
    versions = sorted(int(v.name) for v in d.iterdir() if v.is_dir() and v.name.isdigit() and int(v.name) > 0)
    if not versions:
        raise DeploymtlError(f"{d} has no version folder", hint=f"expected {d}/1/{MODEL_FILES[cfg.platform]}")
    filename = cfg.default_model_filename or MODEL_FILES[cfg.platform]
    model_file = d / str(versions[-1]) / filename
    if not model_file.is_file():
        raise DeploymtlError(f"{model_file} not found", hint=f"platform {cfg.platform} loads {filename} from the "
                             "highest version folder")
    if model_file.suffix.lower() != Path(MODEL_FILES[cfg.platform]).suffix:
        raise DeploymtlError(f"{d / CONFIG_NAME}: platform {cfg.platform} does not load {model_file.name}",
                             hint=f"expected {MODEL_FILES[cfg.platform]}")
    return versions[-1], model_file


def _check_batching(cfg: Any, interface: ModelInterface, where: str) -> None:
    if cfg.max_batch_size < 1:
        raise DeploymtlError(f"{where}: max_batch_size is {cfg.max_batch_size}",
                             hint="expected >= 1: deploymtl models have a batch axis and are served batched")
    if interface.max_batch is None:
        raise DeploymtlError(f"{interface.path} records no batch maximum",
                             hint="expected a model written by deploymtl export (metadata deploymtl.batch)")
    if cfg.max_batch_size > interface.max_batch:
        raise DeploymtlError(f"{where}: max_batch_size {cfg.max_batch_size} exceeds the maximum batch "
                             f"{interface.max_batch} of {interface.path.name}",
                             hint=f"use max_batch_size <= {interface.max_batch}, or re-export with a larger "
                                  "--batch MAX")
    bad = [p for p in cfg.dynamic_batching.preferred_batch_size if not 1 <= p <= cfg.max_batch_size]
    if bad:
        raise DeploymtlError(f"{where}: preferred_batch_size {bad} outside 1..{cfg.max_batch_size}",
                             hint="expected sizes within max_batch_size")


def _check_tensors(declared: list[TensorSpec], actual: tuple[TensorSpec, ...], kind: str, model_file: Path,
                   where: str) -> None:
    names = [t.name for t in declared]
    missing = [t.name for t in actual if t.name not in names]
    unknown = [n for n in names if n not in {t.name for t in actual}]
    if unknown or missing or len(set(names)) != len(names):
        raise DeploymtlError(f"{where}: {kind}s {names} differ from {model_file.name}'s "
                             f"{[t.name for t in actual]}", hint=f"expected exactly the model's {kind}s")
    for t in declared:
        real = next(a for a in actual if a.name == t.name)
        if t.dtype != real.dtype:
            raise DeploymtlError(f"{where}: {kind} '{t.name}' has data type {t.dtype}, {model_file.name} has "
                                 f"{real.dtype}", hint="expected the model's data type")
        dims_ok = len(t.dims) == len(real.dims) and all(
            c == r or (r == -1 and c >= 1) for c, r in zip(t.dims, real.dims, strict=True))
        if not dims_ok or not t.dims:
            raise DeploymtlError(f"{where}: {kind} '{t.name}' dims {list(t.dims)} differ from {model_file.name}'s "
                                 f"{list(real.dims)}", hint="expected the model's dims without the batch axis")


def _check_instances(cfg: Any, where: str) -> None:
    mc = schema()
    for g in cfg.instance_group:
        kind = mc.ModelInstanceGroup.Kind.Name(g.kind)
        if kind not in KINDS:
            raise DeploymtlError(f"{where}: instance_group kind {kind}", hint=f"expected one of {', '.join(KINDS)}")
        if g.count < 0:
            raise DeploymtlError(f"{where}: instance_group count {g.count}", hint="expected >= 1")
        if cfg.platform == "tensorrt_plan" and kind == "KIND_CPU":
            raise DeploymtlError(f"{where}: a TensorRT plan cannot run on KIND_CPU instances", hint="use KIND_GPU")
    accelerators = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    if accelerators:
        kinds = {mc.ModelInstanceGroup.Kind.Name(g.kind) for g in cfg.instance_group}
        if cfg.platform != "onnxruntime_onnx" or "KIND_CPU" in kinds:
            raise DeploymtlError(f"{where}: gpu_execution_accelerator needs an ONNX model on KIND_GPU instances",
                                 hint="drop the accelerator or use instance_group kind KIND_GPU")


def _check_warmup(cfg: Any, interface: ModelInterface, d: Path, where: str) -> None:
    for sample in cfg.model_warmup:
        if not 1 <= sample.batch_size <= cfg.max_batch_size:
            raise DeploymtlError(f"{where}: model_warmup '{sample.name}' batch_size {sample.batch_size}",
                                 hint=f"expected 1..{cfg.max_batch_size}")
        for key, inp in sample.inputs.items():
            real = interface.tensor(key, "input")
            spec = tensors(_single_input(cfg, key, inp), "input")[0]
            if real is None or (spec.dtype, spec.dims) != (real.dtype, real.dims):
                raise DeploymtlError(f"{where}: model_warmup '{sample.name}' input '{key}' {spec.dtype} "
                                     f"{list(spec.dims)} does not match the model's inputs",
                                     hint="expected a model input with its data type and dims")
            if inp.input_data_file:
                data = d / "warmup" / inp.input_data_file
                size = math.prod(real.dims) * np.dtype(real.dtype).itemsize
                if not data.is_file() or data.stat().st_size != size:
                    got = f"{data.stat().st_size} bytes" if data.is_file() else "missing"
                    raise DeploymtlError(f"{where}: model_warmup '{sample.name}' file {data} is {got}",
                                         hint=f"expected {size} bytes: one sample of '{key}'")


def _single_input(cfg: Any, key: str, inp: Any) -> Any:
    """A throw-away config holding one warm-up input as a regular input, to reuse `tensors`."""
    tmp = type(cfg)()
    tmp.input.add(name=key, data_type=inp.data_type).dims.extend(inp.dims)
    return tmp
