"""What the cut removes: parameters and FLOPs of the supernet as the public evaluation runs it vs the primary alone.

The public evaluation (`run_eval(set_zero_connectivity=True)`) still runs the whole supernet: both networks, every
fusion convolution (the auxiliary->primary ones over inputs scaled by 0) and the auxiliary decoder, then reads the
primary output. That computation is `network.supernet_spec` with the aux->primary weights at 0; the deployed
model is the primary network alone. FLOPs are `deploymtl.flops` (matrix products and convolutions, 2 per
multiply-add, attention's two matrix products included), counted on the meta device: shapes only, no arithmetic.

Parameters: `checkpoint` is every tensor of the release's state dict (the public model's parameter count: both
networks with timm's unused final norm and ImageNet head, the fusions, the alphas); `evaluation` those the public
evaluation computes with; `deployed` those of the artifact.
"""

from __future__ import annotations

from typing import Any

import torch

from ...flops import measure, ratio
from ...ir import StaticModel
from .config import IMAGE_SIZE


def graph_cost(spec: dict[str, Any], tasks: list[str]) -> dict[str, Any]:
    """FLOPs (per task and total) and parameters of a static graph at batch 1, counted on the meta device."""
    with torch.device("meta"):
        model = StaticModel(spec)
        image = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    cost = measure(model.forward, model, image, tasks)
    return {"flops": cost.flops, "params": cost.params["total"]}


def cut_cost(checkpoint_params: int, evaluation: dict[str, Any] | None, deployed: dict[str, Any],
             primary: str) -> dict[str, Any]:
    """The report's `cost` section; `evaluation` None for a single-task checkpoint (nothing to cut)."""
    out: dict[str, Any] = {"input": [1, 3, IMAGE_SIZE, IMAGE_SIZE],
                           "params": {"checkpoint": checkpoint_params, "deployed": deployed["params"]},
                           "flops": {"deployed": deployed["flops"]}}
    if evaluation is not None:
        out["params"]["evaluation"] = evaluation["params"]
        out["flops"]["evaluation"] = evaluation["flops"]
        out["flops_ratio"] = ratio(deployed["flops"]["total"], evaluation["flops"]["total"])
        out["params_ratio"] = ratio(deployed["params"], evaluation["params"])
        out["primary_output_flops"] = {"evaluation": evaluation["flops"][primary],
                                       "deployed": deployed["flops"][primary]}
    return out
