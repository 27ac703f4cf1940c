"""The only place deploymtl creates an ONNX Runtime session: the execution provider is chosen explicitly and
checked to be the one running (ONNX Runtime silently falls back to the CPU otherwise), threads and log level are
set in one way, and a model ONNX Runtime refuses is a one-line error naming it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from ..errors import DeploymtlError
from .load import cannot_load

if TYPE_CHECKING:
    import onnxruntime as ort

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "trt": "TensorrtExecutionProvider"}
QUIET = 3  # ONNX Runtime's log severity "error": no warnings for graphs built in memory (probes, candidates)


def execution_provider(provider: str) -> str:
    """ONNX Runtime's name for `provider` ("cpu", "cuda", "trt"), checked to be installed."""
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise DeploymtlError(f"unknown ONNX Runtime provider '{provider}'", hint=f"expected {', '.join(PROVIDERS)}")
    wanted = PROVIDERS[provider]
    if wanted not in ort.get_available_providers():
        raise DeploymtlError(f"ONNX Runtime provider {wanted} is not available in this installation",
                             hint=f"available: {', '.join(ort.get_available_providers())}; install "
                                  "onnxruntime-gpu (deploymtl[gpu]) for CUDA/TensorRT")
    return wanted


def open_session(model: onnx.ModelProto | bytes | str | Path, *, provider: str = "cpu", threads: int | None = None,
                 spinning: bool | None = None, log_severity: int | None = None,
                 label: str | Path | None = None) -> ort.InferenceSession:
    """An `InferenceSession` on `model` (a path, serialized bytes or a proto) running on exactly `provider`.

    `threads`: intra-op threads (inter-op 1: the graphs are one chain of layers); None leaves ONNX Runtime's
    default (one per core). `spinning`: False stops idle intra-op threads from busy-waiting for the next run
    (`session.intra_op.allow_spinning` 0: right for a session sharing its CPUs, e.g. behind a server); None leaves
    ONNX Runtime's default (spinning). `log_severity`: ONNX Runtime's level (None: its default, warnings). `label`
    names the model in errors (default: the path, or "<in-memory graph>")."""
    import onnxruntime as ort

    wanted = execution_provider(provider)
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if spinning is not None:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if log_severity is not None:
        opts.log_severity_level = log_severity
    if isinstance(model, onnx.ModelProto):
        source: str | bytes = model.SerializeToString()
    else:
        source = model if isinstance(model, bytes) else str(model)
    name = label if label is not None else source if isinstance(source, str) else "<in-memory graph>"
    try:
        session = ort.InferenceSession(source, sess_options=opts, providers=[wanted])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NoSuchFile types
        raise cannot_load(name, exc) from None
    running = session.get_providers()[0]
    if running != wanted:  # no silent CPU fallback
        raise DeploymtlError(f"ONNX Runtime runs {running} although {wanted} was requested for {name}")
    return session
