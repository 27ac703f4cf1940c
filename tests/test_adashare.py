"""AdaShare supernet: Gumbel sampling, curriculum, the policy losses (hand-computed), modes and decisions."""

from __future__ import annotations

import json
import math

import pytest
import torch
from adashare_helpers import TASKS, randomize_bn, set_logits_from_policy, tiny_adashare

from deploymtl.errors import DeploymtlError
from deploymtl.models.adashare import AdaShareSearchConfig, shared_prefix


def test_gumbel_sample_shape_rows_and_temperature() -> None:
    model = tiny_adashare(curriculum=False)
    torch.manual_seed(0)
    sample = model.sample_policy("seg")
    assert sample.shape == (6, 2)
    assert torch.allclose(sample.sum(dim=1), torch.ones(6))
    assert bool((sample > 0).all())  # soft, not one-hot

    def mean_max(tau: float) -> float:
        model.temperature.fill_(tau)
        torch.manual_seed(1)
        with torch.no_grad():
            return float(torch.stack([model.sample_policy("seg").max(dim=1).values for _ in range(100)]).mean())

    hot, cold = mean_max(5.0), mean_max(0.05)
    assert hot < 0.7, hot  # tau 5: samples stay close to (0.5, 0.5)
    assert cold > 0.97, cold  # tau -> 0: samples approach one-hot


def test_curriculum_forces_leading_blocks_and_grows() -> None:
    model = tiny_adashare(curriculum_start=2, curriculum_step=1, curriculum_speed=2)
    model.start_policy_learning()
    assert int(model.curriculum_k) == 2
    sample = model.sample_policy("depth")
    assert torch.equal(sample[:4], torch.tensor([[1.0, 0.0]] * 4))
    assert not torch.equal(sample[4:], torch.tensor([[1.0, 0.0]] * 2))
    ks, temps = [], []
    for epoch in range(6):
        model.end_policy_epoch(epoch)
        ks.append(int(model.curriculum_k))
        temps.append(float(model.temperature))
    assert ks == [2, 3, 3, 4, 4, 5]  # k = start + step * ((epoch + 1) // speed)
    assert temps[-1] == pytest.approx(5.0 * 0.965**6, rel=1e-6)


@torch.no_grad()
def _hand_logits(model) -> None:
    """seg: all (0, 0); depth: all (ln 3, 0); normal: execute logits (1, 0, 0, -1, 0, 0), skip 0."""
    model.logits["seg"].zero_()
    model.logits["depth"].copy_(torch.tensor([[math.log(3.0), 0.0]] * 6))
    model.logits["normal"].copy_(torch.tensor([[1.0, 0], [0, 0], [0, 0], [-1.0, 0], [0, 0], [0, 0]]))


def test_sparsity_loss_hand_computed() -> None:
    model = tiny_adashare(curriculum=False, sparsity_weight=0.5, sharing_weight=0.0)
    _hand_logits(model)
    w = [(i + 1) / 6 for i in range(6)]  # w_l = (l+1)/L
    # -log softmax[skip]: seg ln 2 everywhere; depth ln 4 (p_skip = 1/4); normal ln(1+e), ln 2, ln 2, ln(1+1/e), ...
    nll = {"seg": [math.log(2)] * 6, "depth": [math.log(4)] * 6,
           "normal": [math.log(1 + math.e), math.log(2), math.log(2), math.log(1 + 1 / math.e), math.log(2),
                      math.log(2)]}
    expected = sum(2 * sum(wi * v for wi, v in zip(w, row, strict=True)) / 6 for row in nll.values())
    assert model.sparsity_loss().item() == pytest.approx(expected, rel=1e-6)
    assert model.regularizer(0.0).item() == pytest.approx(0.5 * expected, rel=1e-6)
    # during the curriculum only the last k blocks count (public code), w keeps its global index
    model.curriculum_k.fill_(2)
    expected_k2 = sum(2 * (w[4] * row[4] + w[5] * row[5]) / 2 for row in nll.values())
    assert model.sparsity_loss().item() == pytest.approx(expected_k2, rel=1e-6)


def test_sharing_loss_hand_computed() -> None:
    model = tiny_adashare(curriculum=False, sparsity_weight=0.0, sharing_weight=2.0)
    _hand_logits(model)
    w = [(i + 1) / 6 for i in range(6)]
    a = {"seg": [0.0] * 6, "depth": [math.log(3)] * 6, "normal": [1.0, 0, 0, -1.0, 0, 0]}
    pairs = [("seg", "depth"), ("seg", "normal"), ("depth", "normal")]
    expected = sum(sum(wl * abs(x - y) for wl, x, y in zip(w, a[i], a[j], strict=True)) for i, j in pairs)
    assert model.sharing_loss().item() == pytest.approx(expected, rel=1e-6)
    assert model.regularizer(0.5).item() == pytest.approx(2.0 * expected, rel=1e-6)
    # it has a gradient only on the execute column
    model.sharing_loss().backward()
    assert float(model.logits["normal"].grad[:, 1].abs().sum()) == 0.0
    assert float(model.logits["normal"].grad[:, 0].abs().sum()) > 0.0


POLICY = {"seg": [1, 0, 1, 1, 0, 1], "depth": [1, 1, 0, 1, 1, 0], "normal": [0, 0, 0, 0, 0, 0]}


