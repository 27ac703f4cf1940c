"""What a service embeds: `load(path) -> Session`, then `session.infer(batch) -> {task: array}`.

A session wraps the backend runner that `deploymtl.backends.load.open_runner` picks from the file type
(`pruned.pt` static model -> torch, `.onnx` -> ONNX Runtime, `.plan` -> TensorRT), plus a supernet checkpoint
(`supernet.pt`, run in deployed mode: the dense masked baseline a comparison needs). Input checks (rank,
dtype, C/H/W, batch range) are the runner's; so is thread safety: one call runs at a time per session, which
is what a single model instance can do anyway (use one session per worker for parallel instances).

ONNX Runtime providers are explicit: `provider="cuda"` fails with a one-line error when the CUDA provider
is not installed or not the one running, instead of silently running on the CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..backends.base import InputSpec, Runner
from ..backends.load import artifact_kind, open_runner
from ..errors import DeploymtlError

PROVIDER_CHOICES = ("cpu", "cuda", "trt")


class Session:
    """A loaded artifact: `tasks`, `input_spec`, `infer(batch) -> {task: array}`; safe to share across threads."""

    def __init__(self, runner: Runner, *, path: Path, kind: str, provider: str | None, device: str,
                 threads: int | None) -> None:
        self.runner = runner
        self.path = path
        self.kind = kind
        self.provider = provider
        self.device = device
        self.threads = threads

    @property
    def tasks(self) -> list[str]:
        """Task names, in the artifact's output order."""
        return list(self.runner.output_names)

    @property
    def input_spec(self) -> InputSpec:
        return self.runner.input_spec

    @property
    def max_batch(self) -> int | None:
        """The largest batch the artifact accepts (None = no limit recorded)."""
        return self.input_spec.max_batch

    @property
    def backend(self) -> str:
        return self.runner.backend

    @property
    def notes(self) -> list[str]:
        """One-line remarks on how the backend suits the artifact, e.g. an ONNX file shaped for another runtime."""
        return list(self.runner.notes)

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch (N x C x H x W, the artifact's dtype); returns one (N, ...) array per task."""
        return self.runner.infer(batch)

    __call__ = infer

    def example(self, batch: int = 1, seed: int = 0) -> np.ndarray:
        """A random input batch of the right shape and dtype (for warm-up and profiling)."""
        s = self.input_spec
        rng = np.random.default_rng(seed)
        shape = (batch, s.channels, s.height, s.width)
        if np.dtype(s.dtype) == np.uint8:  # raw pixels
            return rng.integers(0, 256, shape, dtype=np.uint8)
        return rng.standard_normal(shape).astype(s.dtype)

    def info(self) -> dict[str, Any]:
        """JSON-able description: path, kind, backend, provider, device, threads, tasks, input."""
        return {"path": str(self.path), "kind": self.kind, "backend": self.backend, "provider": self.provider,
                "device": self.device, "threads": self.threads, "tasks": self.tasks,
                "input": self.input_spec.to_dict()}

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Session({self.path.name}, {self.kind}/{self.backend}, tasks={self.tasks})"


def load(path: str | Path, *, provider: str = "cpu", device: str = "cpu", threads: int | None = None,
         max_batch: int | None = None, spinning: bool | None = None) -> Session:
    """Open the artifact at `path`.

    provider: ONNX Runtime execution provider for `.onnx` files (cpu, cuda, trt); no fallback.
    device:   torch device for `pruned.pt` / `supernet.pt` (cpu, cuda, cuda:N).
    threads:  intra-op threads (ONNX Runtime session option; torch's process-wide setting).
    max_batch: batch limit for torch artifacts, which record none (ONNX/TensorRT carry theirs).
    spinning: False keeps ONNX Runtime's idle intra-op threads from busy-waiting (for sessions that share their
              CPUs, e.g. behind a server); None: ONNX Runtime's default. ONNX files only.
    """
    p = Path(path)
    if provider not in PROVIDER_CHOICES:
        raise DeploymtlError(f"unknown provider '{provider}'", hint=f"expected one of {', '.join(PROVIDER_CHOICES)}")
    for name, value in (("threads", threads), ("max_batch", max_batch)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise DeploymtlError(f"{name} is {value!r}", hint="expected an integer >= 1 (or None)")
    kind = artifact_kind(p)
    if kind == "onnx":
        runner = open_runner(p, provider=provider, threads=threads, spinning=spinning)
    elif kind == "torch":
        if provider != "cpu":
            raise DeploymtlError(f"provider '{provider}' applies to ONNX models, not to the torch artifact {p}",
                                 hint="choose a GPU for torch artifacts with device='cuda'")
        _check_torch_device(device)
        runner, kind = _open_torch(p, device, threads, max_batch)
    else:
        try:
            runner = open_runner(p)
        except ImportError as exc:  # the tensorrt extra (or its runner) is not installed here
            raise DeploymtlError(f"cannot run TensorRT engine {p}: {exc}",
                                 hint="install deploymtl[trt] on a machine with an NVIDIA GPU") from None
    if kind in ("static", "supernet"):
        return Session(runner, path=p, kind=kind, provider=None, device=device, threads=threads)
    on_gpu = kind == "trt" or provider != "cpu"
    return Session(runner, path=p, kind=kind, provider=provider if kind == "onnx" else None,
                   device="cuda" if on_gpu else "cpu", threads=threads)


def _check_torch_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeploymtlError(f"unknown torch device '{device}'", hint="expected cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeploymtlError(f"device '{device}' was requested but torch sees no CUDA GPU",
                             hint="use device='cpu' or install a CUDA build of torch")
    if dev.type not in ("cpu", "cuda"):
        raise DeploymtlError(f"unsupported torch device '{device}'", hint="expected cpu, cuda or cuda:N")


def _open_torch(path: Path, device: str, threads: int | None, max_batch: int | None) -> tuple[Runner, str]:
    """A static model (`pruned.pt`) through `open_runner`, or a supernet checkpoint in deployed mode."""
    try:
        return open_runner(path, device=device, threads=threads, max_batch=max_batch), "static"
    except DeploymtlError:
        if not _is_supernet(path):
            raise
    return _supernet_runner(path, device, threads, max_batch), "supernet"


def _is_supernet(path: Path) -> bool:
    from ..formats.supernet import SUPERNET_FORMAT
    from ..io import load_torch

    try:
        data = load_torch(path)
    except DeploymtlError:
        return False
    return isinstance(data, dict) and data.get("format") == SUPERNET_FORMAT


def _supernet_runner(path: Path, device: str, threads: int | None, max_batch: int | None) -> Runner:
    """The supernet with its saved decisions, in deployed (hard-decision, masked) mode."""
    from ..backends.torch_runner import TorchRunner
    from ..config import parse_recipe
    from ..models.checkpoint import load_supernet

    model, ckpt = load_supernet(path)
    data = parse_recipe(ckpt["recipe"], f"{path} (embedded recipe)").data
    spec = InputSpec(channels=3, height=data.height, width=data.width, max_batch=max_batch)
    return TorchRunner(model.set_deployed(True), spec, model.task_names, str(path), device=device, threads=threads)
