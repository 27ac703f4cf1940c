"""`deploymtl export supernet.pt`: each family's supernet is pruned on the way (the surgeon), then exported and
verified; nothing the surgeon removed appears in the graph."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch

from deploymtl import __version__
from deploymtl.cli.main import main
from deploymtl.config import load_recipe
from deploymtl.families import FAMILY_NAMES, build_supernet
from deploymtl.formats.supernet import SUPERNET_FORMAT
from deploymtl.io import save_torch

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = list(FAMILY_NAMES)
SMALL = {"model.blocks": [1, 1, 1, 1], "model.width": 4, "model.head_hidden": 8, "data.height": 32,
         "data.width": 48, "data.train_size": 2, "data.val_size": 4, "prune.verify_samples": 2}


def _checkpoint(path: Path, family: str, exact_links: bool = True) -> Path:
    """An untrained supernet with decisions that remove something of every kind the family can remove
    (`exact_links=False`: Aux-NAS links removed although their weight is not 0, which pruning refuses)."""
    refuse = {} if exact_links else {"prune.accept_approximation": False}  # the tiny recipe accepts them
    rec = load_recipe(ROOT / "recipes" / f"{family}_tiny.yaml", dict(SMALL) | refuse)
    torch.manual_seed(0)
    model = build_supernet(rec.family, rec.tasks, rec.model, rec.search)
    names = model.task_names
    d = model.decisions()
    if family == "adashare":
        d["policy"] = {names[0]: [1, 0, 0, 1], names[1]: [1, 1, 0, 1], names[2]: [0, 0, 0, 0]}
    elif family == "gated":
        g = torch.Generator().manual_seed(3)
        d["gates"] = {t: [torch.randint(0, 2, (s.cout,), generator=g).tolist() for s in model.slots] for t in names}
    elif family == "auxnas":
        with torch.no_grad():  # aux->primary links exactly 0 (the auxiliary network goes), or small but not 0
            model.alpha_p.fill_(-1e4 if exact_links else -6.0)  # sigmoid(-6) = 0.0025 < the 0.01 threshold
        d = model.decisions()
    model.set_decisions(d)
    return save_torch(path, {"format": SUPERNET_FORMAT, "family": rec.family, "deploymtl_version": __version__,
                             "recipe": rec.resolved(), "tasks": [t.model_dump() for t in rec.tasks],
                             "state_dict": model.state_dict(), "decisions": model.decisions(), "metrics": {}})


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_supernet_is_pruned_then_exported_and_verified(family, tmp_path):
    torch.set_num_threads(1)
    ckpt = _checkpoint(tmp_path / "supernet.pt", family)
    out = tmp_path / "export"
    rc = main(["export", str(ckpt), "--batch", "1:1:2", "-o", str(out), "--threads", "1", "-q"])
    assert rc == 0
    report = json.loads((out / "export_report.json").read_text())
    assert report["passed"] and report["source"]["pruned"] and report["source"]["prune_passed"]
    assert (out / "pruned" / "pruned.pt").is_file() and (out / "pruned" / "prune_report.json").is_file()
    prune = json.loads((out / "pruned" / "prune_report.json").read_text())
    removed = prune["removal"]["removed_prefixes"]
    check = report["removed_parts_check"]
    assert check["passed"] and check["removed_prefixes"] == removed and check["onnx_params"] == check["static_params"]
    proto = onnx.load(out / "model.onnx")
    assert [o.name for o in proto.graph.output] == prune["tasks"]
    assert all(o["passed"] and o["max_abs"] < 1e-4 for o in report["outputs"].values())
    if family == "auxnas":
        assert removed and not any("aux" in i.name for i in proto.graph.initializer)


@pytest.mark.skipif("auxnas" not in FAMILIES, reason="needs the Aux-NAS family")
def test_a_failed_pruning_ships_its_report_and_exports_nothing(tmp_path, capsys):
    """`deploymtl export supernet.pt` composes the surgeon and the exporter in one output set: when the pruning
    fails its verification, the set still lands with the surgeon's report under pruned/ (for inspection), nothing
    is exported, the previous files of the directory are gone, and the command exits 1 with the surgeon's reason."""
    torch.set_num_threads(1)
    ckpt = _checkpoint(tmp_path / "supernet.pt", "auxnas", exact_links=False)
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.onnx").write_text("an older export")
    rc = main(["export", str(ckpt), "--batch", "1:1:2", "-o", str(out), "--threads", "1", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "--accept-approximation" in err[0]
    prune = json.loads((out / "pruned" / "prune_report.json").read_text())
    assert prune["passed"] is False and prune["approximation"]["accepted"] is False
    assert not (out / "pruned" / "pruned.pt").exists()
    assert not (out / "model.onnx").exists() and not (out / "export_report.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "supernet.pt"]  # no staging folder left
