"""Backends behind one runner interface: torch, ONNX Runtime, TensorRT (shared/STYLE.md #5)."""
