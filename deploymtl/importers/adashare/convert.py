"""Public AdaShare checkpoint + policy -> deploymtl's AdaShare supernet with the policy fixed, and its recipe.

The public network (`MTL2` with `Deeplab_ResNet_Backbone`) and deploymtl's `AdaShareSupernet` compute the same thing
(docs/methods.md, "Importing public AdaShare checkpoints"); only the names differ. With `j` the flat block index
(segment-major) and `j0(s)` the first block of segment s:

    backbone.conv1.weight / backbone.bn1.*                 -> stem.conv.conv.weight / stem.conv.bn.*
    backbone.blocks.{s}.{b}.{conv1,bn1,conv2,bn2}.*         -> blocks.{j}.body.{conv1,bn1,conv2,bn2}.*
    backbone.ds.{s}.0.weight / backbone.ds.{s}.1.*          -> blocks.{j0(s)}.ds.conv.weight / blocks.{j0(s)}.ds.bn.*
    task{t}_fc1_c{k}.conv{1,2,3}.{weight,bias}              -> heads.{task t}.branches.{k}.conv{1,2,3}.*
    task{t}_logits                                          -> not imported (a re-train checkpoint holds the
                                                               initial logits, not the searched ones)

Widths are read from the tensors (`backbone.conv1.weight` gives the first segment's width, `task1_fc1_c0.conv1` the
ASPP hidden size), then every expected key is checked to be present with the shape the architecture implies, and
no other key may be there. The policy is the file's, under the rule "imported"; nothing re-derives it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from ...errors import DeploymtlError, InternalError
from ...families import build_supernet
from ...formats.supernet import load_weights
from ...models.adashare import AdaShareSupernet
from .architecture import CAFFE_MEAN_BGR, PublicArchitecture
from .checkpoint import PublicCheckpoint
from .policy import PublicPolicy

RULE = "imported"
_LOGITS = re.compile(r"task\d+_logits")
_DEPLOYMTL_ONLY = re.compile(r"logits\..*|temperature|curriculum_k|policy")  # no public counterpart


def public_key(key: str, model: AdaShareSupernet) -> str | None:
    """The public state-dict key of deploymtl key `key` (None for deploymtl-only entries)."""
    if _DEPLOYMTL_ONLY.fullmatch(key):
        return None
    if key.startswith("stem.conv.conv."):
        return "backbone.conv1." + key.removeprefix("stem.conv.conv.")
    if key.startswith("stem.conv.bn."):
        return "backbone.bn1." + key.removeprefix("stem.conv.bn.")
    m = re.fullmatch(r"blocks\.(\d+)\.(body|ds)\.(\w+)\.(\w+)", key)
    if m:
        slot = model.slots[int(m.group(1))]
        first = next(s.index for s in model.slots if s.segment == slot.segment)
        if m.group(2) == "body":
            return f"backbone.blocks.{slot.segment}.{slot.index - first}.{m.group(3)}.{m.group(4)}"
        return f"backbone.ds.{slot.segment}.{'0' if m.group(3) == 'conv' else '1'}.{m.group(4)}"
    m = re.fullmatch(r"heads\.(\w+)\.branches\.(\d+)\.(conv\d)\.(\w+)", key)
    if m:
        t = model.task_names.index(m.group(1)) + 1
        return f"task{t}_fc1_c{m.group(2)}.{m.group(3)}.{m.group(4)}"
    raise InternalError(f"no public AdaShare name for supernet key {key}")  # our mapping is incomplete


def _width(state: dict[str, torch.Tensor], key: str, axis: int, default: int) -> int:
    t = state.get(key)
    return int(t.shape[axis]) if isinstance(t, torch.Tensor) and t.ndim > axis else default


def model_section(arch: PublicArchitecture, ckpt: PublicCheckpoint) -> dict[str, Any]:
    """The recipe's `model:` section: depth from the architecture, widths from the tensors."""
    return {"blocks": arch.layers, "width": _width(ckpt.state, "backbone.conv1.weight", 0, 64), "head": "aspp",
            "head_hidden": _width(ckpt.state, "task1_fc1_c0.conv1.weight", 0, 1024), "in_channels": 3}


@dataclass
class KeyMap:
    """deploymtl key -> public key for every imported tensor, and what was left out."""

    keys: dict[str, str]
    filled: list[str] = field(default_factory=list)  # deploymtl keys given their default (num_batches_tracked)
    logits: list[str] = field(default_factory=list)  # the public task logits, not imported


