"""The release's networks as static graph specs (`deploymtl.ir`), weights taken from the checkpoint as they are.

One public network (`networks/single_task.py` with the release's options) is, in IR ops:

    patch_embed -> cls_pos                                    timm: patch_embed, _pos_embed (class token + pos)
    block i (12x): x + proj(attention(qkv(layernorm(x))))     timm Block: pre-norm, LayerNorm eps 1e-6
                   x + fc2(gelu(fc1(layernorm(x))))           exact GELU MLP
    reassemble r (features after the blocks `hooks`): tokens_to_map (class token dropped, 14x14), 1x1 conv, then
                   conv_transpose k4 s4 | conv_transpose k2 s2 | nothing | conv k2 s2
    fusion r (r = 3..0): RCU(x) [+ previous], RCU, upsample x2 (bilinear, align_corners)
                   RCU(x) = relu(x) -> conv1x1 -> relu -> conv3x3 -> relu -> conv1x1, + relu(x): the unit's
                   in-place ReLU rewrites x, so the skip adds relu(x), not x
    head: conv3x3 -> upsample x2 (align_corners) -> conv3x3 -> relu -> conv1x1

The supernet (`supernet_spec`, for `--keep-links` and for what the public evaluation computes) runs both networks
block by block; after block s each one adds, to its own output, the 1x1 fusion convolution (here a linear map on
the tokens, no bias) of the other network's block outputs j in `arch.sources(s)` scaled by their link weights
(the weights are folded into the columns: w_j * W_j y_j = W_j (w_j y_j)), and the next block and the hooks read
that sum, as in the public `GeneralizedMTLNASNet_L1Cut.forward`.
"""

from __future__ import annotations

from typing import Any

import torch

from .config import LN_EPS, REASSEMBLE, VitArch


class Graph:
    """A static graph spec under construction, with its state dict."""

    def __init__(self) -> None:
        self.nodes: list[dict[str, Any]] = []
        self.state: dict[str, torch.Tensor] = {}

    def add(self, name: str, op: str, inputs: list[str], attrs: dict[str, Any] | None = None,
            **weights: torch.Tensor) -> str:
        self.nodes.append({"name": name, "op": op, "inputs": inputs, "attrs": attrs or {}})
        for key, value in weights.items():
            self.state[f"layers.{name}.{key}"] = value.detach().to(torch.float32).contiguous().clone()
        return name

    def spec(self, outputs: dict[str, str]) -> dict[str, Any]:
        return {"input": "image", "nodes": self.nodes, "outputs": outputs}


class Net:
    """One public network's tensors (prefix removed) and the node-name prefix of its part of the graph."""

    def __init__(self, g: Graph, arch: VitArch, weights: dict[str, torch.Tensor], tag: str) -> None:
        self.g, self.arch, self.w, self.tag = g, arch, weights, tag

    def linear(self, name: str, x: str, key: str, cin: int, cout: int) -> str:
        return self.g.add(f"{self.tag}{name}", "linear", [x], {"cin": cin, "cout": cout},
                          weight=self.w[f"{key}.weight"], bias=self.w[f"{key}.bias"])

    def conv(self, name: str, x: str, key: str, k: int, stride: int = 1, padding: int = 0) -> str:
        w = self.w[f"{key}.weight"]
        return self.g.add(f"{self.tag}{name}", "conv", [x], {"cin": int(w.shape[1]), "cout": int(w.shape[0]), "k": k,
                                                            "stride": stride, "padding": padding},
                          weight=w, bias=self.w[f"{key}.bias"])

    def relu(self, name: str, x: str) -> str:
        return self.g.add(f"{self.tag}{name}", "relu", [x])

    def stem(self) -> str:
        a, c = self.arch, self.arch.width
        x = self.g.add(f"{self.tag}patch_embed", "patch_embed", ["image"], {"cin": 3, "cout": c, "patch": a.patch},
                       weight=self.w["model.patch_embed.proj.weight"], bias=self.w["model.patch_embed.proj.bias"])
        return self.g.add(f"{self.tag}cls_pos", "cls_pos", [x], {"channels": c, "tokens": a.tokens},
                          cls=self.w["model.cls_token"], pos=self.w["model.pos_embed"])

    def layernorm(self, name: str, x: str, key: str) -> str:
        return self.g.add(f"{self.tag}{name}", "layernorm", [x], {"channels": self.arch.width, "eps": LN_EPS},
                          weight=self.w[f"{key}.weight"], bias=self.w[f"{key}.bias"])

    def block(self, i: int, x: str) -> str:
        c, m, p, b = self.arch.width, self.arch.mlp, f"stages.{i}", f"b{i}_"
        h = self.layernorm(b + "norm1", x, f"{p}.norm1")
        h = self.linear(b + "qkv", h, f"{p}.attn.qkv", c, 3 * c)
        h = self.g.add(f"{self.tag}{b}attn", "attention", [h], {"channels": c, "heads": self.arch.heads})
        h = self.linear(b + "proj", h, f"{p}.attn.proj", c, c)
        x = self.g.add(f"{self.tag}{b}res1", "add", [x, h])
        h = self.layernorm(b + "norm2", x, f"{p}.norm2")
        h = self.linear(b + "fc1", h, f"{p}.mlp.fc1", c, m)
        h = self.g.add(f"{self.tag}{b}gelu", "gelu", [h])
        h = self.linear(b + "fc2", h, f"{p}.mlp.fc2", m, c)
        return self.g.add(f"{self.tag}{b}res2", "add", [x, h])

    def reassemble(self, r: int, x: str) -> str:
        a, pre, key = self.arch, f"re{r}_", f"reassembles.{r}.resample"
        x = self.g.add(f"{self.tag}{pre}map", "tokens_to_map", [x], {"start": 1, "height": a.grid, "width": a.grid})
        x = self.conv(pre + "conv1", x, f"{key}.conv1", 1)
        stride = REASSEMBLE[r]
        if stride in (4, 8):
            k = 4 if stride == 4 else 2
            x = self.g.add(f"{self.tag}{pre}up", "conv_transpose", [x],
                           {"cin": a.resample, "cout": a.resample, "k": k, "stride": k},
                           weight=self.w[f"{key}.conv2.weight"], bias=self.w[f"{key}.conv2.bias"])
        elif stride == 32:
            x = self.conv(pre + "down", x, f"{key}.conv2", 2, stride=2)
        return x

    def rcu(self, name: str, x: str, key: str) -> str:
        r = self.relu(f"{name}_relu0", x)  # in place in the public unit: the skip below adds this
        h = self.relu(f"{name}_relu1", self.conv(f"{name}_conv1", r, f"{key}.conv1", 1))
        h = self.relu(f"{name}_relu2", self.conv(f"{name}_conv2", h, f"{key}.conv2", 3, padding=1))
        h = self.conv(f"{name}_conv3", h, f"{key}.conv3", 1)
        return self.g.add(f"{self.tag}{name}_add", "add", [h, r])

    def fusion(self, r: int, x: str, previous: str | None) -> str:
        h = self.rcu(f"fu{r}_rcu1", x, f"fusions.{r}.conv1")
        if previous is not None:  # the deepest stage adds zeros in the public code: nothing to add
            h = self.g.add(f"{self.tag}fu{r}_skip", "add", [h, previous])
        h = self.rcu(f"fu{r}_rcu2", h, f"fusions.{r}.conv2")
        return self.g.add(f"{self.tag}fu{r}_up", "upsample", [h], {"scale": 2, "align_corners": True})

    def decoder(self, features: list[str]) -> str:
        deepest = len(REASSEMBLE) - 1
        h = self.fusion(deepest, self.reassemble(deepest, features[deepest]), None)
        for r in reversed(range(deepest)):
            h = self.fusion(r, self.reassemble(r, features[r]), h)
        h = self.conv("head_conv1", h, "decoder.head.0", 3, padding=1)
        h = self.g.add(f"{self.tag}head_up", "upsample", [h], {"scale": 2, "align_corners": True})
        h = self.relu("head_relu", self.conv("head_conv2", h, "decoder.head.2", 3, padding=1))
        return self.conv("head_out", h, "decoder.head.4", 1)


