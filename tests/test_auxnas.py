"""Aux-NAS supernet and search terms: fusion init, L1 ramp, deployed vs soft links, decisions, config errors."""

from __future__ import annotations

import math

import pytest
import torch

from deploymtl.errors import DeploymtlError
from deploymtl.families import build_supernet
from deploymtl.models.auxnas import AuxNasSearchConfig, NddrFusion
from deploymtl.tasks import TaskSpec

SEG = TaskSpec(name="seg", kind="segmentation", channels=5)
DEPTH = TaskSpec(name="depth", kind="depth")
NORMAL = TaskSpec(name="normal", kind="normals")
TINY = {"width": 8, "head_hidden": 16, "blocks": [1, 1, 1, 1]}


def _randomise_bn(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)


def test_fusion_is_identity_on_self_at_init():
    fusion = NddrFusion(8, 2)
    _randomise_bn(fusion)
    x, y1, y2 = (torch.randn(2, 8, 6, 8) for _ in range(3))
    w = torch.tensor([0.7, 0.3])
    fusion.eval()
    torch.testing.assert_close(fusion(x, [y1, y2], w), torch.relu(fusion.bn(x)), rtol=0, atol=1e-6)
    fusion.train()  # batch statistics: still BN of x_self alone
    expect = torch.relu(torch.nn.functional.batch_norm(x, None, None, fusion.bn.weight, fusion.bn.bias, True))
    torch.testing.assert_close(fusion(x, [y1, y2], w), expect, rtol=0, atol=1e-5)
    assert fusion.conv.bias is None and fusion.conv.weight.shape == (8, 24, 1, 1)


def test_l1_ramp_weight_and_regularizer():
    cfg = AuxNasSearchConfig()  # lambda_max 1000, window 50%..80%
    assert cfg.l1_lambda(0.4) == 0.0
    assert cfg.l1_lambda(0.65) == pytest.approx(500.0)  # halfway through the window
    assert cfg.l1_lambda(0.9) == 1000.0
    model = build_supernet("auxnas", [SEG, DEPTH], TINY, {})
    with torch.no_grad():  # sigmoid(alpha^P) = 0.2, 0.4, 0.6, 0.8: mean 0.5
        model.alpha_p.copy_(torch.logit(torch.tensor([[0.2], [0.4], [0.6], [0.8]])))
        model.alpha_a.fill_(5.0)  # the penalty must ignore primary->aux links
    assert float(model.regularizer(0.4)) == 0.0
    assert float(model.regularizer(0.65).detach()) == pytest.approx(250.0, rel=1e-5)
    assert float(model.regularizer(0.9).detach()) == pytest.approx(500.0, rel=1e-5)
    model.regularizer(0.9).backward()
    assert model.alpha_a.grad is None and torch.all(model.alpha_p.grad > 0)


def test_search_config_rejects_bad_window():
    with pytest.raises(ValueError, match="l1_window"):
        AuxNasSearchConfig(l1_window=(0.8, 0.5))


def test_deployed_equals_soft_when_links_are_exactly_zero():
    torch.manual_seed(0)
    model = build_supernet("auxnas", [SEG, DEPTH, NORMAL], TINY, {}).eval()
    for m in model.modules():  # make the auxiliary inputs matter
        if isinstance(m, NddrFusion):
            m.conv.weight.data.normal_(0, 0.3)
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        model.alpha_p.fill_(-1e4)
        assert torch.all(torch.sigmoid(model.alpha_p) == 0)
        soft = model.set_deployed(False)(x)
        hard = model.set_deployed(True)(x)
        assert all(torch.equal(soft[t], hard[t]) for t in soft)
        model.alpha_p.fill_(math.log(0.003 / 0.997))  # removed (< 0.01) but not zero: deployed != soft
        hard = model(x)
        with model.soft_links():
            soft = model(x)
        assert not torch.equal(soft["seg"], hard["seg"])
        assert torch.equal(model.set_deployed(False)(x)["seg"], soft["seg"])


def test_decisions_roundtrip_and_freeze():
    model = build_supernet("auxnas", [SEG, DEPTH, NORMAL], TINY, {"threshold": 0.01})
    with torch.no_grad():
        model.alpha_p.copy_(torch.tensor([[-8.0], [0.0], [-3.0], [-5.0]]))  # 3.4e-4, 0.5, 0.047, 0.0067
    d = model.decisions()
    kept = {k: v["kept"] for k, v in d["links"].items() if "->primary" in k}
    assert kept == {"stage1/aux0->primary": False, "stage2/aux0->primary": True, "stage3/aux0->primary": True,
                    "stage4/aux0->primary": False}
    assert d["links"]["stage2/aux0->primary"]["weight"] == pytest.approx(0.5)
    assert d["threshold"] == 0.01 and d["primary"] == ["seg"] and d["aux_networks"] == [["depth", "normal"]]
    d["links"]["stage2/aux0->primary"]["kept"] = False  # an edited plan
    d["links"]["stage3/aux0->primary"]["kept"] = False
    model.set_decisions(d)
    with torch.no_grad():
        model.alpha_p.fill_(5.0)  # frozen decisions no longer follow the alphas
    assert not any(v["kept"] for k, v in model.decisions()["links"].items() if "->primary" in k)
    s = model.decision_summary()
    assert s["aux_to_primary"] == {"kept": 0, "removed": 4, "max_weight": pytest.approx(1 / (1 + math.exp(-5)))}
    assert s["aux_columns_needed_at_inference"] == 0


@pytest.mark.parametrize(("model_cfg", "message"), [
    ({"primary": ["nope"]}, "model.primary names unknown task 'nope'"),
    ({"primary": ["seg", "depth"]}, "Aux-NAS needs at least one auxiliary task"),
    ({"aux_networks": [["depth"], ["depth"]]}, "must split the auxiliary tasks"),
])
def test_role_errors_are_one_line(model_cfg, message):
    with pytest.raises(DeploymtlError, match=message) as exc:
        build_supernet("auxnas", [SEG, DEPTH], TINY | model_cfg, {})
    assert "\n" not in exc.value.one_line()


def test_per_task_aux_networks():
    model = build_supernet("auxnas", [SEG, DEPTH, NORMAL], TINY | {"aux_networks": "per_task"}, {})
    assert model.aux_groups == [["depth"], ["normal"]] and len(model.aux) == 2
    assert model.alpha_p.shape == (4, 2) and model.primary_fusions[0].conv.weight.shape == (8, 24, 1, 1)
    assert "stage3/aux1->primary" in model.decisions()["links"]
    out = model(torch.randn(1, 3, 48, 64))
    assert set(out) == {"seg", "depth", "normal"} and out["normal"].shape == (1, 3, 48, 64)
