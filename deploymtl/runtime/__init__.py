"""Runtime for services: load an artifact into a thread-safe `Session`; group requests with a `Batcher`.

    from deploymtl.runtime import Batcher, load
    session = load("artifacts/export/model.onnx", provider="cpu", threads=2)
    with Batcher(session, max_batch=8, max_delay_ms=5) as batcher:
        outputs = batcher.infer(image)          # {task: array}
"""

from .batcher import Batcher, BatcherClosedError, ManualClock, QueueFullError, RequestTimeoutError
from .policy import BatchPolicy
from .session import Session, load

__all__ = ["Batcher", "BatchPolicy", "BatcherClosedError", "ManualClock", "QueueFullError", "RequestTimeoutError",
           "Session", "load"]
