"""The runner interface every backend implements.

The base class validates inputs (rank, dtype, channels, spatial size, batch within the artifact's range) and
times each call; a backend only implements `_infer`. Parity checks, `deploymtl verify`, the runtime and the
profiler talk to `Runner`, never to a backend directly.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import DeploymtlError


@dataclass(frozen=True)
class InputSpec:
    """The single image input: NCHW float32 (or uint8 raw pixels when the graph normalises them), batch in
    [min_batch, max_batch] (None = unbounded)."""

    name: str = "image"
    channels: int = 3
    height: int = 48
    width: int = 64
    dtype: str = "float32"
    min_batch: int = 1
    max_batch: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self, x: np.ndarray, where: str) -> None:
        if not isinstance(x, np.ndarray):
            raise DeploymtlError(f"{where}: input must be a numpy array, got {type(x).__name__}")
        if x.ndim != 4:
            raise DeploymtlError(f"{where}: input has shape {tuple(x.shape)}",
                                 hint=f"expected N x {self.channels} x {self.height} x {self.width}")
        if x.dtype != np.dtype(self.dtype):
            raise DeploymtlError(f"{where}: input dtype is {x.dtype}", hint=f"expected {self.dtype}")
        if tuple(x.shape[1:]) != (self.channels, self.height, self.width):
            raise DeploymtlError(f"{where}: input has shape {tuple(x.shape)}",
                                 hint=f"expected N x {self.channels} x {self.height} x {self.width}")
        n = x.shape[0]
        if n < self.min_batch or (self.max_batch is not None and n > self.max_batch):
            raise DeploymtlError(f"{where}: batch {n} is outside the artifact's range "
                                 f"{self.min_batch}..{self.max_batch}",
                                 hint="split the batch or re-export with a larger --batch MAX")


class Runner(ABC):
    """Runs one artifact: `infer(image) -> {task: array}`; thread-safe by default (one call at a time)."""

    backend: str = "base"

    def __init__(self, input_spec: InputSpec, output_names: list[str], source: str) -> None:
        self.input_spec = input_spec
        self.output_names = list(output_names)
        self.source = source
        self.last_latency_s: float | None = None
        self.notes: list[str] = []  # one-line remarks on how this backend suits the artifact (`verify` prints them)
        self._lock = threading.Lock()

    def infer(self, image: np.ndarray) -> dict[str, np.ndarray]:
        self.input_spec.check(image, f"{self.backend} runner for {self.source}")
        image = np.ascontiguousarray(image)
        with self._lock:
            t0 = time.perf_counter()
            out = self._infer(image)
            self.last_latency_s = time.perf_counter() - t0
        return out

    __call__ = infer

    @abstractmethod
    def _infer(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Backend call on a validated, contiguous batch; returns one array per output name."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release backend resources."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
