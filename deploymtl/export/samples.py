"""The real samples an export is checked against, from the model's own recipe (`data:` section).

- `inputs`: the first MAX validation images (repeated when the split is smaller), `reference` the PyTorch static
  model's outputs on them (its compiled eager schedule, `StaticModel.infer`): the parity set;
- `check_inputs`/`check_reference`: the first few of them, in one batch > 1, on which each simplification pass is
  checked (the structure checks already proved the batch axis symbolic; the final parity runs batch 1 and MAX);
- `sets`: the datasets, for int8 calibration (training split) and the metric gate (validation split).

A model whose preprocessing is baked into the graph (input dtype uint8, `export.preprocess`) is fed the raw pixels
the data's images were normalised from (`raw_pixels`), so every sample above -- parity set, calibration, metric
gate -- is what that graph takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import PIXEL_SCALE, DataConfig
from ..errors import DeploymtlError
from ..formats.static import StaticArtifact

PASS_CHECK_SAMPLES = 4


@dataclass
class ExportSamples:
    sets: dict[str, Any]
    inputs: np.ndarray
    reference: dict[str, np.ndarray]
    check_inputs: np.ndarray
    check_reference: dict[str, np.ndarray]
    data_source: str = "the recipe's data"  # what the samples are, for reports ("synthetic images, no targets")

    @classmethod
    def load(cls, art: StaticArtifact, n_inputs: int, n_train: int, where: str) -> ExportSamples:
        """`n_inputs` parity images; `n_train` training images needed (int8 calibration), else 1. `where` names the
        model file in errors."""
        data_cfg = art.recipe_section("data", DataConfig, where)
        sets = _datasets(art, data_cfg, n_train, f"{where}: recipe data")
        if art.input.get("dtype") == "uint8":
            sets = {k: type(v)(raw_pixels(v.images, art.input), v.targets) for k, v in sets.items()}
        inputs = take(sets["val"].images, n_inputs)
        with torch.inference_mode():
            out = art.model.eval().infer(torch.from_numpy(inputs))
        reference = {k: out[k].float().numpy() for k in art.task_names}
        n_check = min(len(inputs), PASS_CHECK_SAMPLES)
        check_inputs, check_reference = inputs[:n_check], {k: v[:n_check] for k, v in reference.items()}
        if n_check == 1:  # still prove a batch > 1 runs
            check_inputs = np.concatenate([check_inputs, check_inputs])
            check_reference = {k: np.concatenate([v, v]) for k, v in check_reference.items()}
        source = f"{data_cfg.source} {'images and targets' if data_cfg.targets else 'images, no targets'}"
        return cls(sets, inputs, reference, check_inputs, check_reference, source)


def take(images: torch.Tensor, n: int) -> np.ndarray:
    """The first `n` images as a contiguous array (float32, or uint8 raw pixels), cycling through a smaller set."""
    idx = np.arange(n) % images.shape[0]
    dtype = np.uint8 if images.dtype == torch.uint8 else np.float32
    return np.ascontiguousarray(images[idx].numpy(), dtype=dtype)


def raw_pixels(images: torch.Tensor, spec: dict[str, Any]) -> torch.Tensor:
    """Normalised images (N, C, H, W) back to the 0..255 uint8 pixels they were made from: `(x * std + mean) /
    scale`, rounded (the input spec's convention, `formats.static`)."""
    c = images.shape[1]
    mean = torch.tensor(spec.get("mean") or [0.0] * c, dtype=torch.float64).view(1, c, 1, 1)
    std = torch.tensor(spec.get("std") or [1.0] * c, dtype=torch.float64).view(1, c, 1, 1)
    pixels = (images.double() * std + mean) / float(spec.get("scale", PIXEL_SCALE))
    return pixels.round().clamp(0, 255).to(torch.uint8)


def _datasets(art: StaticArtifact, data_cfg: DataConfig, n_train: int, where: str) -> dict[str, Any]:
    from ..data import build_datasets

    # Only the first samples are used (verification, calibration); synthetic samples are indexed by seed and
    # position and NYUv2 takes the first files, so a smaller train_size gives the same first samples, faster.
    cfg = data_cfg.model_copy(update={"train_size": max(1, n_train)})
    sets = build_datasets(cfg, art.tasks, where=where)
    i = art.input
    shape = tuple(sets["val"].images.shape[1:])
    if shape != (i["channels"], i["height"], i["width"]):
        raise DeploymtlError(f"{where}: data gives images {shape} but the model expects "
                             f"{(i['channels'], i['height'], i['width'])}", hint="export with the model's own recipe")
    if len(sets["val"]) == 0:
        raise DeploymtlError(f"{where}: the validation split is empty", hint="set data.val_size >= 1")
    return sets
