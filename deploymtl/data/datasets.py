"""Datasets keyed by task name: each sample is {"image": (3,H,W) float32 normalised, task: target}.
With `data.targets: false` the samples hold the image only (an imported model's tasks have no labels here).

Targets follow `deploymtl.tasks`: segmentation (H,W) int64 with -1 ignore; depth (1,H,W) with 0 invalid;
normals (3,H,W) with 0 invalid; classification () int64.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..errors import DeploymtlError
from ..tasks import TaskSpec
from . import nyuv2, synthetic

if TYPE_CHECKING:
    from ..config import DataConfig

_SYNTH_KEYS = {"segmentation": "seg", "depth": "depth", "normals": "normals", "classification": "count"}
_SYNTH_CLASSES = {"segmentation": synthetic.NUM_SEG_CLASSES, "classification": synthetic.NUM_COUNT_CLASSES}


class MultiTaskDataset(Dataset):
    """Materialised multi-task samples (tiny sets fit in memory; rendering happens once)."""

    def __init__(self, images: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        self.images = images
        self.targets = targets

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        sample = {"image": self.images[i]}
        sample.update({name: t[i] for name, t in self.targets.items()})
        return sample

    def subset(self, indices: list[int] | slice) -> MultiTaskDataset:
        return MultiTaskDataset(self.images[indices], {k: v[indices] for k, v in self.targets.items()})

    def batch(self, n: int, offset: int = 0) -> dict[str, torch.Tensor]:
        """The first `n` samples as one batch (for verification and calibration)."""
        return self[slice(offset, offset + n)]  # type: ignore[index]


def _check_tasks(tasks: list[TaskSpec], source: str, classes: dict[str, int], where: str) -> None:
    for t in tasks:
        if t.kind == "classification" and source == "nyuv2":
            raise DeploymtlError(f"{where}: task '{t.name}' is classification but NYUv2 has no image labels",
                                 hint="expected segmentation, depth or normals tasks")
        if t.kind in classes and t.out_channels != classes[t.kind]:
            raise DeploymtlError(
                f"{where}: task '{t.name}' declares {t.out_channels} classes but {source} data has "
                f"{classes[t.kind]}", hint=f"set channels: {classes[t.kind]}")


def _normalise(images: np.ndarray, cfg: DataConfig) -> torch.Tensor:
    """(N, H, W, 3) RGB in [0, 1] -> the model's input (N, 3, H, W): `(pixel * scale - mean) / std` in
    `cfg.channel_order`, pixel = 255 * image (`config.DataConfig`)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    if cfg.channel_order == "BGR":
        x = x.flip(1)
    factor = 255.0 * cfg.scale
    if factor != 1.0:  # deploymtl's own 1/255 gives exactly 1: its images stay bit-identical
        x = x * factor
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    return (x - mean) / std


def _stack_targets(samples: list[dict[str, np.ndarray]], tasks: list[TaskSpec], key_of) -> dict:
    out = {}
    for t in tasks:
        arr = np.stack([s[key_of(t)] for s in samples])
        tensor = torch.from_numpy(arr)
        if tensor.ndim == 4:  # (N,H,W,C) -> (N,C,H,W)
            tensor = tensor.permute(0, 3, 1, 2).contiguous()
        out[t.name] = tensor
    return out


def _resize(ds: MultiTaskDataset, tasks: list[TaskSpec], h: int, w: int) -> MultiTaskDataset:
    if ds.images.shape[-2:] == (h, w):
        return ds
    images = F.interpolate(ds.images, size=(h, w), mode="bilinear", align_corners=False)
    targets = {}
    for t in tasks:
        y = ds.targets[t.name]
        if t.kind == "segmentation":
            y = F.interpolate(y[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
        elif t.dense:  # nearest keeps invalid (0) pixels invalid instead of blending them in
            y = F.interpolate(y, size=(h, w), mode="nearest")
        targets[t.name] = y
    return MultiTaskDataset(images, targets)


def build_datasets(cfg: DataConfig, tasks: list[TaskSpec], where: str = "recipe") -> dict[str, MultiTaskDataset]:
    """{"train": ..., "val": ...} for the recipe's tasks, from synthetic scenes or an NYUv2 folder."""
    if not cfg.targets:  # images only: the tasks' targets do not exist in this data
        tasks = []
    kinds = [t.kind for t in tasks]
    if cfg.source == "synthetic":
        _check_tasks(tasks, "synthetic", _SYNTH_CLASSES, where)
        out = {}
        for split, n, offset in (("train", cfg.train_size, 0), ("val", cfg.val_size, 1_000_000)):
            samples = [synthetic.render_scene(cfg.seed, offset + i, cfg.height, cfg.width) for i in range(n)]
            images = _normalise(np.stack([s["image"] for s in samples]), cfg)
            out[split] = MultiTaskDataset(images, _stack_targets(samples, tasks, lambda t: _SYNTH_KEYS[t.kind]))
        return out
    if cfg.root is None:
        raise DeploymtlError(f"{where}: data.root is required when data.source is nyuv2",
                             hint="expected the folder holding train/ and val/")
    _check_tasks(tasks, "nyuv2", {"segmentation": nyuv2.NYU_SEG_CLASSES}, where)
    out = {}
    for split, limit in (("train", cfg.train_size), ("val", cfg.val_size)):
        indices = nyuv2.nyuv2_indices(cfg.root, split, kinds)[: limit or None]
        samples = [nyuv2.load_nyuv2_sample(cfg.root, split, i, kinds) for i in indices]
        shapes = {s["image"].shape for s in samples}
        if len(shapes) > 1:
            raise DeploymtlError(f"NYUv2 images in {Path(cfg.root) / split / 'image'} differ in shape: "
                                 f"{sorted(shapes)[:3]}",
                                 hint="expected one resolution per split")
        images = _normalise(np.stack([s["image"] for s in samples]), cfg)
        ds = MultiTaskDataset(images, _stack_targets(samples, tasks, lambda t: t.kind))
        out[split] = _resize(ds, tasks, cfg.height, cfg.width)
    return out


def make_loader(ds: Dataset, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen, drop_last=drop_last)
