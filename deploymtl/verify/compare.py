"""The comparison core: every numeric comparison of outputs against reference outputs in deploymtl (export parity,
`deploymtl verify`, TensorRT parity, localisation, and the surgeon's static-vs-supernet parity) computes its
statistics and its verdict here, so each field means one thing in every report.

An element passes when ``|out - ref| <= atol_eff + rtol * |ref|`` with ``atol_eff = atol + range_rel * max|ref|``
(numpy's `allclose` rule, plus an optional term relative to the output's dynamic range: int8 errors scale with the
quantisation step, which is a fraction of each tensor's range, not of each element). An output passes when every
element passes, no NaN/Inf appears that the reference does not have, and (if set) the cosine similarity of the
flattened tensors reaches `min_cosine`.

Statistics carried by every result, pass or fail (arrays of shape (N, ...) compared elementwise, over the elements
where both are finite):
- `max_abs` = max |out - ref|; `mean_abs` = mean |out - ref|;
- `max_rel` = max |out - ref| / |ref| over the elements with |ref| > atol_eff, the tolerance's absolute floor:
  below it the absolute bound is what decides, and relative errors of near-zero references are meaningless (an
  int8 ReLU output of 1e-5 off by one step reads as 1000x). Elements of a zero reference are never divided by;
- `cosine` = <out, ref> / (|out| |ref|) over the flattened tensors;
- `nan_inf` = number of NaN/Inf elements in `out` where `ref` is finite;
- `atol_needed` = the smallest `atol` that would have passed at the given `rtol` and `range_rel`.

`Accumulator` streams these over batches (the surgeon's parity runs both models batch by batch); `compare_arrays`
is one batch. Presets per precision (`PRESETS`, reasoning beside them) bound the errors measured on the project's
models with margin; any field can be overridden globally (`--atol/--rtol`) or per output (`--tol TASK=ATOL[:RTOL]`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

import numpy as np

from ..errors import DeploymtlError, InternalError


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    range_rel: float = 0.0
    min_cosine: float | None = None

    def effective_atol(self, peak: float) -> float:
        """atol_eff = atol + range_rel * max|ref| for an output whose largest finite |ref| is `peak`."""
        return self.atol + self.range_rel * peak

    def to_dict(self) -> dict:
        return asdict(self)


# fp32: ONNX Runtime and PyTorch differ by reassociation only (1e-6 relative on these models); 1e-4/1e-3 leaves
# room for deep graphs. fp16: weights and activations rounded to 11 bits (2^-11 ~ 5e-4 relative per op, compounding
# over ~40 layers), so 1% of the range. int8: one quantisation step is range/127 per tensor; errors of a few steps
# survive a network, so elementwise bounds are loose (10% of the range) and the cosine carries the judgement. The
# task-metric gate (`metrics_gate`) is what decides whether reduced precision is acceptable.
PRESETS: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-3),
    "fp16": Tolerance(atol=1e-3, rtol=1e-2, range_rel=1e-2, min_cosine=0.9999),
    "int8": Tolerance(atol=1e-3, rtol=0.0, range_rel=0.1, min_cosine=0.99),
}


def preset(precision: str) -> Tolerance:
    if precision not in PRESETS:
        raise DeploymtlError(f"unknown precision '{precision}'", hint=f"expected one of {', '.join(PRESETS)}")
    return PRESETS[precision]


def resolve_tolerances(precision: str, outputs: list[str], *, atol: float | None = None, rtol: float | None = None,
                       per_output: Mapping[str, Tolerance | Mapping[str, float]] | None = None
                       ) -> dict[str, Tolerance]:
    """Tolerance per output name: the precision's preset, then global `atol`/`rtol`, then per-output overrides."""
    for flag, value in ("atol", atol), ("rtol", rtol):
        if value is not None and (not math.isfinite(value) or value < 0):
            raise DeploymtlError(f"--{flag} {value} must be a finite number >= 0")
    base = preset(precision)
    if atol is not None:
        base = replace(base, atol=float(atol))
    if rtol is not None:
        base = replace(base, rtol=float(rtol))
    out = {name: base for name in outputs}
    for name, tol in (per_output or {}).items():
        if name not in out:
            raise DeploymtlError(f"tolerance override for unknown output '{name}'", hint=f"expected one of {outputs}")
        out[name] = tol if isinstance(tol, Tolerance) else replace(base, **dict(tol))
    return out


def parse_output_tolerance(text: str) -> tuple[str, dict[str, float]]:
    """`TASK=ATOL[:RTOL]` (CLI `--tol seg=1e-3:1e-2`) -> ("seg", {"atol": 1e-3, "rtol": 1e-2})."""
    name, sep, rest = text.partition("=")
    parts = rest.split(":") if sep else []
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if not name or not 1 <= len(values) <= 2 or any(not math.isfinite(v) or v < 0 for v in values):
        raise DeploymtlError(f"--tol '{text}' is not a per-output tolerance", hint="expected TASK=ATOL[:RTOL], "
                             "e.g. seg=1e-3:1e-2")
    return name, dict(zip(("atol", "rtol"), values, strict=False))


@dataclass
class CompareResult:
    """One output's comparison; truthy when it passed, and always carrying its statistics."""

    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    mean_abs: float
    cosine: float
    nan_inf: int
    atol_needed: float
    tolerance: Tolerance
    passed: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    def summary(self) -> str:
        verdict = "ok" if self.passed else f"FAILED ({self.reason})"
        return (f"{self.name}: max_abs {self.max_abs:.3g} max_rel {self.max_rel:.3g} mean_abs {self.mean_abs:.3g} "
                f"cosine {self.cosine:.6f} nan/inf {self.nan_inf} (atol needed {self.atol_needed:.3g}) {verdict}")


