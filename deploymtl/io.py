"""Atomic file writes, JSON reports and safe checkpoint loading.

A single file is written to a temporary file beside it and renamed into place, so an interrupted write never
leaves a half-written file and never clobbers a good one. A command's output directory is one unit above that:
`deploymtl.outdir.output_set` stages the whole set beside the directory and swaps it in (these helpers write
into that stage, where their per-file rename is harmless).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import DeploymtlError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    dest = Path(path)
    ensure_dir(dest.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts get the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _jsonable(obj: Any) -> Any:
    """Convert numpy/torch scalars and paths; NaN/Inf become strings so the JSON stays standard."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    return atomic_write_text(path, json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike[str], what: str = "JSON file") -> Any:
    p = Path(path)
    if not p.is_file():
        raise DeploymtlError(f"{what} not found: {p}", hint="expected an existing file")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DeploymtlError(f"{what} {p} is not valid JSON: {exc}") from None


def ensure_dir(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise DeploymtlError(f"output directory {p} exists and is a file", hint="expected a directory path")
    p.mkdir(parents=True, exist_ok=True)
    return p


def save_torch(path: str | os.PathLike[str], obj: Any) -> Path:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def load_torch(path: str | os.PathLike[str], what: str = "checkpoint") -> Any:
    """Load a torch file without executing code from it (`weights_only=True`)."""
    import pickle

    import torch

    p = Path(path)
    if not p.is_file():
        raise DeploymtlError(f"{what} not found: {p}", hint="expected a file written by deploymtl")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise DeploymtlError(
            f"{what} {p} holds pickled Python objects (a module or class), not weights only; refusing to load it",
            hint="expected a file written by deploymtl (tensors, numbers, strings, lists, dicts)",
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DeploymtlError(
            f"{what} {p} is truncated, corrupt or not a weights-only torch file ({first[:160]})",
            hint="expected a file written by deploymtl",
        ) from None


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_json(data: Any) -> str:
    return hashlib.sha256(json.dumps(_jsonable(data), sort_keys=True).encode()).hexdigest()
