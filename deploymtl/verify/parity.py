"""Re-checking any artifact on any backend against the parity set saved beside it (`deploymtl.formats.parity`).

`deploymtl verify ARTIFACT` reloads the set and runs the artifact through `deploymtl.backends.load.open_runner`
(ONNX Runtime on CPU/CUDA/TensorRT EP, TensorRT, or the torch static model), at batch 1 and at batch N, and compares
per output (`compare.compare_outputs`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..backends.base import Runner
from ..errors import DeploymtlError
from ..formats.parity import ParityData, load_parity, parity_path
from .compare import CompareReport, Tolerance, compare_outputs, resolve_tolerances

# --backend choices -> (artifact kinds it can run, open_runner provider)
BACKENDS: dict[str, tuple[tuple[str, ...], str]] = {
    "auto": (("torch", "onnx", "trt"), "cpu"),
    "torch": (("torch",), "cpu"),
    "onnxruntime": (("onnx",), "cpu"),
    "ort-cuda": (("onnx",), "cuda"),
    "ort-trt": (("onnx",), "trt"),
    "tensorrt": (("trt",), "cpu"),
}


def saved_tolerances(data: ParityData) -> dict[str, Tolerance]:
    """The tolerances saved with a parity set, or the presets of its precision when it saved none."""
    saved = data.meta.get("tolerances", {})
    if saved:
        return {k: Tolerance(**v) for k, v in saved.items()}
    return resolve_tolerances(data.meta.get("precision", "fp32"), list(data.reference))


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
    notes: list[str] = field(default_factory=list)  # the runner's remarks (a file shaped for another runtime)

    def __bool__(self) -> bool:
        return bool(self.report)

    def to_dict(self) -> dict:
        return {"artifact": self.artifact, "backend": self.backend, "batch_sizes": self.batch_sizes,
                "outputs": {k: {**r.to_dict(), "tolerance": r.tolerance.to_dict()}
                            for k, r in self.report.results.items()},
                "notes": list(self.notes), "passed": bool(self)}


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
    tolerances = saved_tolerances(data)
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
    return ParityCheck(str(artifact), runner.backend, sizes, report, list(runner.notes))


def _find_parity(artifact: str | Path) -> Path:
    p = parity_path(artifact)
    if p.is_file():
        return p
    found = sorted(Path(artifact).parent.glob("*.parity.npz"))
    if len(found) == 1:
        return found[0]
    return p  # load_parity names it in the error
