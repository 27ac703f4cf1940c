"""Shared by the serving tests: a verified export of the tiny test model."""

from __future__ import annotations

from pathlib import Path

from export_fixtures import tiny_artifact

from deploymtl.export.exporter import export_model
from deploymtl.export.options import ExportOptions


def exported_tiny(root: Path) -> Path:
    """`root/onnx/model.onnx` (+ parity, report, recipe), batch 1:2:4, from the trained tiny test model."""
    model = tiny_artifact(root / "pruned.pt")
    export_model(model, root / "onnx", ExportOptions.parse({"batch": "1:2:4", "simplify": False, "threads": 1}))
    return root / "onnx" / "model.onnx"
