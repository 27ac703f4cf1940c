"""deploymtl: deploy searched multi-task vision models as fast, verified artifacts.

Pipeline (one sub-package per stage):
    data -> models (supernets) -> train (search) -> surgery (physical pruning)
    -> export (onnx, trt) -> verify (parity) -> profile (batching, latency) -> runtime (services)
"""

__version__ = "0.1.0"
