"""Public-layout files of the Aux-NAS ViT release, built without the public code: the release's JSON config
(`configs/config_aux_nas_prim_normal.json`, fields as released) and a `{'model_state_dict': ...}` checkpoint with
every key and shape the release's supernet has (or one network's, for a single-task checkpoint), filled with
seeded random values at the scales of timm's ViT init (weights ~0.02, LayerNorm 1 / 0), alphas spread around the
release's a2p init logit(0.001). tests/data/auxnas_public/ holds a checkpoint the public code itself wrote.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import torch

from deploymtl.importers.auxnas.checkpoint import network_shapes, supernet_shapes
from deploymtl.importers.auxnas.config import parse_config

RELEASE_CONFIG: dict[str, Any] = {
    "General": {"path_model": "ckpts/aux_nas/normal", "device": "cuda", "type": "full",
                "model_timm": "vit_base_patch16_224", "emb_dim": 768, "hooks": [2, 5, 8, 11], "read": "ignore",
                "resample_dim": 192, "fuse_conv_type": "3x3", "optim": "adam", "epochs": 100, "batch_size": 20,
                "seed": 0, "patch_size": 16, "scheduler": "poly", "tasks": ["normal", "segmentation"],
                "seg_nclasses": 40},
    "Aux": {"prim_task": "normal", "Arch": {"init_arch_weight": 0.5, "a2p_init_arch_weight": 0.001},
            "NDDR": {"init": [0.0, 0.0], "a2p_init": [0.0, 0.0], "norm": "none", "activ": "none"},
            "reverse": False, "type": "fg_nas", "load_prim_net": "none", "load_aux_net": "none"},
    "Dataset": {"paths": {"path_dataset": "./datasets"}, "transforms": {"resize": 224, "p_flip": 0.5}},
}
TINY = {"model_timm": "vit_tiny_patch16_224", "emb_dim": 192, "resample_dim": 64}


def config(**general: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(RELEASE_CONFIG)
    cfg["General"].update(general)
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(json.dumps(cfg, indent=1))
    return path


def _value(key: str, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    if key.endswith("_alphas"):
        logit = math.log(0.001 / 0.999) if key == "aux_prim_alphas" else 0.0
        return logit + torch.randn(shape, generator=g) * 2.0
    if ".norm" in key and key.endswith(".weight"):
        return 1.0 + 0.1 * torch.randn(shape, generator=g)
    scale = 0.02 if ("stages." in key or "model." in key) else 1.0 / math.sqrt(max(1, math.prod(shape[1:])))
    return torch.randn(shape, generator=g) * scale


def public_state(cfg: dict[str, Any], *, single_task: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    arch = parse_config(cfg, "test config")
    shapes = network_shapes(arch, arch.primary) if single_task else supernet_shapes(arch)
    head = {"model.head.weight": (1000, arch.width), "model.head.bias": (1000,)}
    prefixes = [""] if single_task else ["prim_net.", "aux_net."]
    shapes |= {p + k: v for p in prefixes for k, v in head.items()}
    g = torch.Generator().manual_seed(seed)
    return {k: _value(k, s, g) for k, s in shapes.items()}


def write_checkpoint(path: Path, state: dict[str, torch.Tensor]) -> Path:
    torch.save({"model_state_dict": state}, path)
    return path


def public_input(pixels: Any) -> torch.Tensor:
    """The release's preprocessing of RGB 0..255 pixels: x / 255, mean 0.5, std 0.5."""
    return (torch.as_tensor(pixels).float() / 255.0 - 0.5) / 0.5
