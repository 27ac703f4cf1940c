"""GatedMTL supernet: straight-through gates, hinge sparsity loss, deployed mode, decisions, init_from."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import deploymtl.models.gated as gated
from deploymtl.config import load_recipe
from deploymtl.errors import DeploymtlError
from deploymtl.families import build_supernet
from deploymtl.io import save_torch
from deploymtl.models.backbone import SingleTaskNet
from deploymtl.tasks import TaskSpec

REPO = Path(__file__).resolve().parents[1]
TASKS = [TaskSpec(name="seg", kind="segmentation", channels=5), TaskSpec(name="depth", kind="depth")]
MODEL = {"width": 4, "head_hidden": 8}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make(search: dict | None = None, model: dict | None = None) -> gated.GatedSupernet:
    torch.manual_seed(0)
    return build_supernet("gated", TASKS, model or MODEL, search or {})


def test_binary_gate_is_exactly_binary_with_sigmoid_gradient() -> None:
    alpha = torch.tensor([-1.0, 0.3, 2.0, -0.2], requires_grad=True)
    g = gated.binary_gate(alpha)
    assert g.tolist() == [0.0, 1.0, 1.0, 0.0]
    upstream = torch.tensor([1.0, -2.0, 0.5, 3.0])
    (g * upstream).sum().backward()
    s = torch.sigmoid(alpha.detach())
    torch.testing.assert_close(alpha.grad, upstream * s * (1 - s))


def test_task_loss_gradient_reaches_every_gate_layer() -> None:
    model = make({"gate_init": 1.0}).train()
    out = model(torch.randn(2, 3, 32, 40))
    sum(o.square().mean() for o in out.values()).backward()
    for layer, alpha in enumerate(model.alpha):
        assert alpha.grad is not None and alpha.grad.abs().sum() > 0, f"no gradient at layer {layer}"
    # All gates are 1, so no task reads the shared path and the betas get no gradient yet (phi' = phi).
    assert model.beta.grad is None or model.beta.grad.abs().sum() == 0


def test_hinge_sparsity_loss_hand_computed() -> None:
    model = make({"lambda_s": 2.0, "tau": {"seg": 0.3, "depth": 0.1}})
    ln3 = math.log(3.0)  # sigmoid(ln 3) = 0.75
    with torch.no_grad():
        for alpha in model.alpha:
            alpha[0].fill_(0.0)  # seg: mean sigmoid 0.5 -> 0.5 - 0.3 = 0.2 per layer
            alpha[1].fill_(-50.0)  # depth: mean ~0 -> below tau, no loss
        model.alpha[0][1].copy_(torch.tensor([ln3, ln3, -ln3, -ln3]))  # depth layer 0: mean 0.5 -> 0.4
    # 2 * (4 layers * 0.2 + 0.4) = 2.4
    assert model.regularizer(0.5).item() == pytest.approx(2.4, abs=1e-6)
    model.set_deployed(True)
    assert model.regularizer(0.5).item() == 0.0


def _saturate(model: gated.GatedSupernet) -> None:
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for alpha in model.alpha:
            alpha.copy_(torch.where(torch.rand(alpha.shape, generator=gen) > 0.5, 20.0, -20.0))
        model.beta.normal_(generator=gen)


def test_deployed_equals_soft_forward_at_saturated_gates(monkeypatch) -> None:
    model = make().eval()
    _saturate(model)
    x = torch.randn(2, 3, 32, 40)
    with torch.no_grad():
        straight_through = model(x)
        monkeypatch.setattr(gated, "binary_gate", torch.sigmoid)  # the soft relaxation
        soft = model(x)
        model.fix_gates()
        deployed = model.set_deployed(True)(x)
    for t in model.task_names:
        assert torch.equal(straight_through[t], deployed[t])  # STE forward is exactly binary
        torch.testing.assert_close(soft[t], deployed[t], atol=1e-5, rtol=0)


def test_fixed_gates_override_alphas_and_round_trip() -> None:
    model = make()
    _saturate(model)
    plan = model.decisions()
    assert plan["rule"] == "alpha>0"
    assert [len(row) for row in plan["gates"]["seg"]] == [4, 8, 16, 32]
    assert plan["gates"]["seg"][0] == [int(v > 0) for v in model.alpha[0][0].tolist()]
    edited = {"rule": "alpha>0", "gates": {t: [[1] * len(r) for r in rows] for t, rows in plan["gates"].items()}}
    edited["gates"]["depth"][2] = [0] * 16
    model.set_decisions(edited)
    assert model.decisions()["gates"] == edited["gates"]  # the plan wins over the alphas
    summary = model.decision_summary()
    assert summary["layers"][2]["specific"] == {"seg": 16, "depth": 0}
    assert summary["layers"][2]["shared"] == {"seg": 0, "depth": 16}
    assert summary["specific_channels"] == 2 * 60 - 16


@pytest.mark.parametrize(("edit", "message"), [
    (lambda g: g.pop("depth"), "no gates for task 'depth'"),
    (lambda g: g.update(other=g["seg"]), "unknown tasks ['other']"),
    (lambda g: g["seg"].pop(), "gates.seg: 3 layers"),
    (lambda g: g["seg"][1].append(1), "gates.seg[1]: 9 channels"),
    (lambda g: g["depth"][0].__setitem__(2, 2), "gates.depth[0] has value 2"),
])
def test_set_decisions_rejects_malformed_plans(edit, message: str) -> None:
    model = make()
    plan = model.decisions()
    edit(plan["gates"])
    with pytest.raises(DeploymtlError, match=message.replace("[", r"\[").replace("]", r"\]")):
        model.set_decisions(plan)


def test_tau_must_name_every_task_once() -> None:
    with pytest.raises(DeploymtlError, match=r"search.tau: unknown tasks \['normal'\], missing tasks \['depth'\]"):
        make({"tau": {"seg": 0.5, "normal": 0.5}})
    with pytest.raises(DeploymtlError, match="search.tau for task 'seg' is 1.5"):
        make({"tau": 1.5})


def test_init_from_single_task_checkpoints(tmp_path: Path) -> None:
    cfg = gated.GatedModelConfig.model_validate(MODEL)
    torch.manual_seed(7)
    nets = {t.name: SingleTaskNet(t, cfg) for t in TASKS}
    paths = {name: str(save_torch(tmp_path / f"{name}.pt", net.state_dict())) for name, net in nets.items()}
    model = make({"init_from": paths})
    for name, net in nets.items():
        torch.testing.assert_close(model.specific[name][1].body.conv1.weight, net.bodies[1].conv1.weight)
        torch.testing.assert_close(model.specific[name][1].ds.bn.running_var, net.ds[1].bn.running_var)
        torch.testing.assert_close(model.heads[name].out.weight, net.head.out.weight)
    first = nets["seg"]  # the shared path copies the first listed task
    torch.testing.assert_close(model.stem.conv.conv.weight, first.stem.conv.conv.weight)
    torch.testing.assert_close(model.shared[3].body.conv2.weight, first.bodies[3].conv2.weight)

    wide = SingleTaskNet(TASKS[0], gated.GatedModelConfig.model_validate({**MODEL, "width": 8}))
    save_torch(tmp_path / "wide.pt", {"state_dict": wide.state_dict()})
    with pytest.raises(DeploymtlError, match="search.init_from.seg: .*wide.pt does not match the model section"):
        make({"init_from": {"seg": str(tmp_path / "wide.pt")}})
    with pytest.raises(DeploymtlError, match=r"search.init_from: unknown tasks \['normal'\]"):
        make({"init_from": {"normal": paths["seg"]}})


def test_recipes_validate() -> None:
    tiny = load_recipe(REPO / "recipes/gated_tiny.yaml")
    assert tiny.family == "gated" and [t.name for t in tiny.tasks] == ["seg", "depth", "normal"]
    big = load_recipe(REPO / "recipes/gated_nyuv2_resnet34.yaml")
    assert big.model_cfg().block_counts() == [3, 4, 6, 3] and big.data.source == "nyuv2"
    assert set(big.search_cfg().tau_for([t.name for t in big.tasks])) == {"seg", "depth", "normal"}
    with pytest.raises(DeploymtlError, match="search.lambda"):
        load_recipe(REPO / "recipes/gated_tiny.yaml", {"search.lambda": 1.0})
