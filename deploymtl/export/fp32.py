"""The fp32 stage: the static model -> ONNX (`export.onnx`), its interface checked (a malformed graph is our bug), and
the check that nothing the surgeon removed is in it (`verify.removed`)."""

from __future__ import annotations

import onnx

from ..errors import InternalError
from ..verify.removed import check_removed_parts
from . import onnx as onnx_export
from .context import ExportContext
from .report import Fp32Section


def export_fp32(ctx: ExportContext) -> tuple[onnx.ModelProto, Fp32Section]:
    art, names, chw = ctx.art, ctx.names, ctx.chw
    with ctx.timed("export"):
        proto = onnx_export.export_onnx(art.model, outputs=names, opset=ctx.options.opset, dtype=ctx.input_dtype,
                                        **chw)
    problems = onnx_export.check_structure(proto, outputs=names, **chw)
    if problems:
        raise InternalError(f"the exported ONNX graph of {ctx.where} is malformed: {problems[0]}")
    removed = check_removed_parts(proto, art.model, art.removed_prefixes)
    failures = [] if removed["passed"] else [f"removed-parts check: {removed['problems'][0]}"]
    return proto, Fp32Section(**chw, removed_parts_check=removed, failures=failures)
