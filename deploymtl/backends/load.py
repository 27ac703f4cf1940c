"""Open any artifact by path behind the Runner interface: `pruned.pt` (torch), `.onnx` (ONNX Runtime),
`.plan` (TensorRT)."""

from __future__ import annotations

from pathlib import Path

from ..errors import DeploymtlError
from .base import Runner


def artifact_kind(path: str | Path) -> str:
    p = Path(path)
    suffix = p.suffix.lower()
    kinds = {".pt": "torch", ".onnx": "onnx", ".plan": "trt", ".engine": "trt"}
    if suffix not in kinds:
        raise DeploymtlError(f"unknown artifact type '{suffix or p.name}' for {p}",
                             hint="expected pruned.pt, model.onnx or model.plan")
    if not p.is_file():
        raise DeploymtlError(f"artifact not found: {p}", hint="expected an existing file")
    return kinds[suffix]


def open_runner(path: str | Path, *, provider: str = "cpu", device: str = "cpu", threads: int | None = None,
                max_batch: int | None = None, spinning: bool | None = None) -> Runner:
    """A runner for the artifact at `path`. `provider` selects the ONNX Runtime execution provider;
    `spinning` its idle threads' busy-wait (ONNX only; None: ONNX Runtime's default)."""
    kind = artifact_kind(path)
    if kind == "torch":
        from .torch_runner import TorchRunner

        return TorchRunner.from_static(path, device=device, threads=threads, max_batch=max_batch)
    if kind == "onnx":
        from .ort_runner import OrtRunner

        return OrtRunner(path, provider=provider, threads=threads, spinning=spinning)
    from .trt_runner import TrtRunner  # lazy: needs the tensorrt extra and a GPU

    return TrtRunner.from_engine(path)
