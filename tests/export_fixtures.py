"""Tiny static multi-task models for the export/verify tests, built by hand with GraphBuilder (no family needed).

`tiny_artifact(path)` writes a `pruned.pt` of a 3-task model (segmentation, depth, classification) on the
synthetic 48x64 scenes, briefly trained so its metrics are meaningful for the precision gates. Its graph uses
every op the families emit that ONNX export must handle: conv (odd channel counts, dilation), relu, maxpool, add,
select, scale, concat, wsum, resize_to, gap, linear.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn

from deploymtl.config import DataConfig
from deploymtl.data import build_datasets
from deploymtl.formats.static import StaticArtifact, save_static
from deploymtl.ir import StaticModel
from deploymtl.surgery.builder import GraphBuilder
from deploymtl.tasks import TaskSpec, task_loss

TASKS = [TaskSpec(name="seg", kind="segmentation", channels=5), TaskSpec(name="depth", kind="depth"),
         TaskSpec(name="count", kind="classification", channels=4)]
H, W = 48, 64
DATA = {"source": "synthetic", "height": H, "width": W, "train_size": 96, "val_size": 32, "seed": 0}


def _conv(b: GraphBuilder, name: str, x: str, cin: int, cout: int, k: int = 3, stride: int = 1,
          dilation: int = 1) -> str:
    c = nn.Conv2d(cin, cout, k, stride, dilation * (k // 2), dilation=dilation)
    return b.conv(name, x, c.weight, c.bias, stride=stride, padding=dilation * (k // 2), dilation=dilation)


def build_model(seed: int = 0, width: int = 12) -> StaticModel:
    torch.manual_seed(seed)
    b = GraphBuilder()
    x = b.relu("stem_relu", _conv(b, "stem_conv", "image", 3, width, 3, 2))
    x = b.maxpool("stem_pool", x, nn.MaxPool2d(3, 2, 1, ceil_mode=True))
    y = b.relu("b0_relu1", _conv(b, "b0_conv1", x, width, 7))          # pruned: 7 of 12 channels kept
    y = _conv(b, "b0_conv2", y, 7, width)
    x = b.relu("b0_relu", b.add("b0_add", x, y))
    y = b.relu("b1_relu1", _conv(b, "b1_conv1", x, width, 9, dilation=2))
    y = b.scale("b1_scale", _conv(b, "b1_conv2", y, 9, width, dilation=2), torch.linspace(0.5, 1.5, width))
    x = b.relu("b1_relu", b.add("b1_add", x, y))
    t = b.relu("t_relu", _conv(b, "t_conv", x, width, width))
    mix = b.wsum("mix", [x, t], torch.rand(2, width))
    sel = b.select("seg_sel", mix, list(range(0, width, 2)))
    cat = b.concat("seg_cat", sel, t)
    seg_h = b.relu("seg_relu", _conv(b, "seg_conv", cat, width // 2 + width, 10))
    b.output("seg", b.resize_to_input("seg_up", _conv(b, "seg_out", seg_h, 10, 5, k=1)))
    d = b.relu("depth_relu", _conv(b, "depth_conv", t, width, 8))
    b.output("depth", b.resize_to_input("depth_up", _conv(b, "depth_out", d, 8, 1, k=1)))
    b.output("count", b.linear("count_fc", b.gap("count_gap", x), nn.Linear(width, 4)))
    return b.build()


def train(model: StaticModel, steps: int = 60, seed: int = 0) -> StaticModel:
    """A few Adam steps on synthetic scenes so task metrics are above chance (seconds on 1 thread)."""
    torch.manual_seed(seed)
    sets = build_datasets(DataConfig(**DATA), TASKS)
    ds = sets["train"]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=3e-3)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(ds), (16,), generator=torch.Generator().manual_seed(seed * 1000 + step))
        batch = ds[idx]
        out = model(batch["image"])
        loss = sum(task_loss(t, out[t.name], batch[t.name]) for t in TASKS)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def recipe(export: dict | None = None) -> dict:
    return {"name": "tiny-export", "family": "adashare", "tasks": [t.model_dump() for t in TASKS], "data": DATA,
            "export": {"batch": "1:2:4", "calibration_samples": 32, "max_metric_drop": 0.05, **(export or {})}}


@functools.cache
def _trained_state() -> dict[str, torch.Tensor]:
    """Trained once per test process, shared by every test module."""
    return {k: v.clone() for k, v in train(build_model()).state_dict().items()}


def tiny_artifact(path: Path, *, trained: bool = True, export: dict | None = None,
                  removed_prefixes: list[str] | None = None) -> Path:
    model = build_model()
    if trained:
        model.load_state_dict(_trained_state())
    art = StaticArtifact(model=model, family="adashare", tasks=TASKS, plan={"tasks": [t.name for t in TASKS]},
                         input={"channels": 3, "height": H, "width": W, "mean": [0.5] * 3, "std": [0.25] * 3},
                         recipe=recipe(export), extra={"removed_prefixes": removed_prefixes or ["blocks.3.body"]})
    save_static(path, art)
    return path
