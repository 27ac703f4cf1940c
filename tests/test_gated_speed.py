"""GatedMTL static graph built for few copies: materialised blends select from one concat per layer, and psi' is
one wsum of the phi'_t (on CPU every extra op and copy costs latency that the FLOPs do not show)."""

from __future__ import annotations

import re

import pytest
import torch
from test_gated_surgery import NAMES, check, make, plan_of

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _build(model, plan: dict, tasks: list[str], fold: str, merge: bool = False):
    """The graph builder, after `check` asserted parity and the exact parameter count."""
    return check(model, plan, tasks, merge=merge, fold=fold)[0]


@pytest.mark.parametrize("seed", [0, 1, 3])
def test_materialised_blends_share_one_concat_per_layer(seed: int) -> None:
    model = make()
    plan = plan_of(model, seed=seed)
    builder = _build(model, plan, NAMES, "never")
    nodes = {n["name"]: n for n in builder.nodes}
    # One concat per layer; the classifier head alone reads its own (it selects after pooling, fewer channels).
    concats = [n["name"] for n in builder.nodes if n["op"] == "concat"]
    assert set(concats) - {f"l{layer}_cat" for layer in range(model.num_layers)} == {"head_cls_in_cat"}
    # No select per mixing term any more: every select is a whole blend (`_in_sel`) or a residual's rows.
    selects = [n["name"] for n in builder.nodes if n["op"] == "select"]
    assert selects and not [s for s in selects if re.search(r"_sel\d+$", s)]
    mixes = [n for n in builder.nodes if n["op"] == "wsum"]
    assert len(mixes) == model.num_layers - 1  # psi' of every layer but the last, each needed by a shared branch
    for mix in mixes:
        layer = int(mix["name"][1:].split("_")[0]) - 1  # node l{l+1}_psi_in_mix holds psi'^l
        assert len(mix["inputs"]) == len(NAMES)
        weight = builder.state[f"layers.{mix['name']}.weight"]
        want = model.mixing(layer).detach().view(-1, 1).expand_as(weight)
        assert torch.allclose(weight, want)
        # The task readers of the next layer read the very nodes the mixture sums (one copy per blend).
        for t, src in zip(NAMES, mix["inputs"], strict=True):
            reader = nodes.get(f"l{layer + 1}_phi_{t}_conv1")
            if reader is not None:
                assert reader["inputs"] == [src]


def test_auto_mode_copies_less_than_one_concat_per_reader() -> None:
    """Under "auto", a task subset and a plan where some blends fold: parity and counts hold, and the
    materialised readers of a layer share its concat."""
    model = make("aspp")
    plan = plan_of(model, seed=2)
    for tasks in (NAMES, ["depth", "cls"]):
        builder = _build(model, plan, tasks, "auto")
        ops = {n["name"]: n["op"] for n in builder.nodes}
        blends = [n for n in builder.nodes if n["name"].endswith("_in_sel") and not n["name"].startswith("head_cls")]
        assert blends
        for n in blends:  # a materialised blend selects from its layer's concat (or a lone branch), not its own
            assert re.fullmatch(r"l\d_cat", n["inputs"][0]) or ops[n["inputs"][0]] == "relu", n
        # A concat of its own is made only for a reader that folds the blend into its weights.
        for n in builder.nodes:
            if n["op"] == "concat" and n["name"].endswith("_in_cat"):
                readers = [m for m in builder.nodes if n["name"] in m["inputs"]]
                assert readers and all(m["op"] in ("conv", "gap") for m in readers)


def _convs(builder) -> dict[str, dict]:
    return {n["name"]: n for n in builder.nodes if n["op"] == "conv"}


@pytest.mark.parametrize(("seed", "tasks"), [(0, NAMES), (1, NAMES), (3, ["seg", "depth"]), (2, ["depth", "cls"])])
def test_layer0_and_light_heads_run_one_conv_each(seed: int, tasks: list[str]) -> None:
    """Layer 0's branches all read the stem: their conv1 is one conv with the filters stacked; two light heads or
    more run their first conv as one grouped conv. Same parameters and FLOPs as one conv per branch, fewer
    calls; parity and exact counts hold (`_build`)."""
    from deploymtl.flops import measure

    model = make()
    plan = plan_of(model, seed=seed)
    merged, apart = _build(model, plan, tasks, "auto", merge=True), _build(model, plan, tasks, "auto", merge=False)
    convs, apart_convs = _convs(merged), _convs(apart)
    branches0 = [n for n in apart_convs if n.startswith("l0_") and n.endswith("_conv1")]
    light = [t for t in tasks if t != "cls"]
    assert len(branches0) >= 2
    assert not [n for n in convs if n.startswith("l0_") and n.endswith("_conv1") and n != "l0_conv1"]
    assert convs["l0_conv1"]["inputs"] == ["stem_pool"] and "groups" not in convs["l0_conv1"]["attrs"]
    assert convs["l0_conv1"]["attrs"]["cout"] == sum(apart_convs[n]["attrs"]["cout"] for n in branches0)
    if len(light) >= 2:
        assert convs["heads_conv"]["attrs"]["groups"] == len(light)
        assert not [n for n in convs if n.startswith("head_") and n.endswith("_conv")]
    assert len(convs) == len(apart_convs) - (len(branches0) - 1) - (len(light) - 1 if len(light) >= 2 else 0)
    # Nothing computed twice or added: the same parameters and the same FLOPs.
    a, b = merged.build(), apart.build()
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())
    x = torch.randn(1, 3, 32, 40)
    assert measure(a.forward, a, x, tasks).flops["total"] == measure(b.forward, b, x, tasks).flops["total"]


def test_merged_graph_exports_with_grouped_conv_and_slices(tmp_path) -> None:
    """The merged graph is plain ONNX: a grouped Conv for the heads, each branch's slice as a Slice/Split, and
    ONNX Runtime gives the static model's outputs."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from deploymtl.export.onnx import export_onnx

    model = make()
    plan = plan_of(model, seed=1)
    static = _build(model, plan, NAMES, "auto", merge=True).build()
    proto = export_onnx(static, channels=3, height=32, width=40, outputs=NAMES)
    onnx.checker.check_model(proto)
    groups = [next((a.i for a in n.attribute if a.name == "group"), 1) for n in proto.graph.node if n.op_type == "Conv"]
    assert 2 in groups  # the seg and depth light heads
    assert {"Slice", "Split"} & {n.op_type for n in proto.graph.node}
    x = torch.randn(2, 3, 32, 40)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip(NAMES, sess.run(NAMES, {"image": x.numpy()}), strict=True))
    with torch.no_grad():
        want = static(x)
    for t in NAMES:
        np.testing.assert_allclose(got[t], want[t].numpy(), atol=1e-4, rtol=1e-4)