def map_keys(model: AdaShareSupernet, arch: PublicArchitecture, ckpt: PublicCheckpoint) -> KeyMap:
    """Check the public keys and shapes against the architecture; one-line error naming the first mismatches."""
    where = f"AdaShare checkpoint {ckpt.path} does not match the architecture ({arch.backbone}, tasks " \
            f"{', '.join(f'{t.name}:{t.classes}' for t in arch.tasks)})"
    hint = "check --config (or --backbone / --tasks) against the checkpoint"
    ours = model.state_dict()
    mapping = KeyMap({})
    missing, shapes = [], []
    for key, ref in ours.items():
        pub = public_key(key, model)
        if pub is None:
            continue
        if pub not in ckpt.state:
            (mapping.filled if key.endswith("num_batches_tracked") else missing).append(pub)
            continue
        got = ckpt.state[pub]
        if tuple(got.shape) != tuple(ref.shape):
            shapes.append(f"{pub} is {list(got.shape)}, expected {list(ref.shape)}")
        mapping.keys[key] = pub
    known = set(mapping.keys.values())
    mapping.logits = [k for k in ckpt.state if _LOGITS.fullmatch(k)]
    unexpected = [k for k in ckpt.state if k not in known and k not in mapping.logits]
    if missing or unexpected:
        more = len(missing) + len(unexpected) - len(missing[:3]) - len(unexpected[:3])
        raise DeploymtlError(f"{where}: missing {missing[:3]}, unexpected {unexpected[:3]}"
                             f"{f' (+{more} more)' if more > 0 else ''}", hint=hint)
    if shapes:
        raise DeploymtlError(f"{where}: {shapes[0]}{f' (+{len(shapes) - 1} more)' if len(shapes) > 1 else ''}",
                             hint=hint)
    return mapping


def build_model(arch: PublicArchitecture, ckpt: PublicCheckpoint) -> tuple[AdaShareSupernet, KeyMap]:
    """The supernet with the public weights, in eval mode (its decisions are fixed by `apply_policy`)."""
    model = build_supernet("adashare", arch.task_specs(), model_section(arch, ckpt), {})
    if not isinstance(model, AdaShareSupernet):
        raise InternalError(f"the family registry's adashare supernet is a {type(model).__name__}")
    mapping = map_keys(model, arch, ckpt)
    state = model.state_dict()
    for key, pub in mapping.keys.items():
        value = ckpt.state[pub]
        state[key] = value.to(state[key].dtype) if value.is_floating_point() else value.to(torch.int64)
    load_weights(model, state, ckpt.path, "the public AdaShare layout")
    return model.eval(), mapping


def apply_policy(model: AdaShareSupernet, policy: PublicPolicy) -> AdaShareSupernet:
    """Fix the policy file's decisions (rule "imported"); the model is then in deployed mode."""
    model.set_decisions(decisions(model, policy))
    return model.set_deployed(True)


def decisions(model: AdaShareSupernet, policy: PublicPolicy) -> dict[str, Any]:
    """The decisions supernet.pt stores: the policy file's rows, nothing derived from logits."""
    return {"rule": RULE, "blocks": list(model.block_names),
            "policy": {t: list(row) for t, row in zip(model.task_names, policy.rows, strict=True)}}


def recipe(name: str, arch: PublicArchitecture, ckpt: PublicCheckpoint, size: tuple[int, int], *,
           bake_preprocessing: bool, calibration_samples: int) -> dict[str, Any]:
    """The recipe embedded in supernet.pt. There is no dataset: verification and int8 calibration use synthetic
    images at the model's input size in the public convention (BGR, 0..255, Caffe means), without targets, so
    export's task-metric gate says it was skipped instead of scoring against labels that do not exist."""
    h, w = size
    return {
        "name": name, "family": "adashare", "seed": 0,
        "tasks": [t.model_dump() for t in arch.task_specs()],
        "data": {"source": "synthetic", "targets": False, "height": h, "width": w,
                 "train_size": calibration_samples, "val_size": 8, "mean": list(CAFFE_MEAN_BGR),
                 "std": [1.0, 1.0, 1.0], "scale": 1.0, "channel_order": "BGR"},
        "model": model_section(arch, ckpt),
        "prune": {"verify_samples": 4},
        "export": {"calibration_samples": calibration_samples, "bake_preprocessing": bake_preprocessing},
    }
