"""The preprocessing stage: `--bake-preprocessing` (or the recipe's `export.bake_preprocessing`) puts the input
normalisation into the exported graph, for callers that feed raw pixels.

The static model gets a `preprocess` node in front (`ir.preprocess.bake_preprocessing`: cast to float32, then
`(x * scale - mean) / std` from the artifact's input spec, folded into one multiply-add per channel), and its input
spec becomes uint8 in the same layout, (N, C, H, W), channels in the spec's `channel_order`: the one layout every
runner, parity set and batch axis already use, so a camera frame or `cv2.imread` image (H, W, C) is fed as
`img.transpose(2, 0, 1)[None]`. The weights are the pruned.pt's; only the exported graph and what it is verified on
(`samples.raw_pixels`) change.
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import DeploymtlError
from ..formats.static import StaticArtifact
from ..ir import build_static
from ..ir.preprocess import bake_preprocessing


def baked(art: StaticArtifact, where: str) -> StaticArtifact:
    """`art` with its preprocessing in the graph and a uint8 input spec; the input spec must name mean and std."""
    i = art.input
    if i.get("dtype") == "uint8":
        raise DeploymtlError(f"{where}: the model's input is uint8 already (its preprocessing is in the graph)",
                             hint="export it without --bake-preprocessing")
    c = int(i["channels"])
    mean, std = i.get("mean"), i.get("std")
    if not mean or not std:
        raise DeploymtlError(f"{where}: the input spec has no mean/std to bake in",
                             hint="export without --bake-preprocessing")
    state = {k: v.detach() for k, v in art.model.state_dict().items()}
    spec, state = bake_preprocessing(art.model.spec, state, scale=float(i["scale"]), mean=mean, std=std)
    model = build_static(spec, state, image=(c, int(i["height"]), int(i["width"])), tasks=art.tasks)
    return replace(art, model=model, input=dict(i) | {"dtype": "uint8"})