def primary_spec(arch: VitArch, weights: dict[str, torch.Tensor]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The primary network alone: what the public evaluation's output depends on (aux->primary links cut)."""
    g = Graph()
    net = Net(g, arch, weights, "")
    x, features = net.stem(), []
    for i in range(arch.depth):
        x = net.block(i, x)
        if i in arch.hooks:
            features.append(x)
    return g.spec({arch.primary.name: net.decoder(features)}), g.state


def _link(g: Graph, name: str, own: str, sources: list[str], conv: torch.Tensor, weights: list[float],
          width: int) -> str:
    """own + W [w_j * y_j]_j: the public fusion (`SingleSidedAsymmetricResidualNDDR`, no norm, no activation)."""
    w = conv.detach().to(torch.float32).reshape(width, -1).clone()
    for k, weight in enumerate(weights):
        w[:, k * width:(k + 1) * width] *= weight
    cat = g.add(f"{name}_cat", "concat", sources) if len(sources) > 1 else sources[0]
    mix = g.add(f"{name}_mix", "linear", [cat], {"cin": width * len(sources), "cout": width, "bias": False}, weight=w)
    return g.add(f"{name}_sum", "add", [mix, own])


def supernet_spec(arch: VitArch, state: dict[str, torch.Tensor], a2p: torch.Tensor, p2a: torch.Tensor
                  ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Both networks with every link at the given weights (depth x depth: row s = stage, column j = source):
    `a2p` the auxiliary->primary ones, `p2a` the others. Outputs: the primary task, then the auxiliary one."""
    g = Graph()
    nets = {side: Net(g, arch, {k.removeprefix(f"{side}_net."): v for k, v in state.items()
                                if k.startswith(f"{side}_net.")}, f"{side}_") for side in ("prim", "aux")}
    x, y = nets["prim"].stem(), nets["aux"].stem()
    xs: list[str] = []
    ys: list[str] = []
    fx: list[str] = []
    fy: list[str] = []
    for s in range(arch.depth):
        x, y = nets["prim"].block(s, x), nets["aux"].block(s, y)
        xs.append(x)
        ys.append(y)
        src = arch.sources(s)
        x = _link(g, f"prim_link{s}", x, [ys[j] for j in src], state[f"paths.prim_paths.{s}.conv.weight"],
                  [float(a2p[s, j]) for j in src], arch.width)
        y = _link(g, f"aux_link{s}", y, [xs[j] for j in src], state[f"paths.aux_paths.{s}.conv.weight"],
                  [float(p2a[s, j]) for j in src], arch.width)
        if s in arch.hooks:
            fx.append(x)
            fy.append(y)
    outputs = {arch.primary.name: nets["prim"].decoder(fx), arch.auxiliary.name: nets["aux"].decoder(fy)}
    return g.spec(outputs), g.state
