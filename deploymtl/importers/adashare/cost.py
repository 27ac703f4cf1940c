"""What deploying saves against the public code's own inference: FLOPs and measured latency, both.

The public test-time forward runs, per task, the stem and every block -- both branches, blended with the 0/1
policy -- then the task's head: T backbone passes, nothing skipped (the supernet's `public_forward`, the same
computation). The deployed model is the static tree `deploymtl prune` builds from the policy: skipped blocks gone,
the prefix the tasks' policies agree on computed once. FLOPs come from `deploymtl.flops` (convolutions, 2 per
multiply-add); latency is the median of interleaved batch-1 calls of the two, after one warm-up call each, on this
machine's CPU with torch's current thread count (the figure is indicative; the ratio is measured within one run).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ...flops import measure, ratio
from ...ir import StaticModel
from ...models.adashare import AdaShareSupernet
from ...surgery.plan import check_plan, make_plan


def deployed_tree(model: AdaShareSupernet) -> StaticModel:
    """The static tree `deploymtl prune` builds from the model's decisions (default surgeon options)."""
    plan = make_plan(model, "adashare")
    cut = check_plan(plan, model, "adashare", "imported policy")
    cut.apply()
    return cut.build().build()


@dataclass
class Savings:
    input: list[int]
    flops: dict[str, dict[str, int]]  # {"public": {task..., "total"}, "deployed": {...}}
    params: dict[str, int]
    latency_ms: dict[str, Any] | None  # None when not measured (repeats 0)

    def to_dict(self) -> dict[str, Any]:
        pub, dep = self.flops["public"]["total"], self.flops["deployed"]["total"]
        lat = self.latency_ms
        return {"input": self.input, "flops": self.flops, "flops_ratio": ratio(dep, pub), "params": self.params,
                "latency_ms": lat,
                "latency_ratio": ratio(lat["deployed"], lat["public"]) if lat else None}


def _median_ms(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up: allocator, oneDNN primitives
    for _ in range(repeats):
        for name, fn in fns.items():  # interleaved, so a noisy moment hits both
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {k: round(statistics.median(v), 3) for k, v in times.items()}


def measure_savings(model: AdaShareSupernet, static: StaticModel, size: tuple[int, int], repeats: int) -> Savings:
    """FLOPs at batch 1 and, with `repeats` > 0, the median latency of each over `repeats` interleaved calls."""
    image = torch.zeros(1, 3, *size)
    tasks = model.task_names
    public = measure(model.public_forward, model, image, tasks)
    deployed = measure(static.forward, static, image, tasks)
    params = {"public": public.params["total"], "deployed": deployed.params["total"]}
    latency = None
    if repeats > 0:
        x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0)) * 60.0  # Caffe-centred pixels
        with torch.inference_mode():
            med = _median_ms({"public": lambda: model.public_forward(x), "deployed": lambda: static.infer(x)},
                             repeats)
        latency = med | {"batch": 1, "repeats": repeats, "threads": torch.get_num_threads()}
    return Savings([1, 3, *size], {"public": public.flops, "deployed": deployed.flops}, params, latency)
