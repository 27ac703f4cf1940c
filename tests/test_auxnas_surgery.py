"""Aux-NAS surgeon: the auxiliary columns vanish, parity with the deployed supernet, exact parameter counts."""

from __future__ import annotations

import math

import matplotlib
import pytest
import torch
from surgery_helpers import cut_of
from test_auxnas import _randomise_bn

from deploymtl.errors import DeploymtlError
from deploymtl.families import build_supernet
from deploymtl.models.auxnas import NddrFusion
from deploymtl.tasks import TaskSpec

matplotlib.use("Agg")

SEG = TaskSpec(name="seg", kind="segmentation", channels=5)
DEPTH = TaskSpec(name="depth", kind="depth")
NORMAL = TaskSpec(name="normal", kind="normals")
TINY = {"width": 8, "head_hidden": 16, "blocks": [1, 1, 1, 1]}

# Hand count of the static primary column for TINY (widths 8/16/32/64, BN folded into a conv bias):
STEM = 3 * 8 * 49 + 8                                                   # conv7x7
BLOCKS = ((8 * 8 * 9 + 8) + (8 * 8 * 9 + 8)                             # stage 1, no shortcut
          + (8 * 16 * 9 + 16) + (16 * 16 * 9 + 16) + (8 * 16 + 16)      # stage 2, stride 2 + ds
          + (16 * 32 * 9 + 32) + (32 * 32 * 9 + 32) + (16 * 32 + 32)    # stage 3, dilation 2 + ds
          + (32 * 64 * 9 + 64) + (64 * 64 * 9 + 64) + (32 * 64 + 64))   # stage 4, dilation 4 + ds
FUSIONS = sum(c * c + c for c in (8, 16, 32, 64))                       # 1x1 on x_self's columns only
SEG_HEAD = (64 * 16 * 9 + 16) + (16 * 5 + 5)                            # light head: conv3x3-BN, conv1x1
DEPTH_HEAD = (64 * 16 * 9 + 16) + (16 * 1 + 1)
PRIMARY_ONLY = STEM + BLOCKS + FUSIONS + SEG_HEAD
assert PRIMARY_ONLY == 92829


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _model(tasks, model_cfg=None, seed=0):
    """A tiny supernet with random BN statistics and non-identity fusions (so the auxiliary column matters)."""
    torch.manual_seed(seed)
    model = build_supernet("auxnas", tasks, TINY | (model_cfg or {}), {})
    _randomise_bn(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, NddrFusion):
            m.conv.weight.data.normal_(0, 0.3, generator=g)
    with torch.no_grad():
        model.alpha_p.fill_(-1e4)  # searched: every aux->primary link exactly 0
        model.alpha_a.fill_(_logit(0.6))
    return model.eval()


def _prune(model, decisions, tasks):
    cut = cut_of(model, decisions, tasks)
    cut.apply()
    builder = cut.build()
    return builder, builder.build()


