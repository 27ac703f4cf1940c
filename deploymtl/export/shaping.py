"""The shaping stage: the exported graph in the form of the runtime it is written for (`--for`, `shaped_for`).

The file written is the file every runtime reads, so it carries whatever its runtime needs to be fast; nothing
rewrites it in memory later (docs/architecture.md, "The contract"):

- `ort-cpu` (the default for `--target onnx`): `lowering.shape_for_ort_cpu`, odd channel counts zero-padded to this
  CPU's SIMD block and int8 ReLUs folded into uint8 quantisation. For ONNX Runtime (any provider) and Triton's
  onnxruntime backend; an fp32 file differs from the others by zero padding only, so TensorRT reads it too.
- `trt` (always for `--target trt`): the symmetric Q/DQ graph as quantised, unchanged, and the TensorRT lint must
  find no error in it. For TensorRT and ONNX Runtime's TensorRT provider.
- `generic`: the same graph without the lint promise, for any runtime.

fp16 graphs are the same in every form. The choice is recorded in the file (`deploymtl.runtime` metadata:
`{"name", "simd_block"}`, plus `"int8_amx"` for an int8 ort-cpu file: whether it was shaped for ONNX Runtime's AMX
int8 GEMM, `lowering.INT8_AMX_MAX_WIDTH`), in `export_report.json` (`runtime`) and in the parity set's header.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import onnx

from ..onnxkit.cpu import amx_int8, simd_block
from .context import ExportContext

# What each runtime's form is, in the words the report and the CLI help use.
RUNTIMES = {
    "ort-cpu": ("ONNX Runtime CPU: odd channel counts padded to the SIMD block, int8 ReLUs folded into uint8, head "
                "resizes as MatMuls, channel selections and sibling branches as (grouped) convolutions, channel maps "
                "folded into their readers"),
    "trt": "TensorRT: symmetric int8 Q/DQ as quantised, lint-clean",
    "generic": "any runtime: the graph as exported and quantised",
}


@dataclass
class RuntimeSection:
    """What the shaping stage wrote: the runtime, the SIMD block padded to (ort-cpu) and the rewrites it made."""

    name: str
    simd_block: int | None = None
    rewrites: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    int8_amx: bool | None = None  # int8 ort-cpu: shaped for an AMX CPU (wide int8 convolutions left unpadded)

    def metadata(self) -> dict[str, Any]:
        """The `deploymtl.runtime` value of the file."""
        amx = {} if self.int8_amx is None else {"int8_amx": self.int8_amx}
        return {"name": self.name, "simd_block": self.simd_block} | amx

    def to_dict(self) -> dict[str, Any]:
        return ({"name": self.name, "description": RUNTIMES[self.name]} | self.metadata()
                | {"rewrites": dict(self.rewrites)})


def shaped_graph(proto: onnx.ModelProto, runtime: str, precision: str) -> onnx.ModelProto:
    """`proto` in the form of `runtime`, nothing logged (the precision mix shapes every candidate it measures)."""
    if runtime != "ort-cpu" or precision == "fp16":
        return proto
    from .lowering import shape_for_ort_cpu

    return shape_for_ort_cpu(proto, simd_block())[0]


def shape_for_runtime(ctx: ExportContext, proto: onnx.ModelProto) -> tuple[onnx.ModelProto, RuntimeSection]:
    """`proto` (after the precision stage) in the form of `ctx.options.shaped_for`, and what was done."""
    runtime = ctx.options.shaped_for
    if runtime != "ort-cpu":
        return proto, RuntimeSection(runtime)
    if ctx.options.precision == "fp16":  # nothing of the CPU form applies to half precision
        return proto, RuntimeSection(runtime, simd_block(), {"padded_convs": 0, "uint8_tensors": 0})
    from .lowering import shape_for_ort_cpu

    block = simd_block()
    with ctx.timed("shape"):
        proto, counts = shape_for_ort_cpu(proto, block)
    ctx.log(f"shaped for ort-cpu (SIMD block {block}): {counts['padded_convs']} convolution(s) padded, "
            f"{counts['uint8_tensors']} tensor(s) requantised to uint8, {counts['matmul_resizes']} resize(s) as "
            f"MatMuls, {counts['selection_convs']} channel selection(s) as 1x1 convolutions, "
            f"{counts['merged_branches']} branch(es) merged into grouped convolutions, "
            f"{counts['folded_selections']} channel map(s) folded into their readers")
    amx = amx_int8() if ctx.options.precision == "int8" else None
    return proto, RuntimeSection(runtime, block, counts, int8_amx=amx)
