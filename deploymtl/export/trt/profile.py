"""TensorRT optimisation profiles derived from the batch specification and the ONNX input dims.

The same `BatchSpec` (MIN:OPT:MAX) that set the ONNX dynamic batch axis sets the profile: for every network input,
min/opt/max shapes equal its ONNX dims with the batch axis (dim 0) replaced by MIN, OPT and MAX. Other dims must be
static: deploymtl's models take a fixed image size, and a profile cannot guess a range for them.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from ...config import BatchSpec
from ...errors import DeploymtlError
from ...formats.trt_manifest import InputProfile
from ...onnxkit.load import load_onnx


def _load_graph(model: onnx.ModelProto | str | Path) -> tuple[onnx.GraphProto, str]:
    where = "the ONNX model" if isinstance(model, onnx.ModelProto) else str(model)
    return load_onnx(model, external_data=False).graph, where


def derive_profiles(model: onnx.ModelProto | str | Path, batch: BatchSpec) -> dict[str, InputProfile]:
    """One profile entry per network input (initializers excluded), in graph order."""
    graph, where = _load_graph(model)
    init = {t.name for t in graph.initializer}
    profiles: dict[str, InputProfile] = {}
    for inp in graph.input:
        if inp.name in init:
            continue
        t = inp.type.tensor_type
        if not t.HasField("shape"):
            raise DeploymtlError(f"input '{inp.name}' of {where} has no shape",
                                 hint="re-export the ONNX with shapes (deploymtl export --target onnx)")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if not dims:
            profiles[inp.name] = InputProfile(inp.name, (), (), ())
            continue
        lead, rest = dims[0], dims[1:]
        if lead is not None and not (batch.min == batch.max == lead):
            raise DeploymtlError(
                f"input '{inp.name}' of {where} has a static batch of {lead} but --batch {batch} was requested",
                hint=f"re-export with a dynamic batch axis: deploymtl export MODEL --target onnx --batch {batch}")
        for axis, d in enumerate(rest, start=1):
            if d is None:
                raise DeploymtlError(f"input '{inp.name}' of {where} has a dynamic dimension {axis}",
                                     hint="deploymtl profiles only the batch axis; export with a fixed image size")
        profiles[inp.name] = InputProfile(inp.name, (batch.min, *rest), (batch.opt, *rest), (batch.max, *rest))
    if not profiles:
        raise DeploymtlError(f"{where} has no inputs", hint="expected the image input of a deploymtl export")
    return profiles
