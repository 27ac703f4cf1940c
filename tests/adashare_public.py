"""Files in the public AdaShare code's layout, written by the tests' own code (never the public code).

A deploymtl AdaShare supernet with random weights and BatchNorm statistics is the source: its weights renamed into
the public key layout (`public_state`, written out by hand here, independently of the importer's mapping) become a
checkpoint saved the way the public `save()` saves it (`write_checkpoint`: zip or legacy torch format, optionally
with storages tagged `cuda:0` as files saved on a GPU are); its policy becomes the public policy pickle
(`write_policy`: plain `pickle` of int64 tensors, row [1, 0] = execute); the architecture a public YAML
(`write_yaml`). The source's `public_forward` is the public inference the imported model must reproduce.
"""

from __future__ import annotations

import contextlib
import pickle
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import yaml

from deploymtl.families import build_supernet
from deploymtl.models.adashare import AdaShareSupernet
from deploymtl.tasks import TaskSpec

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
LAYERS = {"resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3]}
PUBLIC_BACKBONE = {"resnet18": "ResNet18", "resnet34": "ResNet34"}
KINDS = {"seg": "segmentation", "sn": "normals", "depth": "depth"}
CAFFE = (104.00698793, 116.66876762, 122.67891434)
POLICIES = {  # one row per task, 1 = execute (the reference cases' shapes: skipped first-of-segment blocks included)
    "resnet18": [[1, 1, 1, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0, 1]],
    "resnet34": [[1, 1, 1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 1],
                 [1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 0, 1]],
}


def source_supernet(backbone: str, tasks: list[tuple[str, int]], width: int = 4, hidden: int = 8,
                    policy: list[list[int]] | None = None, seed: int = 0) -> AdaShareSupernet:
    """A deploymtl supernet in the public configuration (ASPP heads, raw outputs at feature resolution) with random
    weights and BatchNorm statistics, so BatchNorm folding is exercised; `policy` fixed (default `POLICIES`)."""
    torch.manual_seed(seed)
    specs = [TaskSpec(name=n, kind=KINDS[n], channels=c if n == "seg" else None, resolution="features")
             for n, c in tasks]
    model = build_supernet("adashare", specs, {"blocks": backbone, "width": width, "head": "aspp",
                                               "head_hidden": hidden}, {})
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
                m.num_batches_tracked.fill_(1000)
    rows = policy if policy is not None else POLICIES[backbone][: len(tasks)]
    model.set_decisions({"policy": dict(zip(model.task_names, rows, strict=True)), "rule": "test"})
    return model.eval()


def public_state(model: AdaShareSupernet, backbone: str) -> OrderedDict[str, torch.Tensor]:
    """The supernet's weights under the public `MTL2` state-dict keys, in the public order (logits first)."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    layers = LAYERS[backbone]
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for t in range(len(model.task_names)):
        out[f"task{t + 1}_logits"] = torch.full((sum(layers), 2), 0.5)  # re-train keeps the initial logits
    out["backbone.conv1.weight"] = sd["stem.conv.conv.weight"]
    for f in BN:
        out[f"backbone.bn1.{f}"] = sd[f"stem.conv.bn.{f}"]
    flat, firsts = 0, []
    for s, n in enumerate(layers):
        firsts.append(flat)
        for b in range(n):
            for conv, bn in (("conv1", "bn1"), ("conv2", "bn2")):
                out[f"backbone.blocks.{s}.{b}.{conv}.weight"] = sd[f"blocks.{flat}.body.{conv}.weight"]
                for f in BN:
                    out[f"backbone.blocks.{s}.{b}.{bn}.{f}"] = sd[f"blocks.{flat}.body.{bn}.{f}"]
            flat += 1
    for s in (1, 2, 3):  # segment 0 has no shortcut
        out[f"backbone.ds.{s}.0.weight"] = sd[f"blocks.{firsts[s]}.ds.conv.weight"]
        for f in BN:
            out[f"backbone.ds.{s}.1.{f}"] = sd[f"blocks.{firsts[s]}.ds.bn.{f}"]
    for t, name in enumerate(model.task_names, start=1):
        for k in range(4):
            for conv in ("conv1", "conv2", "conv3"):
                for p in ("weight", "bias"):
                    out[f"task{t}_fc1_c{k}.{conv}.{p}"] = sd[f"heads.{name}.branches.{k}.{conv}.{p}"]
    return out


@contextlib.contextmanager
def cuda_tagged() -> Iterator[None]:
    """torch.save tags every storage `cuda:0` inside the block, as a checkpoint saved on a GPU is tagged."""
    original = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: "cuda:0"
    try:
        yield
    finally:
        torch.serialization.location_tag = original


def write_checkpoint(path: Path, state: dict, *, legacy: bool = False, cuda: bool = False, **extra) -> Path:
    """The public `save()`: {'mtl-net', 'weights', 'alphas', 'iter', 'temp'} (optimizer states abridged)."""
    adam = {"state": {}, "param_groups": [{"lr": 0.001, "betas": (0.5, 0.999), "eps": 1e-8, "weight_decay": 1e-4,
                                           "params": [0, 1]}]}
    data = {"mtl-net": state, "weights": adam, "alphas": adam, "iter": 12000, "temp": 5} | extra
    with cuda_tagged() if cuda else contextlib.nullcontext():
        torch.save(data, path, _use_new_zipfile_serialization=not legacy)
    return path


def policy_tensor(row: list[int]) -> torch.Tensor:
    """As the public `sample_policy` makes it: int64 (L, 2), [1, 0] = execute."""
    return torch.from_numpy(np.array([[s, 1 - s] for s in row]))


def write_policy(path: Path, rows: list[list[int]] | dict) -> Path:
    """The public `save_policy`: plain pickle of {'task{t}_policy': tensor} (or `rows` as given, if a dict)."""
    data = rows if isinstance(rows, dict) else {f"task{t + 1}_policy": policy_tensor(r) for t, r in enumerate(rows)}
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def write_yaml(path: Path, layout: str, tasks: list[tuple[str, int]], **extra) -> Path:
    """A public config (nyu_v2_2task.yml's fields; training settings abridged); `extra` overrides fields."""
    data = {"exp_name": "test", "seed": [88], "backbone": PUBLIC_BACKBONE[layout], "tasks": [n for n, _ in tasks],
            "lambdas": [1] * len(tasks), "tasks_num_class": [c for _, c in tasks], "policy_model": "task-specific",
            "dataload": {"dataset": "NYU_v2", "crop_h": 321, "crop_w": 321}, "skip_layer": 0,
            "train": {"batch_size": 16, "init_temp": 5}} | extra
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def caffe_input(n: int, h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(raw uint8 BGR pixels (N, 3, H, W), the public-preprocessed float32 input: pixels minus the Caffe means)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (n, 3, h, w), dtype=np.uint8)
    x = pixels.astype(np.float32) - np.array(CAFFE, np.float32).reshape(1, 3, 1, 1)
    return pixels, x
