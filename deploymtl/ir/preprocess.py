"""Baking the input normalisation into a static graph: one `preprocess` node (`ops.Preprocess`) in front.

`bake_preprocessing(spec, state, scale, mean, std)` returns a new spec whose first node reads the image and every
node that read the image reads that node instead (a `resize_to` included: it reads only the spatial size, which the
node keeps), and the state dict with that node's weights `mul = scale / std`, `add = -mean / std`. The graph then
takes raw pixels -- uint8 from a camera or `cv2.imread` -- and computes what the unbaked graph computed on
`(pixel * scale - mean) / std`, up to float rounding of the folded constants.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..errors import DeploymtlError
from .ops import INPUT

PREPROCESS_NODE = "preprocess"


def is_baked(spec: Mapping[str, Any]) -> bool:
    """True when the graph's first node already normalises its input."""
    nodes = spec.get("nodes") or []
    return bool(nodes) and nodes[0].get("op") == "preprocess"


def bake_preprocessing(spec: Mapping[str, Any], state: Mapping[str, torch.Tensor], *, scale: float,
                       mean: Sequence[float], std: Sequence[float]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(spec, state) with the preprocessing node in front (module docstring); a graph that already has one, or a
    node of that name, is a one-line error."""
    if is_baked(spec):
        raise DeploymtlError("the static graph already starts with a preprocess node",
                             hint="its input is raw pixels already; export it without --bake-preprocessing")
    out = copy.deepcopy(dict(spec))
    if any(n.get("name") == PREPROCESS_NODE for n in out["nodes"]):
        raise DeploymtlError(f"the static graph has a node named '{PREPROCESS_NODE}' that is not the input's "
                             "normalisation", hint="rename that node to bake the preprocessing in")
    for node in out["nodes"]:
        node["inputs"] = [PREPROCESS_NODE if x == INPUT else x for x in node["inputs"]]
    out["nodes"].insert(0, {"name": PREPROCESS_NODE, "op": "preprocess", "inputs": [INPUT],
                            "attrs": {"channels": len(mean)}})
    m = torch.tensor([float(v) for v in mean], dtype=torch.float64)
    s = torch.tensor([float(v) for v in std], dtype=torch.float64)
    weights = {f"layers.{PREPROCESS_NODE}.mul": (float(scale) / s).float(),
               f"layers.{PREPROCESS_NODE}.add": (-m / s).float()}
    return out, dict(state) | weights
