"""Shared by the serving tests: a verified export of the tiny test model and free loopback ports."""

from __future__ import annotations

import socket
from pathlib import Path

from export_fixtures import tiny_artifact

from deploymtl.export.exporter import export_model
from deploymtl.serve.ports import Ports


def exported_tiny(root: Path) -> Path:
    """`root/onnx/model.onnx` (+ parity, report, recipe), batch 1:2:4, from the trained tiny test model."""
    model = tiny_artifact(root / "pruned.pt")
    export_model(model, root / "onnx", batch="1:2:4", simplify_graph=False, threads=1)
    return root / "onnx" / "model.onnx"


def free_ports() -> Ports:
    """Three distinct ports the kernel reports free on loopback (held together, so they differ)."""
    socks = [socket.socket() for _ in range(3)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        http, grpc, metrics = (s.getsockname()[1] for s in socks)
    finally:
        for s in socks:
            s.close()
    return Ports("127.0.0.1", http, grpc, metrics)
