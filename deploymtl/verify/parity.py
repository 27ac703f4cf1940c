"""Parity data beside every artifact, and re-checking any artifact on any backend.

`<artifact stem>.parity.npz` holds the verification inputs (N, C, H, W) float32 (N = the batch spec's MAX,
real samples of the recipe's validation split), the PyTorch static model's reference outputs per task, and a
JSON header (precision, tolerance per output, batch spec, source). `deploymtl verify ARTIFACT` reloads it and
runs the artifact through `deploymtl.backends.load.open_runner` (ONNX Runtime on CPU/CUDA/TensorRT EP, TensorRT,
or the torch static model), at batch 1 and at batch N, and compares per output (`compare.compare_outputs`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..backends.base import Runner
from ..errors import DeploymtlError, validation_message
from ..io import atomic_path
from .compare import CompareReport, Tolerance, compare_outputs, resolve_tolerances

PARITY_FORMAT = "deploymtl.parity/1"
_REF = "ref__"

# --backend choices -> (artifact kinds it can run, open_runner provider)
BACKENDS: dict[str, tuple[tuple[str, ...], str]] = {
    "auto": (("torch", "onnx", "trt"), "cpu"),
    "torch": (("torch",), "cpu"),
    "onnxruntime": (("onnx",), "cpu"),
    "ort-cuda": (("onnx",), "cuda"),
    "ort-trt": (("onnx",), "trt"),
    "tensorrt": (("trt",), "cpu"),
}


def parity_path(artifact: str | Path) -> Path:
    """`out/model.onnx` -> `out/model.parity.npz` (an ONNX model and the engine built from it share one file)."""
    p = Path(artifact)
    return p.with_name(f"{p.stem}.parity.npz")


@dataclass
class ParityData:
    inputs: np.ndarray
    reference: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    def tolerances(self) -> dict[str, Tolerance]:
        saved = self.meta.get("tolerances", {})
        if saved:
            return {k: Tolerance(**v) for k, v in saved.items()}
        return resolve_tolerances(self.meta.get("precision", "fp32"), list(self.reference))


def save_parity(path: str | Path, inputs: np.ndarray, reference: Mapping[str, np.ndarray],
                meta: dict[str, Any]) -> Path:
    """Write the parity file atomically (`meta` must be JSON-serialisable)."""
    arrays = {"image": np.ascontiguousarray(inputs, dtype=np.float32)}
    arrays.update({_REF + k: np.asarray(v) for k, v in reference.items()})
    header = {"format": PARITY_FORMAT, "outputs": list(reference), **meta}
    arrays["meta"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    return Path(path)


class _ToleranceModel(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    atol: float = Field(ge=0)
    rtol: float = Field(ge=0)
    range_rel: float = Field(default=0.0, ge=0)
    min_cosine: float | None = Field(default=None, ge=-1, le=1)


class ParityMeta(BaseModel):
    """The JSON header of a parity file (extra keys, e.g. the batch spec and source, are kept as they are)."""

    model_config = ConfigDict(extra="allow")

    format: Literal["deploymtl.parity/1"]
    outputs: list[str] = Field(min_length=1)
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    tolerances: dict[str, _ToleranceModel] = {}

    @model_validator(mode="after")
    def _consistent(self) -> ParityMeta:
        if len(set(self.outputs)) != len(self.outputs):
            raise ValueError(f"outputs repeat: {self.outputs}")
        unknown = [k for k in self.tolerances if k not in self.outputs]
        if unknown:
            raise ValueError(f"tolerances for outputs {unknown} that are not in outputs {self.outputs}")
        return self


def load_parity(path: str | Path) -> ParityData:
    """Read and validate a parity file: an .npz of plain arrays (pickled object arrays are refused, never loaded),
    its JSON header (`ParityMeta`), float32 images (N, C, H, W) and one reference per output with N samples."""
    p = Path(path)
    hint = f"expected format {PARITY_FORMAT} written by deploymtl export"
    if not p.is_file():
        raise DeploymtlError(f"parity data not found: {p}",
                             hint="expected the .parity.npz written by deploymtl export, or pass --parity FILE")
    with open(p, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    try:
        if not is_zip:  # np.load would take any other bytes for a pickle and say so
            raise ValueError("not an .npz archive")
        with np.load(p, allow_pickle=False) as z:
            header = json.loads(bytes(z["meta"]).decode("utf-8")) if "meta" in z.files else None
            if not isinstance(header, dict):
                raise ValueError("no JSON header 'meta'")
            meta = ParityMeta.model_validate(header)
            arrays = {k: z[k] for k in ["image", *(_REF + o for o in meta.outputs)] if k in z.files}
    except ValidationError as exc:
        raise DeploymtlError(f"{validation_message(exc, p)} (in its header)", hint=hint) from None
    except (OSError, KeyError, ValueError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        if "pickle" in str(exc).lower():
            raise DeploymtlError(f"parity data {p} holds pickled Python objects; refusing to load them: deploymtl "
                                 "never unpickles code", hint=hint) from None
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise DeploymtlError(f"{p} is not a deploymtl parity file ({first})", hint=hint) from None
    inputs = arrays.get("image")
    if inputs is None or inputs.dtype != np.float32 or inputs.ndim != 4 or not len(inputs):
        got = "missing" if inputs is None else f"{inputs.dtype} {list(inputs.shape)}"
        raise DeploymtlError(f"{p}: image is {got}", hint="expected float32 images (N, C, H, W), N >= 1")
    reference = {}
    for name in meta.outputs:
        ref = arrays.get(_REF + name)
        if ref is None or ref.ndim < 1 or len(ref) != len(inputs) or not np.issubdtype(ref.dtype, np.number):
            got = "missing" if ref is None else f"{ref.dtype} {list(ref.shape)}"
            raise DeploymtlError(f"{p}: reference output '{name}' is {got}",
                                 hint=f"expected a numeric array with {len(inputs)} samples, one per image")
        reference[name] = ref
    return ParityData(inputs, reference, meta.model_dump(mode="json", exclude_defaults=False))


def run_batches(runner: Runner, inputs: np.ndarray) -> tuple[dict[str, np.ndarray], list[int]]:
    """Outputs for sample 0 at batch 1, then all N samples in batches of at most the runner's max batch.

    Returns the outputs stacked as (1 + N, ...) and the batch sizes run; running batch 1 and batch N through the
    same artifact is what proves the dynamic batch axis works end to end.
    """
    cap = runner.input_spec.max_batch or len(inputs)
    chunks = [inputs[:1]] + [inputs[i:i + cap] for i in range(0, len(inputs), cap)]
    outs: dict[str, list[np.ndarray]] = {}
    for chunk in chunks:
        for name, value in runner.infer(np.ascontiguousarray(chunk)).items():
            outs.setdefault(name, []).append(np.asarray(value))
    return {k: np.concatenate(v) for k, v in outs.items()}, [len(c) for c in chunks]


def expected(reference: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The reference laid out like `run_batches`' output: sample 0, then all samples."""
    return {k: np.concatenate([v[:1], v]) for k, v in reference.items()}


