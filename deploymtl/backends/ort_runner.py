"""ONNX Runtime runner with explicitly chosen execution providers and no silent fallback.

On the CPU provider fp32 and int8 graphs run through `ort_lowering.lower_for_cpu` (odd channel counts padded to
the SIMD block, ReLUs folded into uint8 quantisation; in memory, the file is unchanged); `lowering` says what was
rewritten. `lower=False` runs the file as is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DeploymtlError
from ..formats.onnx_metadata import from_props
from ..onnxkit.load import load_onnx
from ..onnxkit.session import execution_provider, open_session
from .base import InputSpec, Runner
from .ort_lowering import lower_for_cpu


class OrtRunner(Runner):
    backend = "onnxruntime"

    def __init__(self, path: str | Path, provider: str = "cpu", threads: int | None = None,
                 lower: bool = True) -> None:
        execution_provider(provider)  # an unknown or missing provider is named before the file is read
        proto = load_onnx(path)  # a missing, empty or unreadable file is named here, not inside ONNX Runtime
        source: str | Path | bytes = path
        self.lowering: dict[str, int] = {}
        if lower and provider == "cpu":  # read once, lower in memory, one session (module docstring)
            if from_props({p.key: p.value for p in proto.metadata_props}).get("precision") in ("fp32", "int8"):
                lowered, self.lowering = lower_for_cpu(proto)
                if any(self.lowering.values()):
                    source = lowered.SerializeToString()
        self.session = open_session(source, provider=provider, threads=threads, label=path)
        meta = from_props(self.session.get_modelmeta().custom_metadata_map)
        spec = _input_spec(self.session, meta, path)
        outputs = [o.name for o in self.session.get_outputs()]
        super().__init__(spec, outputs, str(path))
        self.meta = meta
        self.provider = self.session.get_providers()[0]

    def _infer(self, image: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, {self.input_spec.name: image})
        return dict(zip(self.output_names, outs, strict=True))


def _input_spec(session, meta: dict, path: str | Path) -> InputSpec:  # session: ort.InferenceSession
    """The one image input (N, C, H, W: C/H/W fixed, N free) and the batch range the metadata records."""
    hint = "expected an ONNX file written by deploymtl export: one input image (N, C, H, W), one output per task"
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or not outputs:
        raise DeploymtlError(f"ONNX model {path} has {len(inputs)} inputs and {len(outputs)} outputs", hint=hint)
    inp = inputs[0]
    shape = list(inp.shape or [])
    if len(shape) != 4 or not all(isinstance(d, int) and d >= 1 for d in shape[1:]):
        raise DeploymtlError(f"ONNX model {path}: input '{inp.name}' has shape {shape}", hint=hint)
    dtypes = {"tensor(float)": "float32", "tensor(uint8)": "uint8"}  # uint8: raw pixels, preprocessing in the graph
    if inp.type not in dtypes:
        raise DeploymtlError(f"ONNX model {path}: input '{inp.name}' is {inp.type}",
                             hint="expected tensor(float), or tensor(uint8) for a graph with baked preprocessing")
    batch = meta.get("batch", {})
    lo, hi = (batch.get("min", 1), batch.get("max")) if isinstance(batch, dict) else (None, None)
    if not (isinstance(lo, int) and lo >= 1 and (hi is None or (isinstance(hi, int) and hi >= lo))):
        raise DeploymtlError(f"ONNX model {path}: metadata deploymtl.batch is {batch!r}",
                             hint="expected {\"min\": N, \"opt\": N, \"max\": N} with 1 <= min <= max")
    return InputSpec(name=inp.name, channels=shape[1], height=shape[2], width=shape[3], dtype=dtypes[inp.type],
                     min_batch=lo, max_batch=hi)
