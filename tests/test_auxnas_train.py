"""Aux-NAS schedule through the Trainer: stages, frozen decisions, supernet.pt reloads the same deployed model."""

from __future__ import annotations

import pytest
import torch

from deploymtl.config import load_recipe, parse_recipe
from deploymtl.models.checkpoint import load_supernet
from deploymtl.train.trainer import Trainer


def _recipe(**search):
    return parse_recipe({
        "name": "auxnas_test", "family": "auxnas",
        "tasks": [{"name": "seg", "kind": "segmentation", "channels": 5}, {"name": "depth", "kind": "depth"},
                  {"name": "normal", "kind": "normals"}],
        "data": {"height": 32, "width": 32, "train_size": 32, "val_size": 8},
        "model": {"width": 8, "head_hidden": 8, "blocks": [1, 1, 1, 1]},
        "search": {"epochs": 2, "finetune_epochs": 1} | search,
        "train": {"batch_size": 8, "device": "cpu", "single_task_baselines": False, "threads": 1},
    })


@pytest.mark.slow
def test_short_training_writes_a_loadable_supernet(tmp_path):
    trainer = Trainer(_recipe(init_a2p=0.005), tmp_path, max_steps=2, progress=False)
    report = trainer.run()
    assert [s["name"] for s in report["stages"]] == ["search", "finetune"]
    assert report["stages"][1]["deployed"] is True
    assert report["decisions_summary"]["aux_to_primary"]["removed"] == 4  # below the threshold from the start
    model, ckpt = load_supernet(tmp_path / "supernet.pt")
    assert ckpt["decisions"] == report["decisions"] == model.decisions()
    assert bool(model.frozen) and model.deployed is False
    x = torch.randn(2, 3, 32, 32)
    trainer.model.eval().set_deployed(True)
    model.set_deployed(True)
    with torch.no_grad():
        ref, out = trainer.model(x), model(x)
    assert all(torch.equal(ref[t], out[t]) for t in ("seg", "depth", "normal"))


@pytest.mark.slow
def test_finetune_trains_only_what_is_deployed(tmp_path):
    searched = Trainer(_recipe(finetune_epochs=0), tmp_path / "a", max_steps=2, progress=False)
    searched.run()
    tuned = Trainer(_recipe(finetune_epochs=1), tmp_path / "b", max_steps=2, progress=False)
    tuned.run()
    primary = {id(p) for p in tuned.model.primary_parameters()}
    a, b = dict(searched.model.named_parameters()), dict(tuned.model.named_parameters())
    changed = {n for n, p in tuned.model.named_parameters() if not torch.equal(a[n], b[n])}
    assert changed and all(id(b[n]) in primary for n in changed)
    assert any(n.startswith("primary.") for n in changed) and any(n.startswith("heads.seg") for n in changed)
    assert not any(n.startswith(("aux", "heads.depth", "heads.normal", "alpha")) for n in changed)


def test_recipes_validate():
    tiny = load_recipe("recipes/auxnas_tiny.yaml")
    assert tiny.search_cfg().l1_weight == 1000.0 and tiny.model_cfg().primary == ["seg"]
    paper = load_recipe("recipes/auxnas_nyuv2_resnet34.yaml")
    assert paper.model_cfg().block_counts() == [3, 4, 6, 3] and paper.model_cfg().width == 64
