"""The precision stage: fp32 stays as it is; fp16 through onnxruntime's converter (`export.fp16`); int8 static Q/DQ
calibrated on the recipe's training split (`export.quantize`). The int8 graph is checked against its scheme by the
lint that follows (`verification.lint_graph`: the Q/DQ rules run once)."""

from __future__ import annotations

import onnx

from .context import ExportContext
from .report import PrecisionSection
from .samples import take

CALIBRATION_BATCH = 8


def convert_precision(ctx: ExportContext, proto: onnx.ModelProto) -> tuple[onnx.ModelProto, PrecisionSection]:
    o = ctx.options
    with ctx.timed("precision"):
        if o.precision == "fp16":
            from .fp16 import convert_fp16

            return convert_fp16(proto), PrecisionSection()
        if o.precision in ("int8", "auto"):
            return _int8(ctx, proto)
    return proto, PrecisionSection()


def _int8(ctx: ExportContext, proto: onnx.ModelProto) -> tuple[onnx.ModelProto, PrecisionSection]:
    """int8 with accuracy control, or auto (`export.mixed`); int8 without accuracy control is all-int8. With auto
    choosing fp32, the fp32 graph and the options say so from here on (`ctx.options.precision`)."""
    from .quantize import output_layers, quantize_int8, quantized_ops, token_float_nodes

    o = ctx.options
    calib = take(ctx.samples.sets["train"].images, o.calibration_samples)
    batches = [calib[k:k + CALIBRATION_BATCH] for k in range(0, len(calib), CALIBRATION_BATCH)]
    float_layers = output_layers(proto) if o.int8_output_layers == "fp32" else []
    i = ctx.art.input
    float_tokens = token_float_nodes(proto, ctx.art.model.spec, (i["channels"], i["height"], i["width"]))
    mix = None
    if o.precision == "auto" or o.accuracy_control:
        from .mixed import mixed_int8

        with ctx.timed("precision_mix"):
            result = mixed_int8(ctx, proto, batches, float_layers + float_tokens, auto=o.precision == "auto")
        mix = result.report
        if result.precision == "fp32":
            ctx.choose_precision("fp32")
            return result.proto, PrecisionSection(mix=mix, requested=o.precision)
        proto = result.proto
    else:
        proto = quantize_int8(proto, batches, symmetric_activations=o.symmetric,
                              exclude_nodes=float_layers + float_tokens)
    ctx.choose_precision("int8")
    scheme = "int8 symmetric (TensorRT-ready)" if o.symmetric else "uint8 asymmetric (ONNX Runtime CPU only)"
    qdq = {"calibration_samples": o.calibration_samples, "calibration_split": "train", "method": "minmax",
           "scheme": f"{scheme} activations per tensor, int8 symmetric weights per channel in 7 bits (-64..64; "
                     "ONNX Runtime's x86 kernels saturate on 8 without VNNI), float bias",
           "activations": o.int8_activations, "quantized_nodes": len(quantized_ops(proto)),
           "fp32_output_layers": float_layers, "fp32_token_nodes": len(float_tokens)}
    return proto, PrecisionSection(qdq, mix=mix, requested=o.precision if o.precision != "int8" else None)