class Accumulator:
    """One output's comparison over chunks of samples (axis 0): `add(out, ref)` per chunk, then `result()`.

    Exact for any number of chunks when `range_rel` is 0; with a range term the floor of `max_rel` needs the
    whole output's range, so such a tolerance takes a single chunk (`compare_arrays`)."""

    def __init__(self, name: str, tol: Tolerance) -> None:
        self.name, self.tol = name, tol
        self.shape: tuple[int, ...] | None = None
        self.elements = 0  # every element added, finite or not
        self._finite = 0  # elements where both are finite (the statistics' population)
        self._max_abs = self._sum_abs = self._max_rel = self._peak = 0.0
        self._need = 0.0  # max(|out - ref| - rtol * |ref|) over the population
        self._dot = self._out_sq = self._ref_sq = 0.0
        self._nan_inf = 0
        self._mismatch = ""

    def add(self, out: np.ndarray, ref: np.ndarray) -> None:
        out, ref = np.asarray(out), np.asarray(ref)
        if self._mismatch:
            return
        if out.shape != ref.shape:
            self._mismatch = f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
            self.shape = tuple(out.shape)
            return
        if self.shape is None:
            self.shape = tuple(out.shape)
        elif self.tol.range_rel:
            raise InternalError(f"comparison of {self.name}: a range-relative tolerance is compared in one chunk")
        elif not out.ndim or out.shape[1:] != self.shape[1:]:
            self._mismatch = f"chunk shape {tuple(out.shape)} does not continue {self.shape}"
            return
        else:
            self.shape = (self.shape[0] + out.shape[0], *self.shape[1:])
        o = out.astype(np.float64, copy=False)
        r = ref.astype(np.float64, copy=False)
        finite_ref = np.isfinite(r)
        self._nan_inf += int((~np.isfinite(o) & finite_ref).sum())
        both = finite_ref & np.isfinite(o)
        diff = np.abs(o - r)[both]
        rabs = np.abs(r[both])
        self.elements += out.size
        self._finite += diff.size
        if finite_ref.any():
            self._peak = max(self._peak, float(np.max(np.abs(r[finite_ref]))))
        if diff.size:
            self._max_abs = max(self._max_abs, float(diff.max()))
            self._sum_abs += float(diff.sum())
            self._need = max(self._need, float(np.max(diff - self.tol.rtol * rabs)))
            big = rabs > self.tol.effective_atol(self._peak)  # max_rel's floor (module docstring)
            if big.any():
                self._max_rel = max(self._max_rel, float((diff[big] / rabs[big]).max()))
        of, rf = np.where(both, o, 0.0).ravel(), np.where(both, r, 0.0).ravel()
        self._dot += float(np.dot(of, rf))
        self._out_sq += float(of.dot(of))
        self._ref_sq += float(rf.dot(rf))

    def result(self) -> CompareResult:
        tol = self.tol
        if self._mismatch or self.shape is None:
            return CompareResult(self.name, self.shape or (), math.inf, math.inf, math.inf, 0.0, 0, math.inf, tol,
                                 False, self._mismatch or "output missing")
        mean_abs = self._sum_abs / self._finite if self._finite else 0.0
        norm = math.sqrt(self._out_sq) * math.sqrt(self._ref_sq)
        cosine = self._dot / norm if norm > 0 else (1.0 if self._max_abs == 0 else 0.0)
        atol_needed = max(self._need - tol.range_rel * self._peak, 0.0)
        reasons = []
        if self._nan_inf:
            reasons.append(f"{self._nan_inf} NaN/Inf")
        if atol_needed > tol.atol:
            reasons.append(f"max_abs {self._max_abs:.3g} exceeds atol {tol.effective_atol(self._peak):.3g} + rtol "
                           f"{tol.rtol:g}*|ref|")
        if tol.min_cosine is not None and cosine < tol.min_cosine:
            reasons.append(f"cosine {cosine:.6f} < {tol.min_cosine}")
        return CompareResult(self.name, self.shape, self._max_abs, self._max_rel, mean_abs, cosine, self._nan_inf,
                             atol_needed, tol, not reasons, "; ".join(reasons))


def compare_arrays(name: str, out: np.ndarray, ref: np.ndarray, tol: Tolerance) -> CompareResult:
    """Compare one output (any shape; both arrays are cast to float64 for the statistics)."""
    acc = Accumulator(name, tol)
    acc.add(out, ref)
    return acc.result()


@dataclass
class CompareReport:
    """All outputs of one comparison; truthy when every output passed."""

    results: dict[str, CompareResult]

    def __bool__(self) -> bool:
        return all(self.results.values())

    @property
    def passed(self) -> bool:
        return bool(self)

    @property
    def failed(self) -> list[str]:
        return [k for k, r in self.results.items() if not r]

    def __getitem__(self, name: str) -> CompareResult:
        return self.results[name]

    def to_dict(self) -> dict:
        return {name: r.to_dict() for name, r in self.results.items()}

    def summary(self) -> str:
        return "\n".join(r.summary() for r in self.results.values())


def compare_outputs(outputs: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
                    tolerances: Mapping[str, Tolerance] | Tolerance) -> CompareReport:
    """Compare every reference output; an output missing from `outputs` fails with that reason."""
    results = {}
    for name, ref in reference.items():
        tol = tolerances if isinstance(tolerances, Tolerance) else tolerances[name]
        if name not in outputs:
            results[name] = CompareResult(name, tuple(np.shape(ref)), math.inf, math.inf, math.inf, 0.0, 0, math.inf,
                                          tol, False, "output missing")
        else:
            results[name] = compare_arrays(name, outputs[name], ref, tol)
    return CompareReport(results)