def test_deployed_equals_soft_and_public_at_saturated_logits() -> None:
    model = tiny_adashare(curriculum=False)
    randomize_bn(model)
    set_logits_from_policy(model, POLICY)
    model.freeze_policy()
    assert model.decisions()["policy"] == POLICY
    model.eval()
    model.temperature.fill_(1.0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        soft = model.set_stage("search").set_deployed(False)(x)
        hard = model.set_deployed(True)(x)
        public = model.public_forward(x)
    for t in POLICY:
        assert (soft[t] - hard[t]).abs().max() < 1e-5
        assert (public[t] - hard[t]).abs().max() < 1e-5
    assert hard["seg"].shape == (2, 5, 32, 32) and hard["depth"].shape == (2, 1, 32, 32)


def test_warmup_runs_every_block() -> None:
    model = tiny_adashare()
    randomize_bn(model)
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        warm = model.set_stage("warmup")(x)
        model.set_decisions({"policy": {t: [1] * 6 for t in POLICY}})
        full = model.set_deployed(True)(x)
        model.set_decisions({"policy": {t: [0] + [1] * 5 for t in POLICY}})
        other = model(x)
    assert all((warm[t] - full[t]).abs().max() < 1e-6 for t in POLICY)
    assert all((warm[t] - other[t]).abs().max() > 1e-4 for t in POLICY)


def test_decisions_are_json_and_round_trip() -> None:
    model = tiny_adashare()
    plan = {"seg": [1, 0, 1, 1, 0, 1], "depth": [1, 0, 0, 1, 1, 0], "normal": [1, 0, 0, 1, 0, 0]}
    set_logits_from_policy(model, plan, margin=2.0)
    model.freeze_policy()
    dec = json.loads(json.dumps(model.decisions()))
    assert dec["rule"] == "argmax"
    assert dec["blocks"] == ["s0b0", "s0b1", "s1b0", "s1b1", "s2b0", "s3b0"]
    assert dec["probs"]["seg"][0][0] == pytest.approx(1 / (1 + math.exp(-4.0)), abs=1e-6)
    other = tiny_adashare(seed=3)
    other.set_decisions(dec)
    assert other.decisions()["policy"] == plan
    summary = model.decision_summary()
    assert summary["executed"] == {"seg": 4, "depth": 3, "normal": 2}
    assert summary["executed_by_all"] == 2 and summary["executed_by_none"] == 1  # blocks 0, 3 / block 1
    assert summary["distinct_policies"] == 3 and summary["shared_prefix"] == 2
    assert shared_prefix([[1, 0, 1], [1, 0, 0]]) == 2


def test_sample_rule_is_seeded_and_follows_probabilities() -> None:
    model = tiny_adashare(decision_rule="sample", sample_seed=7)
    with torch.no_grad():
        model.logits["seg"].copy_(torch.tensor([[30.0, -30.0], [-30.0, 30.0]] * 3))
    model.freeze_policy()
    first = model.decisions()
    assert first["rule"] == "sample"
    assert first["policy"]["seg"] == [1, 0, 1, 0, 1, 0]
    model.freeze_policy()
    assert model.decisions()["policy"] == first["policy"]  # same seed, same draw
    draws = []
    for seed in range(40):  # depth keeps equal logits: execute with probability 1/2
        model.search_cfg = model.search_cfg.model_copy(update={"sample_seed": seed})
        model.freeze_policy()
        draws.append(sum(model.decisions()["policy"]["depth"]))
    assert 0.3 < sum(draws) / (40 * 6) < 0.7


@pytest.mark.parametrize(("plan", "message"), [
    ({"policy": {"sky": [1] * 6}}, "unknown task 'sky'"),
    ({"policy": {"seg": [1] * 5}}, "has 5 entries"),
    ({"policy": {"seg": [1, 1, 2, 1, 1, 1]}}, "block s1b0 is 2"),
    ({"policy": {"seg": [1, 1, 0.5, 1, 1, 1]}}, "is 0.5"),
    ({"policy": {"seg": [1] * 6}, "blocks": ["s0b0", "s9b9"]}, "does not match"),
    ({"poliy": {}}, "missing 'policy'"),
])
def test_set_decisions_rejects_bad_plans(plan: dict, message: str) -> None:
    with pytest.raises(DeploymtlError, match=message) as info:
        tiny_adashare().set_decisions(plan)
    assert "\n" not in info.value.one_line()


def test_reinit_weights_keeps_decisions_and_is_seeded() -> None:
    model = tiny_adashare()
    set_logits_from_policy(model, POLICY, margin=2.0)
    model.freeze_policy()
    model.temperature.fill_(3.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.reinit_weights(11)
    after = model.state_dict()
    assert not torch.equal(before["blocks.0.body.conv1.weight"], after["blocks.0.body.conv1.weight"])
    for key in ("logits.seg", "policy", "temperature", "curriculum_k"):
        assert torch.equal(before[key], after[key]), key
    again = tiny_adashare()
    again.reinit_weights(11)
    assert torch.equal(again.state_dict()["heads.seg.out.weight"], after["heads.seg.out.weight"])


def test_search_config_is_strict() -> None:
    with pytest.raises(ValueError):
        AdaShareSearchConfig.model_validate({"sparsity": 1.0})
    with pytest.raises(ValueError):
        AdaShareSearchConfig.model_validate({"decision_rule": "max"})
    assert [t.name for t in TASKS] == ["seg", "depth", "normal"]
