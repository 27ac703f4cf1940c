"""The one way deploymtl reads an ONNX file: a path or an already loaded proto in, a `ModelProto` out, and every
way a file can be unusable turned into a one-line `DeploymtlError` (exit 2) naming the file.

Protobuf parses an empty file, and some foreign bytes, as an empty model without complaint; such a "model" is
refused here (no graph, no node or no output) instead of failing later inside ONNX Runtime or TensorRT with a
message that does not name the file.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from ..errors import DeploymtlError

HINT = "expected a .onnx file written by deploymtl export"


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (ONNX and ONNX Runtime errors run over many lines)."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else repr(exc)


def cannot_load(path: str | Path, exc: BaseException) -> DeploymtlError:
    """The error for an ONNX file that a runtime (ONNX Runtime, TensorRT's parser) refused after it was read."""
    return DeploymtlError(f"cannot load ONNX model {path}: {first_line(exc)}", hint=HINT)


def load_onnx(model: onnx.ModelProto | str | Path, *, external_data: bool = True) -> onnx.ModelProto:
    """`model` itself when it is a proto, else the ONNX model at that path, checked to hold a graph with nodes
    and outputs. `external_data=False` leaves tensors stored beside the file unread (for structure-only reads)."""
    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise DeploymtlError(f"ONNX model not found: {path}", hint=HINT)
    try:
        proto = onnx.load(str(path), load_external_data=external_data)
    except Exception as exc:  # onnx raises DecodeError / ValueError / OSError depending on the damage
        raise DeploymtlError(f"cannot load ONNX model {path}: the file is not a readable ONNX model "
                             f"({first_line(exc, 160)})", hint=HINT) from None
    if not proto.HasField("graph") or not proto.graph.node or not proto.graph.output:
        what = "an empty file" if path.stat().st_size == 0 else "a model without a graph, nodes or outputs"
        raise DeploymtlError(f"cannot load ONNX model {path}: the file is not an ONNX model ({what})", hint=HINT)
    return proto
