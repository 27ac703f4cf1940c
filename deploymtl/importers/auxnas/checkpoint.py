"""The release's checkpoint, read weights-only, and every key and shape checked against the config.

The release saves `torch.save({'model_state_dict': model.state_dict()})` (optimizer state may sit beside it). A
supernet (`GeneralizedMTLNASNet_L1Cut`) holds `prim_aux_alphas`, `aux_prim_alphas` (depth x depth), `prim_net.*`
and `aux_net.*` (one DPT-style network each, `network_shapes`) and `paths.{prim,aux}_paths.{s}.conv.weight` (the
1x1 fusion convolution of stage s, no bias, over the concatenated sources of its links). A checkpoint of one
single-task network (`train.py`: the same network's keys without the `prim_net.` prefix) is accepted as a
primary-only model, and the report says so. The timm model's final norm and ImageNet head (`model.norm.*`,
`model.head.*`) are saved but the release's forward never runs them: checked, then left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...errors import DeploymtlError
from ...io import load_torch
from ...tasks import TaskSpec
from .config import REASSEMBLE, VitArch

HINT = "expected the release's checkpoint: torch.save({'model_state_dict': state_dict})"
UNUSED = ("model.norm.weight", "model.norm.bias", "model.head.weight", "model.head.bias")


@dataclass
class ReleaseCheckpoint:
    path: Path
    state: dict[str, torch.Tensor]
    entries: list[str]  # the file's top-level keys
    kind: str  # "supernet" | "single-task"
    primary_prefix: str  # "prim_net." or "" (single-task)
    notes: list[str] = field(default_factory=list)

    def net(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors of one network, its prefix removed."""
        return {k.removeprefix(prefix): v for k, v in self.state.items() if k.startswith(prefix)}


