"""ONNX Runtime runner with explicitly chosen execution providers and no silent fallback.

The runner runs the file exactly as written, with no session setting a plain `onnxruntime.InferenceSession` would
not have but the caller's thread count: a file is fast on the runtime it was shaped for at export (`deploymtl export
--for`, docs/export.md). When the file was shaped for another runtime than the one running it (or written before
the export recorded one), `notes` says so in one line each, with what to re-export; `verify` and `profile` print them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DeploymtlError
from ..formats.onnx_metadata import from_props
from ..onnxkit.cpu import amx_int8, simd_block
from ..onnxkit.load import load_onnx
from ..onnxkit.session import execution_provider, open_session
from .base import InputSpec, Runner


class OrtRunner(Runner):
    backend = "onnxruntime"

    def __init__(self, path: str | Path, provider: str = "cpu", threads: int | None = None,
                 spinning: bool | None = None) -> None:
        execution_provider(provider)  # an unknown or missing provider is named before the file is read
        load_onnx(path)  # a missing, empty or unreadable file is named here, not inside ONNX Runtime
        self.session = open_session(path, provider=provider, threads=threads, spinning=spinning, label=path)
        meta = from_props(self.session.get_modelmeta().custom_metadata_map)
        spec = _input_spec(self.session, meta, path)
        outputs = [o.name for o in self.session.get_outputs()]
        super().__init__(spec, outputs, str(path))
        self.meta = meta
        self.provider = self.session.get_providers()[0]
        self.notes = runtime_notes(meta, provider, str(path))

    def _infer(self, image: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, {self.input_spec.name: image})
        return dict(zip(self.output_names, outs, strict=True))


def runtime_notes(meta: dict, provider: str, where: str) -> list[str]:
    """One line per way the file's form (its `deploymtl.runtime` metadata) does not suit `provider`, with what to
    re-export; [] for files of other tools, fp16 files (the same in every form) and a file that suits."""
    precision, shaped = meta.get("precision"), meta.get("runtime")
    if "version" not in meta or precision not in ("fp32", "int8"):
        return []
    name = shaped.get("name") if isinstance(shaped, dict) else None
    if provider == "cpu":
        unshaped = "odd channel counts unpadded" + (", int8 ReLUs run in fp32" if precision == "int8" else "")
        if name is None:
            return [f"{where} was written before deploymtl shaped files for a runtime: ONNX Runtime CPU runs it as "
                    f"written ({unshaped}); re-export with `deploymtl export --for ort-cpu` for full speed"]
        if name != "ort-cpu":
            return [f"{where} is shaped for {name}: ONNX Runtime CPU runs it slower than the ort-cpu form "
                    f"({unshaped}); `deploymtl export --for ort-cpu` writes it for this runtime"]
        block = shaped.get("simd_block")
        if isinstance(block, int) and block < simd_block():
            return [f"{where} is padded to a SIMD block of {block} channels, this CPU's block is {simd_block()}: "
                    "re-export it on this machine for full speed"]
        amx = shaped.get("int8_amx")
        if precision == "int8" and isinstance(amx, bool) and amx != amx_int8():
            return [f"{where} was shaped on a CPU {'with' if amx else 'without'} AMX int8 and this one "
                    f"{'has none' if amx else 'has it'}: its wide int8 convolutions are "
                    f"{'left unpadded' if amx else 'padded'} for the other CPU's ONNX Runtime kernels; re-export it "
                    "on this machine for full speed"]
    elif provider == "trt" and name == "ort-cpu" and precision == "int8":
        return [f"{where} is shaped for ort-cpu (uint8 activations), which TensorRT does not read: export with "
                "`--for trt` for the TensorRT provider"]
    return []


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
