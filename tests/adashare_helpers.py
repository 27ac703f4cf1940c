"""Tiny AdaShare supernets for the tests: 3 tasks, blocks [2,2,1,1] (L=6; ds on blocks 2, 4, 5), width 4."""

from __future__ import annotations

import torch

from deploymtl.families import build_supernet
from deploymtl.models.adashare import AdaShareSupernet
from deploymtl.tasks import TaskSpec

TASKS = [TaskSpec(name="seg", kind="segmentation", channels=5), TaskSpec(name="depth", kind="depth"),
         TaskSpec(name="normal", kind="normals")]


def tiny_adashare(seed: int = 0, blocks: list[int] | None = None, **search) -> AdaShareSupernet:
    torch.manual_seed(seed)
    model = build_supernet("adashare", TASKS, {"blocks": blocks or [2, 2, 1, 1], "width": 4, "head_hidden": 8},
                           search)
    assert isinstance(model, AdaShareSupernet)
    return model


@torch.no_grad()
def randomize_bn(model: torch.nn.Module, seed: int = 1) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so folding is really exercised."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.copy_(torch.randn(n, generator=gen) * 0.2)


@torch.no_grad()
def set_logits_from_policy(model: AdaShareSupernet, policy: dict[str, list[int]], margin: float = 30.0) -> None:
    """Saturated logits: +margin/-margin on (execute, skip) where the policy executes, the reverse elsewhere."""
    for t, row in policy.items():
        sign = torch.tensor([1.0 if v else -1.0 for v in row])
        model.logits[t].copy_(torch.stack([sign * margin, -sign * margin], dim=1))
