"""Small ONNX graphs run the way the rewrite tests check them: one thread, the CPU provider, input `x`."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort


def run_x(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    """Every output of `model` for input `x`, in a plain one-thread CPU session."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A deep copy (the rewrites edit in place)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out
