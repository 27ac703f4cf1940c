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
    """Parse a UTF-8 JSON file; a missing, unreadable, non-UTF-8 or invalid one is a one-line DeploymtlError."""
    p = Path(path)
    if not p.is_file():
        raise DeploymtlError(f"{what} not found: {p}", hint="expected an existing file")
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as exc:
        raise DeploymtlError(f"cannot read {what} {p}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise DeploymtlError(f"{what} {p} is not UTF-8 text (byte {exc.start} is 0x{exc.object[exc.start]:02x}); "
                             "is it a binary file?", hint="expected a JSON document") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DeploymtlError(f"{what} {p} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                             hint="expected a JSON document") from None


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


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip archive
_PICKLE_PROTO = 0x80  # a pickle (protocol >= 2) starts with the PROTO opcode: legacy torch files and plain pickles


def load_torch(path: str | os.PathLike[str], what: str = "checkpoint", *, hint: str | None = None,
               mmap: bool = False) -> Any:
    """Load a torch file without executing code from it (`weights_only=True`, every storage on the CPU, so files
    saved from a GPU load anywhere).

    A failure is classified for the message: a file that references Python callables or classes (the way a
    malicious pickle runs code) is refused as such; a plain pickle, a file that is no torch file at all, and a
    truncated or corrupt archive each get their own one-line error. `hint` replaces the default "written by
    deploymtl" hint (public checkpoints); `mmap` maps a zip-format file instead of reading it (a large file of
    which only some tensors are used; ignored for the legacy format, which cannot be mapped)."""
    import pickle

    import torch

    p = Path(path)
    written_by = hint or "expected a file written by deploymtl"
    if not p.is_file():
        raise DeploymtlError(f"{what} not found: {p}", hint=written_by)
    try:
        with open(p, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise DeploymtlError(f"cannot read {what} {p}: {exc.strerror or exc}") from None
    is_zip = head == _ZIP_MAGIC
    if not is_zip and (not head or head[0] != _PICKLE_PROTO):
        reason = "an empty file" if not head else "no zip or pickle header: not a torch file"
        raise DeploymtlError(f"{what} {p} is truncated, corrupt or not a weights-only torch file ({reason})",
                             hint=hint or "expected a .pt file written by deploymtl")
    try:
        return torch.load(p, map_location="cpu", weights_only=True, mmap=bool(mmap and is_zip))
    except pickle.UnpicklingError as exc:
        if "global" in str(exc).lower() or not is_zip:
            raise DeploymtlError(
                f"{what} {p} holds pickled Python objects ({_pickled_global(str(exc), is_zip)}), not weights only; "
                "refusing to load it: deploymtl never unpickles code",
                hint=hint or "expected a file written by deploymtl (tensors, numbers, strings, lists, dicts)") from None
        raise _corrupt(what, p, exc, hint) from None
    except Exception as exc:  # noqa: BLE001 - any other failure of the reader means damaged bytes, not our bug
        raise _corrupt(what, p, exc, hint) from None


def _pickled_global(message: str, is_zip: bool) -> str:
    """What the weights-only unpickler refused, for the message: `GLOBAL builtins.getattr` or a plain pickle."""
    import re

    m = re.search(r"GLOBAL ([\w.]+)", message)
    if m:
        return f"it references {m.group(1)}"
    return "a torch file with non-weight objects" if is_zip else "a plain Python pickle, not a torch weights file"


def _corrupt(what: str, path: Path, exc: Exception, hint: str | None = None) -> DeploymtlError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DeploymtlError(f"{what} {path} is truncated, corrupt or not a weights-only torch file ({first[:160]})",
                          hint=hint or "expected a file written by deploymtl")


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_json(data: Any) -> str:
    return hashlib.sha256(json.dumps(_jsonable(data), sort_keys=True).encode()).hexdigest()
