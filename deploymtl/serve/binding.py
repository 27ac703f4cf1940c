"""What `deploymtl serve` puts on Triton: a model name, its tensors, batching, and what each instance loads.

From an artifact (`pruned.pt`, `model.onnx`, `model.plan`): `max_batch_size` = the artifact's maximum batch (the
batch specification's MAX; `--max-batch` for torch files, which record none), the batcher setting resolved by
`batching.py`, and the output dtypes and dims of a warm-up inference at batch 1 and at the maximum (what the
session really returns).

From a model repository (`deploymtl export --target triton`): the model directory is checked
(`validate.check_model_dir`) and its config.pbtxt read; its model file is what the instances load, with the
config's `max_batch_size`, dynamic batching, instance count and kind (KIND_GPU: ONNX Runtime's CUDA provider, or
its TensorRT provider when the config asks for the TensorRT accelerator), and `intra_op_thread_count`. The warm-up
outputs must match the config's outputs, so what Triton announces is what the session returns.

The check runs here, in the serving process, on one session that is closed afterwards; the sessions that serve
are opened by Triton's python backend, one per instance, from the same file with the same provider and threads
(python_model.py, model_store.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DeploymtlError
from ..runtime.session import Session, load
from .batching import Batching, resolve_batching
from .interface import TensorSpec
from .modelconfig import batching_of, instance_kind, string_parameters, tensors
from .repository import model_name
from .validate import check_model_dir, find_model

DEFAULT_TORCH_MAX_BATCH = 8


@dataclass(frozen=True)
class ServeOptions:
    """The `deploymtl serve` options that shape a model (ports and logging are the server's)."""

    name: str | None = None
    provider: str = "cpu"
    threads: int | None = None
    instances: int | None = None
    preferred: list[int] | None = None
    max_delay_ms: float | None = None
    profile: Path | None = None
    max_batch: int | None = None  # torch artifacts only
    spinning: bool = False  # ONNX Runtime's idle threads busy-waiting (off: they would take the server's CPUs)


@dataclass
class ServedModel:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batching: Batching
    source: Path
    model_file: Path
    provider: str = "cpu"
    threads: int | None = None
    instances: int = 1
    max_batch: int | None = None  # torch artifacts: the limit their sessions are opened with
    spinning: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    def open_session(self) -> Session:
        """A session on the served file, opened as each instance opens it (for tests and comparisons)."""
        return load(self.model_file, provider=self.provider, threads=self.threads, max_batch=self.max_batch,
                    spinning=self.spinning)

    def describe(self) -> str:
        b = self.batching
        return (f"{self.name} ({self.model_file}, tasks {', '.join(o.name for o in self.outputs)}): max batch "
                f"{b.max_batch_size}, preferred {list(b.preferred)}, queue delay {b.max_delay_ms:g} ms "
                f"({b.source}), {self.instances} instance(s)")


def load_served(path: str | Path, options: ServeOptions = ServeOptions()) -> list[ServedModel]:
    """The models to serve for PATH: one artifact, one repository model (`--name`), or every model of a repository."""
    p = Path(path)
    if p.is_dir():
        if options.max_batch is not None or options.preferred is not None or options.max_delay_ms is not None \
                or options.profile is not None:
            raise DeploymtlError("--max-batch, --preferred, --max-delay-ms and --profile apply to an artifact; a "
                                 "repository model is served with its config.pbtxt",
                                 hint="edit the config.pbtxt or re-run deploymtl export --target triton")
        if options.name is None and not (p / "config.pbtxt").is_file():
            names = sorted(d.name for d in p.iterdir() if (d / "config.pbtxt").is_file())
            if len(names) > 1:
                return [from_repository(p / n, options) for n in names]
        return [from_repository(find_model(p, options.name), options)]
    return [from_artifact(p, options)]


def from_artifact(path: Path, options: ServeOptions) -> ServedModel:
    count = options.instances or 1
    if count < 1:
        raise DeploymtlError(f"--instances {count}", hint="expected >= 1")
    torch_file = path.suffix.lower() == ".pt"
    if options.max_batch is not None and not torch_file:
        raise DeploymtlError(f"--max-batch applies to torch artifacts; {path.name} records its own maximum",
                             hint="re-export with another --batch to change it")
    max_batch = (options.max_batch or DEFAULT_TORCH_MAX_BATCH) if torch_file else None
    with load(path, provider=options.provider, threads=options.threads, max_batch=max_batch) as s:
        limit = s.max_batch or DEFAULT_TORCH_MAX_BATCH
        batching = resolve_batching(path, limit, preferred=options.preferred, max_delay_ms=options.max_delay_ms,
                                    profile=options.profile)
        outputs = _warm_up(s, batching.max_batch_size)
        spec, info = s.input_spec, s.info()
    inputs = (TensorSpec(spec.name, spec.dtype, (spec.channels, spec.height, spec.width)),)
    return ServedModel(model_name(path, options.name), inputs, outputs, batching, path, path, options.provider,
                       options.threads, count, max_batch, options.spinning, info)


def from_repository(model_dir: Path, options: ServeOptions) -> ServedModel:
    checked = check_model_dir(model_dir)
    cfg = checked.config
    kind, count = instance_kind(cfg)
    count = options.instances or count
    params = string_parameters(cfg)
    threads = options.threads or _int_parameter(params, "intra_op_thread_count", model_dir)
    provider = options.provider
    if kind == "KIND_GPU" and checked.interface.platform == "onnxruntime_onnx" and provider == "cpu":
        accelerated = cfg.optimization.execution_accelerators.gpu_execution_accelerator
        provider = "trt" if any(a.name == "tensorrt" for a in accelerated) else "cuda"
    batching = batching_of(cfg, f"{model_dir / 'config.pbtxt'}")
    with load(checked.model_file, provider=provider, threads=threads) as s:
        outputs = _warm_up(s, batching.max_batch_size)
        info = s.info()
    _check_outputs(tensors(cfg, "output"), outputs, model_dir)
    return ServedModel(checked.name, tuple(tensors(cfg, "input")), tuple(tensors(cfg, "output")), batching,
                       model_dir, checked.model_file, provider, threads, count, None, options.spinning, info)


def _int_parameter(params: dict[str, str], key: str, where: Path) -> int | None:
    value = params.get(key)
    if value is None or value == "0":  # 0: the backend's default
        return None
    if not value.isdigit():
        raise DeploymtlError(f"{where / 'config.pbtxt'}: parameter {key} is '{value}'", hint="expected an integer")
    return int(value)


def _warm_up(session: Session, max_batch: int) -> tuple[TensorSpec, ...]:
    """Run the session at batch 1 and at the maximum; the outputs' dtypes and per-sample dims."""
    for b in sorted({1, max_batch}):
        out = session.infer(session.example(b))
    return tuple(TensorSpec(k, v.dtype.name, tuple(v.shape[1:])) for k, v in out.items())


def _check_outputs(declared: list[TensorSpec], actual: tuple[TensorSpec, ...], where: Path) -> None:
    got = {t.name: t for t in actual}
    for t in declared:
        real = got.get(t.name)
        if real is None or real.dtype != t.dtype or len(real.dims) != len(t.dims) or \
                any(c not in (-1, r) for c, r in zip(t.dims, real.dims, strict=True)):
            seen = f"{real.dtype} {list(real.dims)}" if real else "nothing"
            raise DeploymtlError(f"{where / 'config.pbtxt'}: output '{t.name}' is declared {t.dtype} {list(t.dims)} "
                                 f"but the model returns {seen}", hint="re-run deploymtl export --target triton")
