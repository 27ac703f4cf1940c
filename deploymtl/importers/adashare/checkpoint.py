"""The public code's checkpoint (`*_model.pth.tar`), read weights-only.

The public `save()` writes `torch.save({'mtl-net': state_dict, 'weights': Adam state, 'alphas': Adam state,
'iter': int, 'temp': float})`, in the zip format or, from torch < 1.6, the legacy one; checkpoints saved from a
GPU have storages tagged `cuda:N`. `io.load_torch` reads all of these with `weights_only=True` and every storage on
the CPU (a zip file is memory-mapped: only 'mtl-net' is used, the Adam state -- twice the weights -- is never
read). Only 'mtl-net' is used; what else the file holds is listed in the report as ignored, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...errors import DeploymtlError
from ...io import load_torch

CHECKPOINT_HINT = "expected the *_model.pth.tar the public AdaShare code saves: {'mtl-net': state dict, ...}"
IGNORED_ENTRIES = {
    "weights": "optimizer (Adam) state of the network weights: training only",
    "alphas": "optimizer (Adam) state of the policy logits: training only",
    "iter": "the training iteration it was saved at (reported, not needed)",
    "temp": "the Gumbel-softmax temperature: the deployed policy is the policy file's hard decision",
}


@dataclass
class PublicCheckpoint:
    path: Path
    state: dict[str, torch.Tensor]  # 'mtl-net', `module.` prefix removed
    entries: list[str]  # the file's top-level keys
    storage_format: str  # "zip" or "legacy"
    info: dict[str, Any] = field(default_factory=dict)  # iter, temp (when plain numbers)
    notes: list[str] = field(default_factory=list)


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return value if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None


def read_checkpoint(path: str | Path) -> PublicCheckpoint:
    """The checkpoint's network state dict and what else it holds; a file without 'mtl-net' or with anything but
    tensors in it is a one-line error naming the file."""
    p = Path(path)
    data = load_torch(p, what="AdaShare checkpoint", hint=CHECKPOINT_HINT, mmap=True)
    with p.open("rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    if not isinstance(data, dict):
        raise DeploymtlError(f"AdaShare checkpoint {p} holds a {type(data).__name__}, not the public code's dict",
                             hint=CHECKPOINT_HINT)
    if "mtl-net" not in data:
        keys = ", ".join(repr(k) for k in list(data)[:6]) or "none"
        raise DeploymtlError(f"AdaShare checkpoint {p} has no 'mtl-net' entry (top-level keys: {keys})",
                             hint=CHECKPOINT_HINT)
    net = data["mtl-net"]
    if not isinstance(net, dict) or not net:
        raise DeploymtlError(f"AdaShare checkpoint {p}: 'mtl-net' is a {type(net).__name__}"
                             f"{' (empty)' if isinstance(net, dict) else ''}, not a state dict", hint=CHECKPOINT_HINT)
    for key, value in net.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor) or value.layout != torch.strided:
            raise DeploymtlError(f"AdaShare checkpoint {p}: 'mtl-net'[{key!r}] is a {type(value).__name__}, not a "
                                 "dense tensor", hint=CHECKPOINT_HINT)
    notes = []
    if all(k.startswith("module.") for k in net):
        net = {k.removeprefix("module."): v for k, v in net.items()}
        notes.append("the state dict was saved from a DataParallel wrapper: the 'module.' prefix was removed")
    _check_scope(p, net)
    info = {k: _plain(data[k]) for k in ("iter", "temp") if k in data and _plain(data[k]) is not None}
    return PublicCheckpoint(p, dict(net), [str(k) for k in data], "zip" if is_zip else "legacy", info, notes)


def _check_scope(path: Path, state: dict[str, torch.Tensor]) -> None:
    """The two public variants deploymtl does not deploy, named as such rather than as a key mismatch."""
    if any(k.startswith("policynet.") for k in state):
        raise DeploymtlError(f"AdaShare checkpoint {path} holds an instance-specific policy network (policynet.*)",
                             hint="expected a task-specific AdaShare checkpoint (policy_model: task-specific)")
    if any(k.startswith("backbone.blocks.") and (".conv3." in k or ".bn3." in k) for k in state):
        raise DeploymtlError(f"AdaShare checkpoint {path} has Bottleneck blocks (conv3/bn3: ResNet-101)",
                             hint="expected a ResNet18 or ResNet34 (BasicBlock) checkpoint")


def ignored_entries(ckpt: PublicCheckpoint) -> list[dict[str, str]]:
    """The checkpoint's top-level entries other than 'mtl-net', each with why it is not imported."""
    return [{"what": f"checkpoint['{k}']", "why": IGNORED_ENTRIES.get(k, "not part of the public layout's network")}
            for k in ckpt.entries if k != "mtl-net"]
