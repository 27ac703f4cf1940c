"""The public code's policy file (`policy*.pickle`), read without running anything it names.

The public code writes `pickle.dump({'task{t}_policy': int64 tensor (L - skip_layer, 2)}, f)`: a row per block,
`[1, 0]` = execute. A tensor pickles as `torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
requires_grad, OrderedDict())` and its storage as `torch.storage._load_from_bytes(<bytes>)`, the bytes being a
legacy `torch.save` of the storage. Torch's `_load_from_bytes` calls an unrestricted `torch.load`, and a plain
unpickler would call whatever the file names, so the file is read by `_PolicyUnpickler`, which resolves exactly
three names:

- `collections.OrderedDict` (the tensor's empty backward hooks),
- `torch._utils._rebuild_tensor_v2` (a tensor over a storage; torch checks sizes and strides against it),
- `torch.storage._load_from_bytes`, *replaced* by `torch.load(BytesIO(bytes), weights_only=True)`, which reads the
  inner storage without any callable,

and refuses every other global (and persistent ids) before anything is called: a file naming `os.system` is refused
with exit 2 and nothing runs. What comes out is then checked to be the public layout (`read_policy`).
"""

from __future__ import annotations

import collections
import io
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...errors import DeploymtlError

POLICY_HINT = ("expected the policy*.pickle the public AdaShare code writes: {'task{t}_policy': tensor (blocks, 2)}, "
               "row [1, 0] = execute")
_KEY = re.compile(r"task(\d+)_policy")


class _Refused(Exception):
    """The pickle names something a policy file never holds."""


def _storage_from_bytes(data: Any) -> Any:
    """The storage of one tensor: a legacy `torch.save` of a bare storage, read weights-only."""
    if not isinstance(data, (bytes, bytearray)):
        raise _Refused(f"a storage built from a {type(data).__name__}, not bytes")
    return torch.load(io.BytesIO(bytes(data)), weights_only=True, map_location="cpu")


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
}


class _PolicyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is None:
            raise _Refused(f"it refers to {module}.{name}")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("it holds a persistent id (a torch.save archive, not a pickle)")


def unpickle_policy(path: Path) -> Any:
    """The object the file holds, through `_PolicyUnpickler`; a refused or unreadable file is a one-line error."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DeploymtlError(f"cannot read policy file {path}: {exc.strerror or exc}", hint=POLICY_HINT) from None
    if not raw:
        raise DeploymtlError(f"policy file {path} is empty", hint=POLICY_HINT)
    try:
        return _PolicyUnpickler(io.BytesIO(raw)).load()
    except _Refused as exc:
        raise DeploymtlError(f"policy file {path}: {exc}, which a policy file never holds; refused, nothing it "
                             "names was run", hint=POLICY_HINT) from None
    except pickle.UnpicklingError as exc:
        first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        if "weights only" in str(exc).lower() or "global" in str(exc).lower():
            first = "its inner storage is not weights-only"
        raise DeploymtlError(f"policy file {path} is not a readable policy pickle ({first})",
                             hint=POLICY_HINT) from None
    except Exception as exc:  # noqa: BLE001 - truncated bytes or malformed tensor arguments: bad input, not our bug
        raise DeploymtlError(f"policy file {path} is truncated or malformed ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:120] if str(exc) else ''})", hint=POLICY_HINT) from None


@dataclass(frozen=True)
class PublicPolicy:
    """Per task (public order, `task1` first) the 0/1 execute flag of every block, after `skip_layer` padding."""

    rows: list[list[int]]  # rows[t][l] = 1 if task t+1 executes block l
    dtype: str  # the file's tensor dtype (int64 from the public code)
    skip_layer: int


def read_policy(path: str | Path, tasks: int, blocks: int, skip_layer: int = 0) -> PublicPolicy:
    """Read and check the policy file for `tasks` tasks and `blocks` blocks. With `skip_layer` k > 0 the public
    file covers the last L - k blocks and the first k always execute (the public forward prepends [1, 0] rows)."""
    p = Path(path)
    if not p.is_file():
        raise DeploymtlError(f"policy file not found: {p}", hint=POLICY_HINT)
    data = unpickle_policy(p)
    if not isinstance(data, dict):
        raise DeploymtlError(f"policy file {p} holds a {type(data).__name__}, not a dict of tensors",
                             hint=POLICY_HINT)
    numbers = {}
    for key in data:
        m = _KEY.fullmatch(key) if isinstance(key, str) else None
        if m is None:
            raise DeploymtlError(f"policy file {p}: key {key!r} is not task<t>_policy", hint=POLICY_HINT)
        numbers[int(m.group(1))] = key
    want = list(range(1, tasks + 1))
    if sorted(numbers) != want:
        raise DeploymtlError(f"policy file {p} has policies for tasks {sorted(numbers)}, the config has {tasks} "
                             f"task(s)", hint=f"expected keys {', '.join(f'task{t}_policy' for t in want)}")
    rows, dtypes = [], set()
    for t in want:
        rows.append(_rows(p, numbers[t], data[numbers[t]], blocks - skip_layer))
        dtypes.add(str(data[numbers[t]].dtype).removeprefix("torch."))
    padded = [[1] * skip_layer + r for r in rows]
    return PublicPolicy(rows=padded, dtype=",".join(sorted(dtypes)), skip_layer=skip_layer)


def _rows(path: Path, key: str, value: Any, rows: int) -> list[int]:
    """The execute flags of one (rows, 2) policy tensor: each row [1, 0] (execute) or [0, 1] (skip)."""
    where = f"policy file {path}: {key}"
    if not isinstance(value, torch.Tensor):
        raise DeploymtlError(f"{where} is a {type(value).__name__}, not a tensor", hint=POLICY_HINT)
    if value._backward_hooks:
        raise DeploymtlError(f"{where} carries backward hooks; a policy tensor has none", hint=POLICY_HINT)
    if value.ndim != 2 or value.shape[1] != 2 or value.shape[0] != rows:
        raise DeploymtlError(f"{where} has shape {list(value.shape)}, the architecture needs [{rows}, 2] (one row "
                             "per block)", hint="check the backbone (ResNet18: 8 blocks, ResNet34: 16) and skip_layer")
    v = value.detach().double()
    ok = bool(((v == 0) | (v == 1)).all()) and bool((v.sum(dim=1) == 1).all())
    if not ok:
        bad = next(i for i in range(rows) if sorted(v[i].tolist()) != [0.0, 1.0])
        raise DeploymtlError(f"{where} row {bad} is {v[bad].tolist()}, not a hard decision",
                             hint="expected [1, 0] (execute) or [0, 1] (skip) in every row")
    return [int(x) for x in value[:, 0].tolist()]