def _max_err(model, static, tasks):
    x = torch.randn(3, 3, 48, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, out = model(x), static(x)
    assert set(out) == set(tasks)
    return max(float((ref[t] - out[t]).abs().max()) for t in tasks)


def _params(static) -> int:
    return sum(p.numel() for p in static.parameters())


def test_all_links_removed_is_the_primary_column_alone():
    model = _model([SEG, DEPTH, NORMAL])
    plan = model.decisions()
    assert not any(v["kept"] for k, v in plan["links"].items() if k.endswith("->primary"))
    builder, static = _prune(model, plan, ["seg"])
    assert _max_err(model, static, ["seg"]) < 1e-4
    assert _params(static) == PRIMARY_ONLY == cut_of(model, plan, ["seg"]).expected_params()
    names = [n["name"] for n in builder.nodes]
    assert not any(n.startswith("a0_") for n in names)  # no auxiliary node, weight or input left
    assert not any(k.startswith("layers.a0_") for k in builder.state)
    assert not any(n["op"] == "concat" for n in builder.nodes)
    fusions = [n for n in builder.nodes if n["name"].startswith("p_fuse") and n["op"] == "conv"]
    assert [(n["attrs"]["cin"], n["attrs"]["cout"]) for n in fusions] == [(8, 8), (16, 16), (32, 32), (64, 64)]
    assert [n["op"] for n in builder.nodes if n["name"].startswith("p_fuse")] == ["conv", "relu"] * 4
    assert cut_of(model, plan, ["seg"]).approximation_links() == {}  # weights are exactly 0: no approximation
    s = cut_of(model, plan, ["seg"]).summary()
    assert s["aux_networks_removed"] == 1 and s["links_kept"] == [] and s["heads_removed"] == ["depth", "normal"]
    assert s["params"]["static"] == PRIMARY_ONLY and s["alphas_removed"] == 8


def test_plan_keeping_a_link_keeps_the_auxiliary_prefix():
    model = _model([SEG, DEPTH, NORMAL])
    with torch.no_grad():
        model.alpha_p[1, 0] = _logit(0.3)  # stage2/aux0->primary kept by the rule
        model.alpha_a[0, 0] = _logit(0.005)  # stage1/primary->aux0 removed: a real approximation inside the prefix
    plan = model.decisions()
    assert plan["links"]["stage2/aux0->primary"]["kept"] and not plan["links"]["stage1/primary->aux0"]["kept"]
    builder, static = _prune(model, plan, ["seg"])
    assert _max_err(model, static, ["seg"]) < 1e-4
    # + aux stem, aux stages 1-2, aux fusion 1 (self columns only), 16x16 extra columns in primary fusion 2
    aux_prefix = STEM + (8 * 8 * 9 + 8) * 2 + (8 * 16 * 9 + 16) + (16 * 16 * 9 + 16) + (8 * 16 + 16) + (8 * 8 + 8)
    assert _params(static) == PRIMARY_ONLY + aux_prefix + 16 * 16 == cut_of(model, plan, ["seg"]).expected_params()
    names = {n["name"] for n in builder.nodes}
    assert {"a0_s1_b0_relu", "a0_s2_b0_relu", "a0_fuse1_relu", "p_fuse2_cat"} <= names
    assert not any(n.startswith(("a0_s3", "a0_fuse2", "head_depth", "head_normal")) for n in names)
    assert cut_of(model, plan, ["seg"]).approximation_links() == {"stage1/primary->aux0": pytest.approx(0.005)}
    # keeping the p2a link too: aux fusion 1 reads the primary stage-1 features
    plan["links"]["stage1/primary->aux0"]["kept"] = True
    _, static = _prune(model, plan, ["seg"])
    assert _max_err(model, static, ["seg"]) < 1e-4
    assert _params(static) == PRIMARY_ONLY + aux_prefix + 16 * 16 + 8 * 8


def test_task_subset_of_several_primary_tasks():
    model = _model([SEG, DEPTH, NORMAL], {"primary": ["seg", "depth"]})
    plan = model.decisions()
    _, static = _prune(model, plan, ["depth"])
    assert _max_err(model, static, ["depth"]) < 1e-4
    assert _params(static) == PRIMARY_ONLY - SEG_HEAD + DEPTH_HEAD == cut_of(model, plan, ["depth"]).expected_params()
    _, both = _prune(model, plan, ["seg", "depth"])
    assert _params(both) == PRIMARY_ONLY + DEPTH_HEAD and _max_err(model, both, ["seg", "depth"]) < 1e-4


def test_small_removed_link_is_reported_as_approximation():
    model = _model([SEG, DEPTH, NORMAL])
    with torch.no_grad():
        model.alpha_p[2, 0] = _logit(0.003)
    plan = model.decisions()
    assert not plan["links"]["stage3/aux0->primary"]["kept"]
    links = cut_of(model, plan, ["seg"]).approximation_links()
    assert links == {"stage3/aux0->primary": pytest.approx(0.003, rel=1e-4)}
    _, static = _prune(model, plan, ["seg"])
    assert _max_err(model, static, ["seg"]) < 1e-4  # exact w.r.t. the deployed supernet ...
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad(), model.soft_links():  # ... an approximation of the network the search trained
        soft_err = float((model(x)["seg"] - static(x)["seg"]).abs().max())
    assert soft_err > 1e-6
    assert model.deployed and not model._soft  # the context restores the deployed mode


@pytest.mark.parametrize(("edit", "tasks", "message"), [
    (lambda d: d["links"].update({"stage5/aux0->primary": {"weight": 0.0, "kept": False}}), ["seg"],
     "unknown link 'stage5/aux0->primary'"),
    (lambda d: d["links"].pop("stage2/primary->aux0"), ["seg"], "link 'stage2/primary->aux0' is missing"),
    (lambda d: d["links"]["stage1/aux0->primary"].update(kept="yes"), ["seg"], "needs a boolean 'kept'"),
    (lambda d: d["links"]["stage1/aux0->primary"].update(weight=1.5), ["seg"], r"weight must be a number in \[0, 1\]"),
    (lambda d: d["links"]["stage1/primary->aux0"].update(weight=0.2), ["seg"], "does not match the checkpoint"),
    (lambda d: d.update(primary=["depth"]), ["seg"], "'primary' is"),
    (lambda d: None, ["depth"], "task 'depth' is auxiliary"),
    (lambda d: None, ["sky"], "unknown task 'sky'"),
    (lambda d: None, [], "tasks: List should have at least 1 item"),
])
def test_bad_plans_are_one_line_errors(edit, tasks, message):
    model = _model([SEG, DEPTH, NORMAL])
    plan = model.decisions()
    edit(plan)
    with pytest.raises(DeploymtlError, match=message) as exc:
        cut_of(model, plan, tasks)
    assert "\n" not in exc.value.one_line()


def test_draw_marks_removed_links():
    import matplotlib.pyplot as plt

    model = _model([SEG, DEPTH, NORMAL])
    with torch.no_grad():
        model.alpha_p[1, 0] = _logit(0.3)
    fig, ax = plt.subplots()
    cut_of(model, model.decisions(), ["seg"]).draw(ax)
    assert len(ax.patches) == 8  # 4 stages x 2 directions
    assert sum(bool(p.get_hatch()) for p in ax.patches) == 3  # aux->primary at stages 1, 3, 4
    assert ax.get_yscale() == "log"
    plt.close(fig)
