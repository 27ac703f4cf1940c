"""GatedMTL schedule through the Trainer: search then fine-tune with fixed gates; the checkpoint reloads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from surgery_helpers import cut_of

from deploymtl.config import parse_recipe
from deploymtl.io import read_json
from deploymtl.models.checkpoint import load_supernet
from deploymtl.train.trainer import Trainer

RECIPE = {
    "name": "gated_test", "family": "gated",
    "tasks": [{"name": "seg", "kind": "segmentation", "channels": 5}, {"name": "depth", "kind": "depth"}],
    "data": {"height": 32, "width": 40, "train_size": 16, "val_size": 8},
    "model": {"width": 4, "head_hidden": 8},
    "search": {"search_epochs": 2, "finetune_epochs": 1, "tau": 0.3, "gate_init": 0.5, "gate_init_std": 1.0},
    # One thread: on a shared 2-core machine, OpenMP spinning makes 2 threads several times slower.
    "train": {"batch_size": 4, "device": "cpu", "single_task_baselines": False, "arch_lr": 0.05, "threads": 1},
}


@pytest.fixture(autouse=True)
def _restore_threads():
    """The Trainer sets the recipe's thread count process-wide; later tests get theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_search_finetune_checkpoint_reloads(tmp_path: Path) -> None:
    recipe = parse_recipe(RECIPE)
    trainer = Trainer(recipe, tmp_path, max_steps=4, progress=False)
    alpha_before = [a.detach().clone() for a in trainer.model.alpha]
    report = trainer.run()
    assert [s["name"] for s in report["stages"]] == ["search", "finetune"]
    assert [len(s["epochs"]) for s in report["stages"]] == [2, 1]
    assert report["stages"][1]["deployed"] is True
    assert any(not torch.equal(a, b) for a, b in zip(alpha_before, trainer.model.alpha, strict=True))
    assert bool(trainer.model.gates_fixed)
    assert read_json(tmp_path / "train_report.json")["decisions_summary"]["rule"] == "alpha>0"

    model, ckpt = load_supernet(tmp_path / "supernet.pt")
    assert ckpt["decisions"]["gates"] == trainer.model.decisions()["gates"] == model.decisions()["gates"]
    x = torch.randn(2, 3, 32, 40)
    trainer.model.eval().set_deployed(True)
    with torch.no_grad():
        want, got = trainer.model(x), model.set_deployed(True)(x)
        static = cut_of(model, ckpt["decisions"], model.task_names).build().build()
        pruned = static(x)
    for t in model.task_names:
        torch.testing.assert_close(got[t], want[t], atol=0, rtol=0)
        assert (pruned[t] - got[t]).abs().max().item() < 1e-4
