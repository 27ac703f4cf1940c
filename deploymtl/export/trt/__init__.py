"""TensorRT engines from verified ONNX graphs: lint (no GPU needed), profiles, build, manifest.

Importing this package never imports `tensorrt`; only `require_tensorrt()` and the functions that build or run an
engine do. See docs/tensorrt.md for the GPU workflow.
"""

from ...formats.trt_manifest import RuntimeInfo, check_compatible, manifest_path, read_manifest
from .build import export_trt, require_tensorrt
from .lint import LintIssue, lint_onnx
from .profile import InputProfile, derive_profiles

__all__ = ["InputProfile", "LintIssue", "RuntimeInfo", "check_compatible", "derive_profiles", "export_trt",
           "lint_onnx", "manifest_path", "read_manifest", "require_tensorrt"]
