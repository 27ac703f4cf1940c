"""The parity set beside every artifact: `<artifact stem>.parity.npz`.

It holds the verification inputs `image` (N, C, H, W) float32 -- uint8 raw pixels for a graph with its
preprocessing baked in -- (N = the batch spec's MAX, real samples of the
recipe's validation split), the PyTorch static model's reference output per task (`ref__<task>`), and a JSON header
`meta` (format, outputs, precision, tolerance per output, batch spec, source). Read with `allow_pickle=False`: an
object array is refused, never unpickled.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import DeploymtlError, validation_message
from ..io import atomic_path

PARITY_FORMAT: Final = "deploymtl.parity/1"
_REF = "ref__"


def parity_path(artifact: str | Path) -> Path:
    """`out/model.onnx` -> `out/model.parity.npz` (an ONNX model and the engine built from it share one file)."""
    p = Path(artifact)
    return p.with_name(f"{p.stem}.parity.npz")


@dataclass
class ParityData:
    inputs: np.ndarray
    reference: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)



def save_parity(path: str | Path, inputs: np.ndarray, reference: Mapping[str, np.ndarray],
                meta: dict[str, Any]) -> Path:
    """Write the parity file atomically (`meta` must be JSON-serialisable)."""
    image_dtype = np.uint8 if np.asarray(inputs).dtype == np.uint8 else np.float32  # raw pixels stay raw
    arrays = {"image": np.ascontiguousarray(inputs, dtype=image_dtype)}
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

    format: Literal[PARITY_FORMAT]
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
    if inputs is None or inputs.dtype not in (np.float32, np.uint8) or inputs.ndim != 4 or not len(inputs):
        got = "missing" if inputs is None else f"{inputs.dtype} {list(inputs.shape)}"
        raise DeploymtlError(f"{p}: image is {got}",
                             hint="expected float32 images (or uint8 raw pixels) (N, C, H, W), N >= 1")
    reference = {}
    for name in meta.outputs:
        ref = arrays.get(_REF + name)
        if ref is None or ref.ndim < 1 or len(ref) != len(inputs) or not np.issubdtype(ref.dtype, np.number):
            got = "missing" if ref is None else f"{ref.dtype} {list(ref.shape)}"
            raise DeploymtlError(f"{p}: reference output '{name}' is {got}",
                                 hint=f"expected a numeric array with {len(inputs)} samples, one per image")
        reference[name] = ref
    return ParityData(inputs, reference, meta.model_dump(mode="json", exclude_defaults=False))
