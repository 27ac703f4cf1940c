"""AdaShare's three-stage schedule through the real Trainer (a few steps), the checkpoint, and resuming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from deploymtl.config import load_recipe, parse_recipe
from deploymtl.models.checkpoint import load_supernet
from deploymtl.train.trainer import Trainer

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _recipe(**search):
    return parse_recipe({
        "name": "adashare_test", "family": "adashare", "seed": 3,
        "tasks": [{"name": "seg", "kind": "segmentation", "channels": 5}, {"name": "depth", "kind": "depth"}],
        "data": {"height": 32, "width": 32, "train_size": 32, "val_size": 8},
        "model": {"blocks": [1, 1, 1, 1], "width": 4, "head_hidden": 8},
        "search": {"warmup_epochs": 1, "policy_epochs": 2, "retrain_epochs": 1, "curriculum_start": 2,
                   "curriculum_step": 2} | search,
        "train": {"batch_size": 8, "threads": 1, "single_task_baselines": False},
    })


@pytest.mark.slow
def test_three_stages_checkpoint_and_resume(tmp_path: Path) -> None:
    rec = _recipe()
    trainer = Trainer(rec, tmp_path / "run", max_steps=2, progress=False)
    report = trainer.run()
    assert [s["name"] for s in report["stages"]] == ["warmup", "policy", "retrain"]
    assert [s["deployed"] for s in report["stages"]] == [False, False, True]
    assert all(len(s["epochs"]) == e for s, e in zip(report["stages"], (1, 2, 1), strict=True))
    assert set(report["stages"][1]["epochs"][0]["loss"]) == {"weights", "policy"}

    model, ckpt = load_supernet(tmp_path / "run" / "supernet.pt")
    dec = model.decisions()
    assert dec["policy"] == report["decisions"]["policy"] == ckpt["decisions"]["policy"]
    assert dec["rule"] == "argmax"
    assert all(len(p) == 4 and set(p) <= {0, 1} for p in dec["policy"].values())
    # the frozen policy is the argmax of the learned logits
    for t, probs in dec["probs"].items():
        assert dec["policy"][t] == [int(p[0] >= 0.5) for p in probs]
    assert float(model.temperature) == pytest.approx(5.0 * 0.965**2)  # decayed after each policy epoch
    assert int(model.curriculum_k) == 4
    json.dumps(report)  # the report is plain JSON

    x = torch.randn(2, 3, 32, 32)
    trainer.model.eval().set_deployed(True)
    with torch.no_grad():
        a, b = trainer.model(x), model.set_deployed(True)(x)
    assert all(torch.equal(a[t], b[t]) for t in a)

    # resuming a finished run re-runs nothing: same weights, same decisions (no second re-init)
    resumed = Trainer(rec, tmp_path / "again", max_steps=2, progress=False, resume=tmp_path / "run" / "train_state.pt")
    again = resumed.run()
    assert again["decisions"] == report["decisions"]
    assert again["metrics"]["final"] == report["metrics"]["final"]


def test_sample_rule_recorded_in_checkpoint(tmp_path: Path) -> None:
    rec = _recipe(decision_rule="sample", sample_seed=4, warmup_epochs=0, retrain_epochs=0, policy_epochs=1)
    Trainer(rec, tmp_path, max_steps=1, progress=False).run()
    model, ckpt = load_supernet(tmp_path / "supernet.pt")
    assert ckpt["decisions"]["rule"] == model.decisions()["rule"] == "sample"


def test_recipes_validate() -> None:
    tiny = load_recipe(RECIPES / "adashare_tiny.yaml")
    assert tiny.family == "adashare" and [t.name for t in tiny.tasks] == ["seg", "depth", "normal"]
    assert tiny.model_cfg().block_counts() == [2, 2, 2, 2]
    paper = load_recipe(RECIPES / "adashare_nyuv2_resnet34.yaml")
    assert paper.model_cfg().block_counts() == [3, 4, 6, 3] and paper.model_cfg().width == 64
    assert paper.model_cfg().head == "aspp" and paper.data.source == "nyuv2"
