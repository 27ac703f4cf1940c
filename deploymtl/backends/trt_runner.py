"""TensorRT runner: a `model.plan` behind the same Runner interface as ONNX Runtime and PyTorch.

Loading reads the sidecar `model.plan.json` first and checks it against this machine (TensorRT version, GPU compute
capability) so a mismatch is a clear "rebuild with ..." message instead of `deserialize_cuda_engine` returning None.
Inference uses torch CUDA tensors as device buffers and the name-based IO API of TensorRT 10+
(`set_input_shape`, `set_tensor_address`, `execute_async_v3`) on a non-default CUDA stream
(docs/tensorrt.md, section 7, "Run").
The batch may vary within the engine's optimisation profile; the base class rejects a batch outside it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import DeploymtlError, validation_message
from ..formats.trt_manifest import check_compatible, dtype_name, manifest_path, profiles_from_dict, read_manifest
from .base import InputSpec, Runner


class TrtRunner(Runner):
    backend = "tensorrt"

    def __init__(self, serialized: bytes, manifest: dict[str, Any], source: str, *,
                 allow_host_code: bool = False) -> None:
        import torch

        from .trt_env import make_logger, require_tensorrt, runtime_info

        trt = require_tensorrt()
        check_compatible(manifest, runtime_info(trt))
        self._trt, self._torch = trt, torch
        self.manifest = manifest
        self._logger = make_logger(trt)  # must outlive the runtime and engine
        self._runtime = trt.Runtime(self._logger)
        if manifest["compatibility"].get("version_compatible"):
            if not allow_host_code:
                raise DeploymtlError(f"{source} is a version-compatible engine, which embeds host code",
                                     hint="load it with allow_host_code=True only if you trust the engine's origin")
            self._runtime.engine_host_code_allowed = True
        self.engine = self._runtime.deserialize_cuda_engine(serialized)
        if self.engine is None:
            last = "; ".join(self._logger.errors()[-2:]) or "no reason was logged"
            raise DeploymtlError(f"TensorRT cannot deserialise {source}: {last}",
                                 hint="rebuild the engine on this machine with deploymtl export MODEL --target trt")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise DeploymtlError(f"TensorRT could not create an execution context for {source} (out of GPU memory?)")
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.stream = torch.cuda.Stream(device=self.device)  # non-default: execute_async_v3 must not use stream 0
        inputs, outputs = self._io()
        if len(inputs) != 1:
            raise DeploymtlError(f"{source} has {len(inputs)} inputs", hint="expected one image input")
        self._in_name, self._in_dtype = inputs[0]
        self._out = dict(outputs)
        spec = self._input_spec(manifest, source)
        super().__init__(spec, list(self._out), source)

    @classmethod
    def from_engine(cls, path: str | Path, *, allow_host_code: bool = False) -> TrtRunner:
        """Open `model.plan` with its `model.plan.json`; checks compatibility before deserialising."""
        path = Path(path)
        if not path.is_file():
            raise DeploymtlError(f"engine not found: {path}", hint="expected a model.plan from deploymtl export")
        manifest = read_manifest(manifest_path(path))
        _check_fields(manifest, manifest_path(path))
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if manifest.get("plan_sha256") and manifest["plan_sha256"] != digest:
            raise DeploymtlError(f"{path} does not match its manifest {manifest_path(path).name} (sha256 differs)",
                                 hint="rebuild the engine; engine and manifest must come from the same build")
        if not manifest.get("precision_check", {}).get("ok", True):
            raise DeploymtlError(f"{path} failed its precision check at build time "
                                 f"({manifest['precision']} was not honoured)",
                                 hint="rebuild from the ONNX of that precision")
        return cls(data, manifest, str(path), allow_host_code=allow_host_code)

    def _io(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        trt, engine = self._trt, self.engine
        inputs, outputs = [], []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            entry = (name, dtype_name(engine.get_tensor_dtype(name)))
            (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(entry)
        return inputs, outputs

    def _input_spec(self, manifest: dict[str, Any], source: str) -> InputSpec:
        """Image geometry and batch range from the engine's profile, cross-checked with the manifest's."""
        lo, _opt, hi = (tuple(int(d) for d in s) for s in self.engine.get_tensor_profile_shape(self._in_name, 0))
        recorded = profiles_from_dict(manifest["profile"], f"{source} manifest").get(self._in_name)
        if recorded is None or (recorded.min, recorded.max) != (lo, hi):
            raise DeploymtlError(f"{source}: the engine's profile {list(lo)}..{list(hi)} for '{self._in_name}' "
                                 "differs from its manifest", hint="rebuild the engine")
        if len(lo) != 4 or lo[1:] != hi[1:]:
            raise DeploymtlError(f"{source}: input '{self._in_name}' profile {list(lo)}..{list(hi)}",
                                 hint="expected N x C x H x W with only the batch dynamic")
        return InputSpec(name=self._in_name, channels=lo[1], height=lo[2], width=lo[3], dtype=self._in_dtype,
                         min_batch=lo[0], max_batch=hi[0])

    def _infer(self, image: np.ndarray) -> dict[str, np.ndarray]:
        torch, ctx = self._torch, self.context
        with torch.cuda.stream(self.stream):
            x = torch.from_numpy(image).to(self.device, non_blocking=False).contiguous()
            if not ctx.set_input_shape(self._in_name, tuple(x.shape)):
                raise DeploymtlError(f"{self.source}: TensorRT rejected input shape {tuple(x.shape)}",
                                     hint=f"expected a batch in {self.input_spec.min_batch}.."
                                          f"{self.input_spec.max_batch}")
            ctx.set_tensor_address(self._in_name, x.data_ptr())
            outs: dict[str, Any] = {}
            for name, dtype in self._out.items():
                shape = tuple(int(d) for d in ctx.get_tensor_shape(name))
                outs[name] = torch.empty(shape, dtype=getattr(torch, dtype), device=self.device)
                ctx.set_tensor_address(name, outs[name].data_ptr())
            if not ctx.execute_async_v3(self.stream.cuda_stream):
                last = "; ".join(self._logger.errors()[-2:]) or "no reason was logged"
                raise DeploymtlError(f"{self.source}: TensorRT execution failed: {last}")
        self.stream.synchronize()
        return {name: (t.float() if t.is_floating_point() else t).cpu().numpy() for name, t in outs.items()}

    def close(self) -> None:
        # Context before engine before runtime: TensorRT objects must be released in that order.
        for attr in ("context", "engine", "_runtime"):
            if hasattr(self, attr):
                setattr(self, attr, None)


class _Compatibility(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    version_compatible: bool = False


class _RunnerFields(BaseModel):
    """The manifest fields this runner reads, typed (`read_manifest` checks the format, gpu and compatibility level):
    checked before TensorRT is imported, so an edited manifest fails the same way on any machine."""

    model_config = ConfigDict(extra="allow", strict=True)

    tensorrt_version: str = Field(min_length=1)
    precision: str
    plan_sha256: str | None = None
    precision_check: dict[str, Any] = {}
    compatibility: _Compatibility


def _check_fields(manifest: dict[str, Any], path: Path) -> None:
    try:
        _RunnerFields.model_validate(manifest)
    except ValidationError as exc:
        raise DeploymtlError(validation_message(exc, f"engine manifest {path}"),
                             hint="rebuild the engine with deploymtl export MODEL --target trt") from None
    profiles_from_dict(manifest["profile"], f"engine manifest {path}")
