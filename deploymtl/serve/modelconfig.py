"""Triton's model configuration, `config.pbtxt`: the `inference.ModelConfig` protobuf message in text format.

The message type is Triton's own (`tritonclient.grpc.model_config_pb2`, from `tritonclient[grpc]`, the `[triton]`
extra), so a config deploymtl writes is built field by field on that message and rendered by protobuf itself, and
a config it reads is parsed by protobuf's `text_format` into it: a misspelt field, a string where a number
belongs, an unknown enum value or a missing brace is a parse error with line and column. Unknown fields are never
ignored (`allow_unknown_field` would drop them silently). What the schema cannot know (do the dims match the model
file?) is checked in `validate.py`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import DeploymtlError
from .batching import Batching
from .interface import TensorSpec

CONFIG_NAME = "config.pbtxt"
# numpy dtype name -> Triton DataType (model_config.proto)
TRITON_DTYPES = {"bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
                 "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
                 "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
                 "bfloat16": "TYPE_BF16"}
NUMPY_DTYPES = {v: k for k, v in TRITON_DTYPES.items()}
TRT_PRECISIONS = ("FP32", "FP16")  # ONNX Runtime's TensorRT accelerator in Triton: precision_mode


def schema() -> ModuleType:
    """`tritonclient.grpc.model_config_pb2`, or a one-line error naming the extra."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise DeploymtlError("Triton model configurations need tritonclient (its protobuf schema)",
                             hint='install it with pip install -e ".[triton]" (or ".[serve]")') from None
    return model_config_pb2


@dataclass(frozen=True)
class Warmup:
    """A warm-up request Triton sends at load: `batch_size` copies of one sample read from `warmup/<file>`."""

    name: str
    batch_size: int
    input: TensorSpec
    data_file: str


@dataclass(frozen=True)
class ConfigSpec:
    """Everything deploymtl puts in a config.pbtxt."""

    name: str
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batching: Batching
    instance_kind: str = "KIND_CPU"
    instances: int = 1
    parameters: dict[str, str] = field(default_factory=dict)
    warmup: tuple[Warmup, ...] = ()
    trt_accelerator: str | None = None  # FP32 / FP16: ONNX Runtime's TensorRT execution accelerator (GPU)
    backend: str | None = None  # instead of a platform: "python" for the models deploymtl serve runs itself


def data_type(dtype: str) -> str:
    if dtype not in TRITON_DTYPES:
        raise DeploymtlError(f"tensor dtype {dtype} has no Triton equivalent",
                             hint=f"expected one of {', '.join(TRITON_DTYPES)}")
    return TRITON_DTYPES[dtype]


def build_config(spec: ConfigSpec) -> Any:
    """The ModelConfig message for `spec`."""
    mc = schema()
    cfg = mc.ModelConfig(name=spec.name, max_batch_size=spec.batching.max_batch_size)
    if spec.backend is not None:
        cfg.backend = spec.backend
    else:
        cfg.platform = spec.platform
    for tensors, field_ in ((spec.inputs, cfg.input), (spec.outputs, cfg.output)):
        for t in tensors:
            entry = field_.add(name=t.name, data_type=mc.DataType.Value(data_type(t.dtype)))
            entry.dims.extend(t.dims)
    cfg.dynamic_batching.preferred_batch_size.extend(spec.batching.preferred)
    cfg.dynamic_batching.max_queue_delay_microseconds = spec.batching.max_queue_delay_us
    cfg.instance_group.add(count=spec.instances, kind=mc.ModelInstanceGroup.Kind.Value(spec.instance_kind))
    for key, value in spec.parameters.items():
        cfg.parameters[key].string_value = value
    for w in spec.warmup:
        sample = cfg.model_warmup.add(name=w.name, batch_size=w.batch_size)
        inp = sample.inputs[w.input.name]
        inp.data_type = mc.DataType.Value(data_type(w.input.dtype))
        inp.dims.extend(w.input.dims)
        inp.input_data_file = w.data_file
    if spec.trt_accelerator is not None:
        acc = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        acc.parameters["precision_mode"] = spec.trt_accelerator
        acc.parameters["max_workspace_size_bytes"] = str(1 << 30)
    return cfg


def render(cfg: Any, header: str = "") -> str:
    """Protobuf text format, after `# ` comment lines (text_format skips them)."""
    from google.protobuf import text_format

    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    return "\n".join([*lines, text_format.MessageToString(cfg, use_short_repeated_primitives=True)])


def parse_config(path: str | Path) -> Any:
    """Parse a config.pbtxt into Triton's ModelConfig; one line naming file, line and column on any error."""
    from google.protobuf import text_format

    p = Path(path)
    mc = schema()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DeploymtlError(f"{p} not found", hint="expected a Triton model directory with a config.pbtxt") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DeploymtlError(f"{p} cannot be read as text ({exc})", hint="expected a config.pbtxt") from None
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as exc:  # str(exc) is "LINE:COL : message"
        raise DeploymtlError(f"{p}:{' '.join(str(exc).split())}",
                             hint="expected Triton's ModelConfig in protobuf text format") from None


def tensors(cfg: Any, kind: str) -> list[TensorSpec]:
    """The config's inputs or outputs as TensorSpecs (a data type without a numpy equivalent keeps its name)."""
    mc = schema()
    entries = cfg.input if kind == "input" else cfg.output
    return [TensorSpec(e.name, NUMPY_DTYPES.get(mc.DataType.Name(e.data_type), mc.DataType.Name(e.data_type)),
                       tuple(e.dims)) for e in entries]


def batching_of(cfg: Any, source: str) -> Batching:
    db = cfg.dynamic_batching
    return Batching(cfg.max_batch_size, tuple(db.preferred_batch_size), int(db.max_queue_delay_microseconds), source)


def instance_kind(cfg: Any) -> tuple[str, int]:
    """(kind, count) of the config's instance groups; Triton's defaults when none is given."""
    mc = schema()
    if not cfg.instance_group:
        return "KIND_AUTO", 1
    kinds = {mc.ModelInstanceGroup.Kind.Name(g.kind) for g in cfg.instance_group}
    return (kinds.pop() if len(kinds) == 1 else "mixed"), sum(g.count or 1 for g in cfg.instance_group)


def string_parameters(cfg: Any) -> dict[str, str]:
    return {k: v.string_value for k, v in cfg.parameters.items()}


def json_parameter(cfg: Any, key: str) -> Any:
    value = string_parameters(cfg).get(key)
    try:
        return None if value is None else json.loads(value)
    except json.JSONDecodeError:
        return value
