"""`deploymtl inspect`: what a checkpoint's plan keeps, before anything is verified or written as a model.

Writes plan.json (editable, for `deploymtl prune --plan`), plan.png (the family's picture of the decisions beside
FLOPs and parameters per task: before / masked / after) and inspect.json, as one set (`deploymtl.outdir`). For a
model imported from a method's public code, "before" is that code's inference, and inspect.json's `imported` holds
what `deploymtl import` measured against it (FLOPs and latency of the public inference vs the deployed model).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..flops import measure_stages
from ..formats.plan import save_plan
from ..io import write_json
from ..outdir import check_output_dir, output_set

if TYPE_CHECKING:
    from .prune import Surgery

INSPECT_FILES = ("plan.json", "plan.png", "inspect.json")
STAGES = ("before", "masked", "after")
COLORS = {"before": "#bbbbbb", "masked": "#7fa7d9", "after": "#2b6cb0"}


def draw_plan(s: Surgery, costs: dict[str, Any], path: str | Path) -> Path:
    """plan.png: the family's drawing of the decisions and, beside it, FLOPs and parameters per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(13, 4.8), layout="constrained")
    grid = fig.add_gridspec(1, 3, width_ratios=[2.2, 1, 1])
    s.cut.draw(fig.add_subplot(grid[0]))
    names = [*s.tasks, "total"]
    for col, (key, unit, scale) in enumerate((("flops", "GFLOPs", 1e9), ("params", "M params", 1e6)), start=1):
        ax = fig.add_subplot(grid[col])
        width = 0.8 / len(STAGES)
        for i, stage in enumerate(STAGES):
            xs = [j + (i - 1) * width for j in range(len(names))]
            ax.bar(xs, [costs[key][stage].get(n, 0) / scale for n in names], width, label=stage, color=COLORS[stage])
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_ylabel(unit)
        ax.set_title(f"{key} per task" + (" (batch 1)" if key == "flops" else ""))
        ax.legend(fontsize=8)
    fig.suptitle(f"{s.family}: plan for {', '.join(s.tasks)} (rule: {s.plan.rule})")
    fig.savefig(path, format="png", dpi=110)  # into an output set's stage: the set is what is atomic
    plt.close(fig)
    return Path(path)


def inspect_checkpoint(checkpoint: str | Path, out_dir: str | Path, *, plan_path: str | Path | None = None,
                       tasks: list[str] | str | None = None, round_channels: int | None = None,
                       options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Summary of the plan of `checkpoint` with params and FLOPs per task; writes plan.json, plan.png, inspect.json.
    `options`: the family's surgeon options besides round_channels (as `prune_checkpoint`); the result's "options"
    are every option of the plan, resolved."""
    from .prune import prepare

    check_output_dir(out_dir)
    out = Path(out_dir)
    s = prepare(checkpoint, plan_path=plan_path, tasks=tasks, round_channels=round_channels, options=options)
    static = s.build_static()
    spec = s.input_spec()
    costs = measure_stages(s.model, static, s.tasks, torch.zeros(1, spec["channels"], spec["height"], spec["width"]))
    result = {
        "family": s.family, "tasks": s.tasks, "rule": s.plan.rule, "edited": s.edited,
        "options": s.options, "input": spec,
        "summary": s.cut.summary(),
        "expected_params": s.expected_params(), "static_params": sum(p.numel() for p in static.parameters()),
        "params": costs["params"], "flops": costs["flops"], "warnings": s.warnings,
        "plan": str(out / "plan.json"), "picture": str(out / "plan.png"),
        "imported": s.imported,
    }
    with output_set(out, owned=INSPECT_FILES) as stage:
        save_plan(stage / "plan.json", s.plan)
        draw_plan(s, costs, stage / "plan.png")
        write_json(stage / "inspect.json", result)
    return result
