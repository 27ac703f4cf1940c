"""What a deploymtl ONNX file says about itself, written by the exporter and read by runners and checks.

- the input is `image` (N, C, H, W) with the symbolic batch axis named `batch` on the input and every output;
- `deploymtl.*` metadata_props, each a JSON value (`KEYS`): version, family, tasks, input preprocessing,
  precision, batch spec, plan hash, removed prefixes, and the runtime the file is shaped for (`runtime`:
  `{"name": "ort-cpu" | "trt" | "generic", "simd_block": N or null}`; absent in files written before the export
  shaped files for a runtime);
- node names `layers.<static node>/<Op>[_k]`, so a node names the static-model module it came from (`node_scope`).
"""

from __future__ import annotations

import json
from typing import Any

import onnx

INPUT_NAME = "image"
BATCH_DIM = "batch"
PREFIX = "deploymtl."
KEYS = ("version", "family", "tasks", "input", "precision", "batch", "plan_hash", "removed_prefixes", "runtime")


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


def set_metadata(proto: onnx.ModelProto, meta: dict[str, Any]) -> None:
    """Write `deploymtl.*` metadata_props (replacing earlier values of the same keys)."""
    props = to_props(meta)
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    for key, value in [*keep, *props.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "deploymtl"


def node_scope(node: onnx.NodeProto) -> str | None:
    """The static node a node belongs to (`layers.b0_conv`), from its name `layers.b0_conv/Conv`; for a node that
    shares another's layer, the module path is that layer's (`deploymtl.ir.static_nodes`)."""
    head, sep, _ = node.name.partition("/")
    return head if sep and head else None
