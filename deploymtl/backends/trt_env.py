"""TensorRT on this machine: importing it (a one-line error saying what to install where it cannot be), what the
machine offers (`runtime_info`: TensorRT version, GPU, compute capability) and a logger that keeps TensorRT's
messages for one-line failures. Shared by the engine runner and the engine builder (`deploymtl.export.trt.build`);
nothing else in deploymtl imports `tensorrt`.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any

from ..errors import DeploymtlError
from ..formats.trt_manifest import RuntimeInfo, version_tuple

log = logging.getLogger(__name__)

INSTALL = "pip install 'deploymtl[trt]'"


def require_tensorrt() -> ModuleType:
    """The `tensorrt` module, or a one-line DeploymtlError (exit 2) saying what to install and where it runs."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:  # OSError: the wheel is there but libnvinfer cannot load
        raise DeploymtlError(f"TensorRT is not importable here ({type(exc).__name__}): run {INSTALL} on a machine "
                             "with an NVIDIA GPU and TensorRT 10/11") from None
    version = str(getattr(trt, "__version__", "0"))
    if version_tuple(version)[:1] < (10,):
        raise DeploymtlError(f"TensorRT {version} is too old: deploymtl builds with TensorRT 10/11; run "
                             f"pip install -U 'deploymtl[trt]' on a machine with an NVIDIA GPU")
    import torch

    if not torch.cuda.is_available():
        raise DeploymtlError(f"TensorRT {version} is installed but no CUDA GPU is visible (torch.cuda is not "
                             f"available): run {INSTALL} on a machine with an NVIDIA GPU and a CUDA build of torch")
    return trt


def runtime_info(trt: ModuleType) -> RuntimeInfo:
    """TensorRT version, current GPU, its compute capability, and the CUDA version torch runs."""
    import torch

    dev = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(dev)
    return RuntimeInfo(tensorrt_version=str(trt.__version__), compute_capability=(int(major), int(minor)),
                       gpu_name=torch.cuda.get_device_name(dev), cuda_version=torch.version.cuda)


def make_logger(trt: ModuleType) -> Any:
    """A `trt.ILogger` that keeps messages (all but VERBOSE) so failures can be reported in one line."""

    class CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[tuple[str, str]] = []

        def log(self, severity: Any, msg: str) -> None:
            name = getattr(severity, "name", str(severity).rsplit(".", 1)[-1])
            if name == "VERBOSE":
                return
            self.messages.append((name, str(msg)))
            if name in ("INTERNAL_ERROR", "ERROR", "WARNING"):
                log.log(logging.WARNING if name == "WARNING" else logging.ERROR, "TensorRT: %s", msg)

        def errors(self) -> list[str]:
            return [m for s, m in self.messages if s in ("INTERNAL_ERROR", "ERROR")]

    return CapturingLogger()
