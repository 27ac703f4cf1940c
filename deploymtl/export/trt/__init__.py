"""TensorRT engines from verified ONNX graphs: lint (no GPU needed), profiles, build. The engine's manifest format
is `deploymtl.formats.trt_manifest`; the engine runner is `deploymtl.backends.trt_runner`.

Importing this package never imports `tensorrt`; only the functions that build an engine do. See docs/tensorrt.md
for the GPU workflow.
"""

from .build import export_trt
from .lint import LintIssue, lint_onnx
from .profile import derive_profiles

__all__ = ["LintIssue", "derive_profiles", "export_trt", "lint_onnx"]
