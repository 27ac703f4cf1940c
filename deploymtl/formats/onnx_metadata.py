"""ONNX model metadata keys written by the exporter and read by runners, so every artifact describes itself."""

from __future__ import annotations

import json
from typing import Any

PREFIX = "deploymtl."
KEYS = ("version", "family", "tasks", "input", "precision", "batch", "plan_hash", "removed_prefixes")


def to_props(meta: dict[str, Any]) -> dict[str, str]:
    """{"tasks": [...], ...} -> {"deploymtl.tasks": "<json>", ...} for onnx metadata_props."""
    return {PREFIX + k: json.dumps(v) for k, v in meta.items()}


def from_props(props: dict[str, str]) -> dict[str, Any]:
    out = {}
    for k, v in props.items():
        if k.startswith(PREFIX):
            try:
                out[k[len(PREFIX):]] = json.loads(v)
            except json.JSONDecodeError:
                out[k[len(PREFIX):]] = v
    return out