def _head_shapes(arch: VitArch, task: TaskSpec) -> dict[str, tuple[int, ...]]:
    r = arch.resample
    return {"decoder.head.0.weight": (r // 2, r, 3, 3), "decoder.head.0.bias": (r // 2,),
            "decoder.head.2.weight": (32, r // 2, 3, 3), "decoder.head.2.bias": (32,),
            "decoder.head.4.weight": (task.out_channels, 32, 1, 1), "decoder.head.4.bias": (task.out_channels,)}


def _resample_shapes(arch: VitArch, i: int, stride: int) -> dict[str, tuple[int, ...]]:
    c, r = arch.width, arch.resample
    pre = f"reassembles.{i}.resample."
    out = {pre + "conv1.weight": (r, c, 1, 1), pre + "conv1.bias": (r,)}
    k = {4: 4, 8: 2, 32: 2}.get(stride)
    if k is not None:  # transposed convs (cin, cout, k, k) and the strided conv (cout, cin, k, k): both (r, r, k, k)
        out |= {pre + "conv2.weight": (r, r, k, k), pre + "conv2.bias": (r,)}
    return out


def network_shapes(arch: VitArch, task: TaskSpec) -> dict[str, tuple[int, ...]]:
    """Key -> shape of one public network (`networks/single_task.py` with the release's options), unused ones too."""
    c, r, m = arch.width, arch.resample, arch.mlp
    out: dict[str, tuple[int, ...]] = {
        "model.cls_token": (1, 1, c), "model.pos_embed": (1, arch.tokens, c),
        "model.patch_embed.proj.weight": (c, 3, arch.patch, arch.patch), "model.patch_embed.proj.bias": (c,),
        "model.norm.weight": (c,), "model.norm.bias": (c,)}
    for i in range(arch.depth):
        p = f"stages.{i}."
        for name, shape in (("norm1", (c,)), ("norm2", (c,))):
            out |= {p + name + ".weight": shape, p + name + ".bias": shape}
        for name, (o, n) in (("attn.qkv", (3 * c, c)), ("attn.proj", (c, c)), ("mlp.fc1", (m, c)), ("mlp.fc2", (c, m))):
            out |= {p + name + ".weight": (o, n), p + name + ".bias": (o,)}
    for i, stride in enumerate(REASSEMBLE):
        out |= _resample_shapes(arch, i, stride)
        for unit in ("conv1", "conv2"):
            p = f"fusions.{i}.{unit}."
            out |= {p + "conv1.weight": (r // 2, r, 1, 1), p + "conv1.bias": (r // 2,),
                    p + "conv2.weight": (r // 2, r // 2, 3, 3), p + "conv2.bias": (r // 2,),
                    p + "conv3.weight": (r, r // 2, 1, 1), p + "conv3.bias": (r,)}
    return out | _head_shapes(arch, task)


def supernet_shapes(arch: VitArch) -> dict[str, tuple[int, ...]]:
    d, c = arch.depth, arch.width
    out: dict[str, tuple[int, ...]] = {"prim_aux_alphas": (d, d), "aux_prim_alphas": (d, d)}
    out |= {f"prim_net.{k}": v for k, v in network_shapes(arch, arch.primary).items()}
    out |= {f"aux_net.{k}": v for k, v in network_shapes(arch, arch.auxiliary).items()}
    for side in ("prim_paths", "aux_paths"):
        out |= {f"paths.{side}.{s}.conv.weight": (c, c * len(arch.sources(s)), 1, 1) for s in range(d)}
    return out


def _state(p: Path, data: object) -> dict[str, torch.Tensor]:
    if not isinstance(data, dict) or "model_state_dict" not in data:
        keys = ", ".join(repr(k) for k in list(data)[:6]) if isinstance(data, dict) else type(data).__name__
        raise DeploymtlError(f"Aux-NAS checkpoint {p} has no 'model_state_dict' entry (it holds {keys or 'nothing'})",
                             hint=HINT)
    sd = data["model_state_dict"]
    if not isinstance(sd, dict) or not sd:
        raise DeploymtlError(f"Aux-NAS checkpoint {p}: 'model_state_dict' is not a non-empty state dict", hint=HINT)
    for k, v in sd.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor) or v.layout != torch.strided:
            raise DeploymtlError(f"Aux-NAS checkpoint {p}: 'model_state_dict'[{k!r}] is a {type(v).__name__}, not a "
                                 "dense tensor", hint=HINT)
        if not v.is_floating_point() or not bool(torch.isfinite(v).all()):
            raise DeploymtlError(f"Aux-NAS checkpoint {p}: 'model_state_dict'[{k!r}] is not a finite floating-point "
                                 "tensor", hint=HINT)
    return dict(sd)


def _match(p: Path, state: dict[str, torch.Tensor], want: dict[str, tuple[int, ...]], arch: VitArch) -> None:
    """Every expected key with its shape (the head's class count free), nothing else; one-line error."""
    where = (f"Aux-NAS checkpoint {p} does not match the config {arch.source} ({arch.timm_model}, emb_dim "
             f"{arch.width}, resample_dim {arch.resample})")
    hint = "check --config against the checkpoint"
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want and not k.endswith(("model.head.weight", "model.head.bias"))]
    if missing or unexpected:
        more = len(missing) + len(unexpected) - len(missing[:3]) - len(unexpected[:3])
        raise DeploymtlError(f"{where}: missing {missing[:3]}, unexpected {unexpected[:3]}"
                             f"{f' (+{more} more)' if more > 0 else ''}", hint=hint)
    bad = [f"{k} is {list(state[k].shape)}, expected {list(s)}" for k, s in want.items()
           if tuple(state[k].shape) != s]
    heads = [k for k in state if k.endswith("model.head.weight") and (state[k].ndim != 2
                                                                       or state[k].shape[1] != arch.width)]
    bad += [f"{k} is {list(state[k].shape)}, expected [classes, {arch.width}]" for k in heads]
    if bad:
        raise DeploymtlError(f"{where}: {bad[0]}{f' (+{len(bad) - 1} more)' if len(bad) > 1 else ''}", hint=hint)


def read_checkpoint(path: str | Path, arch: VitArch) -> ReleaseCheckpoint:
    """Load weights-only (memory-mapped), tell a supernet from a single-task network, check it against `arch`."""
    p = Path(path)
    data = load_torch(p, what="Aux-NAS checkpoint", hint=HINT, mmap=True)
    state = _state(p, data)
    entries = [str(k) for k in data]  # type: ignore[union-attr]  # a dict: `_state` checked
    if "prim_aux_alphas" in state or any(k.startswith(("prim_net.", "aux_net.", "paths.")) for k in state):
        _match(p, state, supernet_shapes(arch), arch)
        return ReleaseCheckpoint(p, state, entries, "supernet", "prim_net.")
    if "model.cls_token" not in state:
        raise DeploymtlError(f"Aux-NAS checkpoint {p}: neither a supernet (prim_aux_alphas, prim_net.*) nor a "
                             "single-task network (model.cls_token, stages.*)", hint=HINT)
    _match(p, state, network_shapes(arch, arch.primary), arch)
    note = (f"a single-task network checkpoint, not a supernet: deployed as the primary network alone "
            f"(task {arch.primary.name}); there are no links or auxiliary network to cut")
    return ReleaseCheckpoint(p, state, entries, "single-task", "", [note])
