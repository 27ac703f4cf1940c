"""Backends behind one runner interface: torch, ONNX Runtime, TensorRT.

Parity checks, the runtime and the profiler talk to the interface, never to a backend.
"""
