"""Toy artifacts for trying the runtime and profiler without training: a small untrained multi-task network.

`toy_static(path)` writes a `pruned.pt` (the static-model format of `deploymtl prune`); `toy_onnx(path)` an ONNX
file with a dynamic batch axis and deploymtl metadata (so ONNX Runtime runners know the batch limits). Both
are built with the surgery `GraphBuilder`, so they are real static models, only with random weights:

    image (N,3,H,W) -> conv3x3/2 -> relu -> [conv3x3 -> relu -> conv3x3] + skip -> relu -> trunk (N,w,H/2,W/2)
    segmentation / depth / normals: conv1x1 -> bilinear to H x W;  classification: global pool -> linear

Per-task heads let a subset of tasks be built (`tasks=["seg"]`) with the trunk weights of the full model.
Exported ONNX uses the TorchScript exporter: it is ~20x faster than the dynamo one for a toy, and the toy only
needs a dynamic batch axis, not the verified export of `deploymtl export`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from ..formats.static import StaticArtifact, save_static
from ..io import atomic_path
from ..ir import StaticModel
from ..surgery.builder import GraphBuilder
from ..tasks import TaskSpec

TOY_TASKS = (TaskSpec(name="seg", kind="segmentation", channels=5), TaskSpec(name="depth", kind="depth"),
             TaskSpec(name="count", kind="classification", channels=4))


def toy_artifact(tasks: list[str] | None = None, *, width: int = 8, height: int = 48, image_width: int = 64,
                 seed: int = 0) -> StaticArtifact:
    """A static multi-task model with random weights; same `seed` -> same weights for shared parts."""
    specs = [t for t in TOY_TASKS if tasks is None or t.name in tasks]
    gen = torch.Generator().manual_seed(seed)

    def w(*shape: int) -> torch.Tensor:
        fan_in = shape[1] * (shape[2] * shape[3] if len(shape) == 4 else 1)
        return torch.randn(*shape, generator=gen) * (2.0 / fan_in) ** 0.5

    def bias(n: int) -> torch.Tensor:
        return 0.1 * torch.randn(n, generator=gen)

    b = GraphBuilder()
    x = b.relu("stem_relu", b.conv("stem", "image", w(width, 3, 3, 3), bias(width), stride=2, padding=1))
    h = b.relu("block_relu1", b.conv("block_conv1", x, w(width, width, 3, 3), bias(width), padding=1))
    h = b.conv("block_conv2", h, w(width, width, 3, 3), bias(width), padding=1)
    trunk = b.relu("block_relu2", b.add("block_add", h, x))
    heads = {t.name: (w(t.out_channels, width, 1, 1), w(t.out_channels, width), bias(t.out_channels))
             for t in TOY_TASKS}
    for t in specs:
        conv_w, fc_w, head_b = heads[t.name]
        if t.dense:
            y = b.conv(f"{t.name}_head", trunk, conv_w, head_b)
            b.output(t.name, b.resize_to_input(f"{t.name}_resize", y))
        else:
            fc = torch.nn.Linear(width, t.out_channels)
            fc.weight.data, fc.bias.data = fc_w, head_b
            b.output(t.name, b.linear(f"{t.name}_fc", b.gap(f"{t.name}_gap", trunk), fc))
    model = b.build()
    inp = {"channels": 3, "height": height, "width": image_width, "mean": [0.5] * 3, "std": [0.25] * 3}
    return StaticArtifact(model=model, family="toy", tasks=specs, plan={}, input=inp, recipe={})


def toy_static(path: str | Path, tasks: list[str] | None = None, **kw: Any) -> Path:
    """Write a toy `pruned.pt`; keyword arguments as for `toy_artifact`."""
    return save_static(path, toy_artifact(tasks, **kw))


def toy_onnx(path: str | Path, tasks: list[str] | None = None, *, max_batch: int = 8, **kw: Any) -> Path:
    """Write a toy ONNX model (opset 17, dynamic batch 1..max_batch recorded in its metadata)."""
    import onnx

    from ..formats.onnx_metadata import to_props

    art = toy_artifact(tasks, **kw)
    i = art.input
    example = torch.zeros(1, i["channels"], i["height"], i["width"])
    names = art.task_names
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(_Outputs(art.model), (example,), str(tmp), input_names=["image"], output_names=names,
                          dynamic_axes={n: {0: "batch"} for n in ["image", *names]}, opset_version=17,
                          dynamo=False)
        proto = onnx.load(str(tmp))
        meta = {"tasks": names, "input": i, "precision": "fp32", "family": "toy",
                "batch": {"min": 1, "opt": max_batch, "max": max_batch}}
        for key, value in to_props(meta).items():
            proto.metadata_props.add(key=key, value=value)
        onnx.save(proto, str(tmp))
    return Path(path)


class _Outputs(torch.nn.Module):
    """Static model with a tuple output in task order (what torch.onnx.export names output by output)."""

    def __init__(self, model: StaticModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(image)
        return tuple(out[name] for name in self.model.task_names)
