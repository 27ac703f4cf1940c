"""A second opinion from Triton itself: the tritonserver binary that PyTriton bundles, run over one model directory.

The bundled server has only the python backend, so it can never load an ONNX or TensorRT model. What it does
first is Triton's own repository poll: it parses config.pbtxt with Triton's C++ protobuf, checks the platform
name, that the model name equals its folder, and that preferred batch sizes fit max_batch_size. A config that
passes all of that fails at the next step with "unable to find backend library for backend 'onnxruntime'" (or
'tensorrt'); that, and only that, is read as "Triton accepts this config". Dims and data types are checked by
the backend, which is missing here: `validate.py` checks those against the model file. Every endpoint is off and
the run takes well under a second.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

from ..errors import DeploymtlError
from .bundled import require_bundled_triton

_MISSING_BACKEND = re.compile(r"unable to find backend library for backend '(\w+)'")
_ERROR = re.compile(r'^E\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] "?(.*?)"?\s*$')


def triton_accepts(model_dir: str | Path, timeout_s: float = 60.0) -> str:
    """Run the bundled tritonserver's repository poll on `model_dir` alone; returns the backend it stopped at
    (the config is accepted), or raises DeploymtlError with Triton's reason."""
    binary = require_bundled_triton().binary
    d = Path(model_dir).resolve()
    with tempfile.TemporaryDirectory(prefix="deploymtl-tritoncheck-") as tmp:
        (Path(tmp) / d.name).symlink_to(d, target_is_directory=True)  # a repository of this model only
        cmd = [str(binary), f"--model-repository={tmp}", f"--backend-directory={binary.parent.parent / 'backends'}",
               "--allow-http=false", "--allow-grpc=false", "--allow-metrics=false", "--exit-on-error=true",
               "--log-info=false", "--log-warning=false"]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise DeploymtlError(f"tritonserver did not finish checking {d} within {timeout_s:g} s") from None
    text = run.stdout + run.stderr
    missing = _MISSING_BACKEND.search(text)
    if missing:
        return missing[1]
    parse = re.search(r"Error parsing text-format inference\.ModelConfig: (.*)", text)
    errors = [m[1] for m in (_ERROR.match(line) for line in text.splitlines()) if m and "CudaDriver" not in m[1]]
    reason = parse[1] if parse else (errors[-1] if errors else f"exit status {run.returncode}")
    raise DeploymtlError(f"{d}: tritonserver rejects this model directory: {reason.strip()[:300]}")
