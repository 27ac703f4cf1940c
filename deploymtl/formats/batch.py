"""The batch specification `MIN:OPT:MAX`: the single source of truth for the ONNX dynamic batch axis, TensorRT
optimisation profiles and serving configs."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import DeploymtlError


@dataclass(frozen=True)
class BatchSpec:
    min: int
    opt: int
    max: int

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def contains(self, n: int) -> bool:
        return self.min <= n <= self.max


def parse_batch(text: str | BatchSpec, where: str = "--batch") -> BatchSpec:
    """Parse `MIN:OPT:MAX` (or a single `N` meaning N:N:N); requires 1 <= MIN <= OPT <= MAX."""
    if isinstance(text, BatchSpec):
        return text
    parts = str(text).strip().split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise DeploymtlError(f"{where}: '{text}' is not a batch specification",
                             hint="expected MIN:OPT:MAX, e.g. 1:4:8") from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise DeploymtlError(f"{where}: '{text}' has {len(values)} fields", hint="expected MIN:OPT:MAX, e.g. 1:4:8")
    lo, opt, hi = values
    if lo < 1 or not lo <= opt <= hi:
        raise DeploymtlError(f"{where}: '{text}' needs 1 <= MIN <= OPT <= MAX", hint="e.g. 1:4:8")
    return BatchSpec(lo, opt, hi)
