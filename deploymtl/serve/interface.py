"""What a model file declares, read without running it: tensor names, dtypes, dims and the batch maximum.

An ONNX model (`model.onnx`) declares its inputs and outputs in the graph (dims as numbers, or names for symbolic
axes, read as -1) and its batch range in deploymtl's metadata (`deploymtl.batch`, written by `deploymtl export`
from the batch specification). A TensorRT engine (`model.plan`) is opaque without TensorRT, so its manifest
`model.plan.json` (written when the engine was built) stands for it: IO names, dtypes, shapes and the batch range.
Dims here never include the batch axis; Triton's `config.pbtxt` lists them the same way when `max_batch_size > 0`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DeploymtlError

ONNX_PLATFORM = "onnxruntime_onnx"
PLAN_PLATFORM = "tensorrt_plan"
MODEL_FILES = {ONNX_PLATFORM: "model.onnx", PLAN_PLATFORM: "model.plan"}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: numpy dtype name and dims without the batch axis (-1 = variable)."""

    name: str
    dtype: str
    dims: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "dims": list(self.dims)}


@dataclass(frozen=True)
class ModelInterface:
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch: int | None
    path: Path
    meta: dict[str, Any] = field(default_factory=dict)  # deploymtl's: tasks, input (preprocessing), precision, batch

    def tensor(self, name: str, kind: str) -> TensorSpec | None:
        return next((t for t in (self.inputs if kind == "input" else self.outputs) if t.name == name), None)


def platform_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return ONNX_PLATFORM
    if suffix in (".plan", ".engine"):
        return PLAN_PLATFORM
    raise DeploymtlError(f"{path} is not a model Triton loads as it is",
                         hint="expected model.onnx or model.plan (export a pruned.pt first, or pass it to "
                              "deploymtl export --target triton)")


def read_interface(path: str | Path) -> ModelInterface:
    """The interface of `model.onnx` (graph + metadata) or `model.plan` (its manifest)."""
    p = Path(path)
    if not p.is_file():
        raise DeploymtlError(f"model file not found: {p}", hint="expected model.onnx or model.plan")
    platform = platform_of(p)
    return _onnx_interface(p) if platform == ONNX_PLATFORM else _plan_interface(p)


def _onnx_interface(path: Path) -> ModelInterface:
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    from ..formats.onnx_metadata import from_props

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # truncated, not protobuf
        raise DeploymtlError(f"cannot read ONNX model {path}: {str(exc).splitlines()[0][:160] if str(exc) else exc!r}",
                             hint="expected an ONNX file written by deploymtl export") from None
    initializers = {i.name for i in proto.graph.initializer}

    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        t = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        if not dims:
            raise DeploymtlError(f"ONNX model {path}: tensor '{value.name}' has no batch axis",
                                 hint="expected tensors shaped (N, ...) as deploymtl export writes them")
        return TensorSpec(value.name, np.dtype(tensor_dtype_to_np_dtype(t.elem_type)).name, tuple(dims[1:]))

    inputs = tuple(spec(v) for v in proto.graph.input if v.name not in initializers)
    outputs = tuple(spec(v) for v in proto.graph.output)
    meta = from_props({p.key: p.value for p in proto.metadata_props})
    batch = meta.get("batch")
    max_batch = batch.get("max") if isinstance(batch, dict) else None
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
        raise DeploymtlError(f"ONNX model {path}: metadata deploymtl.batch is {batch!r}",
                             hint="expected {'min': 1, 'opt': .., 'max': ..} as deploymtl export writes it")
    return ModelInterface(ONNX_PLATFORM, inputs, outputs, max_batch, path, meta)


def _plan_interface(path: Path) -> ModelInterface:
    from ..formats.trt_manifest import manifest_path, read_manifest

    manifest = read_manifest(manifest_path(path))
    try:
        io = [(e["mode"], TensorSpec(str(e["name"]), str(e["dtype"]), tuple(int(d) for d in e["shape"][1:])))
              for e in manifest["io"]]
        max_batch = int(manifest["batch"]["max"])
    except (KeyError, TypeError, ValueError, IndexError):
        raise DeploymtlError(f"engine manifest {manifest_path(path)}: malformed io or batch entries",
                             hint="rebuild the engine with deploymtl export --target trt") from None
    meta = {k: manifest.get(k) for k in ("tasks", "input", "precision", "batch", "tensorrt_version", "gpu")}
    return ModelInterface(PLAN_PLATFORM, tuple(t for m, t in io if m == "input"),
                          tuple(t for m, t in io if m == "output"), max_batch, path, meta)