@dataclass
class ParityCheck:
    """A re-check of one artifact; truthy when every output passed."""

    artifact: str
    backend: str
    batch_sizes: list[int]
    report: CompareReport

    def __bool__(self) -> bool:
        return bool(self.report)

    def to_dict(self) -> dict:
        return {"artifact": self.artifact, "backend": self.backend, "batch_sizes": self.batch_sizes,
                "outputs": {k: {**r.to_dict(), "tolerance": r.tolerance.to_dict()}
                            for k, r in self.report.results.items()},
                "passed": bool(self)}


def compare_runner(runner: Runner, inputs: np.ndarray, reference: Mapping[str, np.ndarray],
                   tolerances: Mapping[str, Tolerance]) -> tuple[CompareReport, list[int]]:
    outs, sizes = run_batches(runner, inputs)
    return compare_outputs(outs, expected(reference), tolerances), sizes


def open_for_backend(artifact: str | Path, backend: str = "auto", *, threads: int | None = None,
                     max_batch: int | None = None) -> Runner:
    """`open_runner` with a `--backend` choice checked against the artifact's kind."""
    from ..backends.load import artifact_kind, open_runner

    kinds, provider = _backend_kinds(backend)
    kind = artifact_kind(artifact)
    if kind not in kinds:
        raise DeploymtlError(f"backend '{backend}' cannot run {artifact} (a {kind} artifact)",
                             hint=f"use --backend auto or one of {[b for b, (k, _) in BACKENDS.items() if kind in k]}")
    return open_runner(artifact, provider=provider, threads=threads, max_batch=max_batch)


def _backend_kinds(backend: str) -> tuple[tuple[str, ...], str]:
    if backend not in BACKENDS:
        raise DeploymtlError(f"--backend: unknown backend '{backend}'", hint=f"expected one of {', '.join(BACKENDS)}")
    return BACKENDS[backend]


def check_artifact(artifact: str | Path, *, backend: str = "auto", parity: str | Path | None = None,
                   atol: float | None = None, rtol: float | None = None,
                   per_output: Mapping[str, Mapping[str, float]] | None = None,
                   threads: int | None = None) -> ParityCheck:
    """Re-run the saved parity inputs through `artifact` on `backend` and compare with the saved reference."""
    from ..backends.load import artifact_kind

    _backend_kinds(backend)
    artifact_kind(artifact)  # an unknown file type is named as such before its parity data is looked for
    parity_file = Path(parity) if parity else _find_parity(artifact)
    data = load_parity(parity_file)
    tolerances = data.tolerances()
    if atol is not None or rtol is not None or per_output:
        precision = data.meta.get("precision", "fp32")
        base = resolve_tolerances(precision, list(data.reference), atol=atol, rtol=rtol, per_output=per_output)
        tolerances = base
    runner = open_for_backend(artifact, backend, threads=threads, max_batch=len(data.inputs))
    try:
        spec = runner.input_spec
        if tuple(data.inputs.shape[1:]) != (spec.channels, spec.height, spec.width):
            raise DeploymtlError(f"parity data {parity_file} holds images {list(data.inputs.shape[1:])} but "
                                 f"{artifact} takes {[spec.channels, spec.height, spec.width]}",
                                 hint="pass the parity file written beside this artifact")
        missing = [k for k in data.reference if k not in runner.output_names]
        if missing:
            raise DeploymtlError(f"{artifact} has no output(s) {missing} that the parity data expects",
                                 hint=f"it has {runner.output_names}")
        report, sizes = compare_runner(runner, data.inputs, data.reference, tolerances)
    finally:
        runner.close()
    return ParityCheck(str(artifact), runner.backend, sizes, report)


def _find_parity(artifact: str | Path) -> Path:
    p = parity_path(artifact)
    if p.is_file():
        return p
    found = sorted(Path(artifact).parent.glob("*.parity.npz"))
    if len(found) == 1:
        return found[0]
    return p  # load_parity names it in the error
