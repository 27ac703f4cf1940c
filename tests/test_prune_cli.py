"""`deploymtl prune` and `deploymtl inspect` end to end on tiny checkpoints of every family with a surgeon.

Checkpoints are written directly in the supernet.pt format (`Trainer.save_supernet`'s keys) with hand-set decisions
and non-trivial BatchNorm statistics, so BN folding is exercised; no training is needed to test the surgeon.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from deploymtl import __version__
from deploymtl.cli.main import main
from deploymtl.config import load_recipe
from deploymtl.families import FAMILY_NAMES, build_supernet
from deploymtl.formats.static import load_static
from deploymtl.formats.supernet import SUPERNET_FORMAT
from deploymtl.io import save_torch
from deploymtl.models.checkpoint import load_supernet

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = list(FAMILY_NAMES)
SMALL = {"model.blocks": [1, 1, 1, 1], "model.width": 4, "model.head_hidden": 8, "data.height": 32,
         "data.width": 48, "data.train_size": 1, "data.val_size": 6, "prune.verify_samples": 6,
         "prune.accept_approximation": False}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _decide(family: str, model, *, approx: bool = False) -> None:
    """Hand-set decisions with every kind of removal the family has."""
    names = model.task_names
    if family == "adashare":
        d = model.decisions()
        n = model.num_blocks
        d["policy"] = {names[0]: [1, 0, 0, 1][:n], names[1]: [1, 1, 0, 1][:n], names[2]: [0] * n}  # one skips all
        model.set_decisions(d)
    elif family == "gated":
        g = torch.Generator().manual_seed(3)
        d = model.decisions()
        d["gates"] = {t: [torch.randint(0, 2, (s.cout,), generator=g).tolist() for s in model.slots] for t in names}
        d["gates"][names[0]][0] = [1] * model.slots[0].cout  # layer 0: task 0 wholly specific
        model.set_decisions(d)
    elif family == "auxnas":
        with torch.no_grad():  # aux->primary links removed: exactly 0, or small but not 0 (an approximation)
            model.alpha_p.fill_(-6.0 if approx else -1e4)
        model.set_decisions(model.decisions())


def make_checkpoint(path: Path, family: str, *, approx: bool = False, family_name: str | None = None,
                    recipe: dict | None = None) -> Path:
    """A tiny untrained checkpoint of `family` (`recipe`: more dotted recipe overrides) with `_decide`'s decisions."""
    rec = load_recipe(ROOT / "recipes" / f"{family}_tiny.yaml", SMALL | (recipe or {}))
    torch.manual_seed(0)
    model = build_supernet(rec.family, rec.tasks, rec.model, rec.search)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.1)
    _decide(family, model, approx=approx)
    return save_torch(path, {
        "format": SUPERNET_FORMAT, "family": family_name or rec.family, "deploymtl_version": __version__,
        "recipe": rec.resolved(), "tasks": [t.model_dump() for t in rec.tasks],
        "state_dict": model.state_dict(), "decisions": model.decisions(), "metrics": {}})


@pytest.fixture(scope="module", params=FAMILIES)
def ckpt(request, tmp_path_factory) -> tuple[str, Path]:
    family = request.param
    return family, make_checkpoint(tmp_path_factory.mktemp(family) / "supernet.pt", family)


def _run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(args))
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def done(ckpt, tmp_path_factory) -> dict:
    """`deploymtl inspect` and `deploymtl prune` of the family's checkpoint, run once per module."""
    family, path = ckpt
    root = tmp_path_factory.mktemp(f"{family}_out")
    insp = _run("inspect", str(path), "-o", str(root / "insp"))
    prune = _run("prune", str(path), "-o", str(root / "p"))
    return {"family": family, "ckpt": path, "root": root, "inspect": insp, "prune": prune}


def _val_images(path: Path, n: int = 4) -> torch.Tensor:
    from deploymtl.surgery.prune import prepare, verification_images

    return verification_images(prepare(path).recipe, n)


def test_inspect(done: dict) -> None:
    rc, out, err = done["inspect"]
    assert rc == 0, err
    assert f"{done['family']} plan for" in out and "FLOPs" in out and "before" in out
    plan = json.loads((done["root"] / "insp" / "plan.json").read_text())
    assert plan["format"] == "deploymtl.plan/1" and plan["family"] == done["family"]
    assert plan["source"]["checkpoint"] == str(done["ckpt"])
    assert (done["root"] / "insp" / "plan.png").read_bytes()[:4] == b"\x89PNG"
    inspected = json.loads((done["root"] / "insp" / "inspect.json").read_text())
    assert inspected["static_params"] == inspected["expected_params"] > 0
    assert inspected["tasks"] == plan["tasks"] and set(inspected["flops"]) == {"before", "masked", "after"}


def test_prune(done: dict) -> None:
    family, path, root = done["family"], done["ckpt"], done["root"]
    rc, out, err = done["prune"]
    assert rc == 0, err
    plan = json.loads((root / "p" / "plan.json").read_text())
    report = json.loads((root / "p" / "prune_report.json").read_text())
    assert report["passed"] is True and report["family"] == family and report["tasks"] == plan["tasks"]
    assert plan == json.loads((root / "insp" / "plan.json").read_text())
    for key in ("params", "flops"):
        for stage in ("before", "masked", "after"):
            assert set(report[key][stage]) == {*report["tasks"], "total"}
    assert report["flops"]["after"]["total"] < report["flops"]["masked"]["total"]
    inspected = json.loads((root / "insp" / "inspect.json").read_text())
    assert report["params"]["after"]["total"] == report["removal"]["static_params"] == inspected["static_params"]
    for task in report["tasks"]:
        p = report["parity"][task]
        assert p["passed"] is True and p["max_abs"] <= 1e-4 and p["max_rel"] >= 0
    r = report["removal"]
    assert r["passed"] and r["params_match"] and r["bit_identical"] and r["grad_outside_kept"] == 0
    assert r["removed_elements"] > 0
    expected_removal = {"adashare": ("blocks.2.body", r["removed_prefixes"]),  # the block no task executes
                        "auxnas": ("aux", r["removed_prefixes"]),  # the auxiliary column
                        "gated": ("specific.seg.1.body.conv2.weight", r["partial_tensors"])}  # gated-off filters
    name, where = expected_removal[family]
    assert name in where, r
    family_options = {"adashare": {"share_prefix": True}, "gated": {"fold_blends": "auto", "merge_convs": True},
                      "auxnas": {}}[family]  # the family's surgeon options, resolved (defaults)
    assert report["options"] == {"tasks": report["tasks"], "round_channels": 1, "accept_approximation": False,
                                 "atol": 1e-4, "rtol": 1e-3, "verify_samples": 6, "family_options": family_options}
    assert plan["options"] == {"round_channels": 1}  # a plan file records what was set
    assert report["plan"]["edited"] is False and report["source"]["checkpoint"] == str(path)
    assert "| task | max abs | max rel | passed |" in (root / "p" / "prune_report.md").read_text()
    assert "Parity" in out and "proof of removal" in out
    # pruned.pt reloads (weights only) into a static model equal to the supernet in deployed mode
    art = load_static(root / "p" / "pruned.pt")
    assert art.family == family and art.task_names == report["tasks"] and art.plan == plan
    assert art.input == {"channels": 3, "height": 32, "width": 48, "mean": [0.5] * 3, "std": [0.25] * 3,
                         "channel_order": "RGB", "scale": 1 / 255, "dtype": "float32"}
    assert art.extra["removed_prefixes"] == r["removed_prefixes"]
    model, _ = load_supernet(path)
    model.set_deployed(True)
    x = _val_images(path)
    with torch.no_grad():
        ours, ref = art.model(x), model(x)
    assert list(ours) == report["tasks"]
    for task in report["tasks"]:
        torch.testing.assert_close(ours[task], ref[task], atol=1e-4, rtol=1e-3)


def test_task_subset_and_edited_plan(done: dict, tmp_path: Path) -> None:
    family, path = done["family"], done["ckpt"]
    full = json.loads((done["root"] / "p" / "prune_report.json").read_text())
    task = full["tasks"][0]
    rc, _, err = _run("prune", str(path), "-o", str(tmp_path / "one"), "--tasks", task)
    assert rc == 0, err
    one = json.loads((tmp_path / "one" / "prune_report.json").read_text())
    assert one["tasks"] == [task] and list(one["parity"]) == [task] and one["passed"]
    assert one["params"]["after"]["total"] <= full["params"]["after"]["total"]
    assert load_static(tmp_path / "one" / "pruned.pt").task_names == [task]
    # an edited plan is honoured
    plan = json.loads((done["root"] / "p" / "plan.json").read_text())
    d = plan["decisions"]
    if family == "adashare":
        d["policy"][task] = [1] * len(d["policy"][task])
    elif family == "gated":
        d["gates"][task] = [[1] * len(row) for row in d["gates"][task]]
    else:
        link = next(k for k in d["links"] if "primary->" in k)
        d["links"][link]["kept"] = not d["links"][link]["kept"]
    (tmp_path / "edited.json").write_text(json.dumps(plan))
    rc, _, err = _run("prune", str(path), "-o", str(tmp_path / "ed"), "--plan", str(tmp_path / "edited.json"))
    assert rc == 0, err
    ed = json.loads((tmp_path / "ed" / "prune_report.json").read_text())
    assert ed["passed"] and ed["plan"]["edited"] is True and ed["plan"]["from"] == str(tmp_path / "edited.json")
    assert json.loads((tmp_path / "ed" / "plan.json").read_text())["decisions"] == d
    if family == "adashare":  # every block executed now
        assert ed["params"]["after"][task] > full["params"]["after"][task]
    elif family == "gated":  # all channels specific: the task no longer reads the shared branch
        assert ed["params"]["after"][task] != full["params"]["after"][task]


def _bad_plan(family: str, plan: dict, kind: str) -> dict:
    d = plan["decisions"]
    task = plan["tasks"][0]
    if kind == "unknown_task":
        plan["tasks"] = [task, "nope"]
    elif family == "adashare":
        d["policy"][task] = d["policy"][task] + [1]
    elif family == "gated":
        d["gates"][task][0] = d["gates"][task][0] + [1]
    else:
        d["links"]["stage9/aux0->primary"] = {"weight": 0.0, "kept": False}
    return plan


@pytest.mark.parametrize("kind", ["truncated", "unknown_family", "unknown_task", "out_of_range"])
def test_bad_input_exits_2_and_writes_nothing(done: dict, kind: str, tmp_path: Path) -> None:
    family, path = done["family"], done["ckpt"]
    args: list[str] = []
    if kind == "truncated":
        bad = tmp_path / "supernet.pt"
        bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "unknown_family":
        bad = tmp_path / "supernet.pt"
        make_checkpoint(bad, family, family_name="yolo")
    else:
        plan = _bad_plan(family, json.loads((done["root"] / "insp" / "plan.json").read_text()), kind)
        (tmp_path / "bad.json").write_text(json.dumps(plan))
        bad, args = path, ["--plan", str(tmp_path / "bad.json")]
    for command in ("prune", "inspect"):
        out_dir = tmp_path / f"out_{command}"
        rc, _, err = _run(command, str(bad), "-o", str(out_dir), *args)
        assert rc == 2, err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert not out_dir.exists()
        expected = {"truncated": "is truncated, corrupt or not a weights-only torch file",
                    "unknown_family": "unknown family 'yolo'", "unknown_task": "tasks: unknown task 'nope'",
                    "out_of_range": "decisions: "}[kind]
        assert expected in err, err


def test_forced_parity_failure_exits_1_with_table(done: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from deploymtl.surgery.prune import Surgery

    path = done["ckpt"]
    shutil.copytree(done["root"] / "p", tmp_path, dirs_exist_ok=True)
    assert (tmp_path / "pruned.pt").exists()
    build = Surgery.build_static

    def edited_weight(self: Surgery):
        static = build(self)
        with torch.no_grad():
            static.layers[static.spec["nodes"][0]["name"]].weight.mul_(1.5)  # the stem conv: every task changes
        return static

    monkeypatch.setattr(Surgery, "build_static", edited_weight)
    capsys.readouterr()
    assert main(["prune", str(path), "-o", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("error: parity failed (atol 0.0001, rtol 0.001): ")
    report = json.loads((tmp_path / "prune_report.json").read_text())
    assert report["passed"] is False and report["artifact"] is None
    assert all(not p["passed"] and p["max_abs"] > 1e-4 for p in report["parity"].values())
    assert report["removal"]["passed"]  # the supernet-side proof does not depend on the static weights
    assert not (tmp_path / "pruned.pt").exists()  # the stale artifact no longer matches its report
    for task in report["tasks"]:
        assert task in captured.out
    assert "NO" in captured.out and "max abs" in captured.out


def test_auxnas_small_links_are_an_approximation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_checkpoint(tmp_path / "supernet.pt", "auxnas", approx=True)
    assert main(["prune", str(path), "-o", str(tmp_path / "refused")]) == 1
    err = capsys.readouterr().err
    assert "is an approximation" in err and "--accept-approximation" in err
    report = json.loads((tmp_path / "refused" / "prune_report.json").read_text())
    approx = report["approximation"]
    assert approx["accepted"] is False and len(approx["links"]) == 4
    assert all(0 < w < 0.01 for w in approx["links"].values())
    assert all(e["max_abs"] > 0 for e in approx["error"].values())
    assert report["parity"]["seg"]["passed"] and report["removal"]["passed"]  # exact w.r.t. the deployed mode
    assert not (tmp_path / "refused" / "pruned.pt").exists()
    assert main(["prune", str(path), "-o", str(tmp_path / "ok"), "--accept-approximation"]) == 0
    report = json.loads((tmp_path / "ok" / "prune_report.json").read_text())
    assert report["passed"] and report["approximation"]["accepted"] and report["options"]["accept_approximation"]


def test_gated_round_channels(tmp_path: Path) -> None:
    """--round-channels reaches the surgeon through the plan's options; the proof counts the rounded model."""
    path = make_checkpoint(tmp_path / "supernet.pt", "gated")
    rc, _, err = _run("prune", str(path), "-o", str(tmp_path / "r4"), "--round-channels", "4")
    assert rc == 0, err
    report = json.loads((tmp_path / "r4" / "prune_report.json").read_text())
    assert report["options"]["round_channels"] == 4
    assert json.loads((tmp_path / "r4" / "plan.json").read_text())["options"] == {"round_channels": 4}
    assert report["passed"] and report["removal"]["params_match"]
    rc, _, err = _run("prune", str(path), "-o", str(tmp_path / "r1"))
    assert rc == 0, err
    plain = json.loads((tmp_path / "r1" / "prune_report.json").read_text())
    assert report["params"]["after"]["total"] > plain["params"]["after"]["total"]
    rc, _, err = _run("prune", str(path), "-o", str(tmp_path / "r0"), "--round-channels", "0")
    assert rc == 2 and "--round-channels" in err and not (tmp_path / "r0").exists()


def test_count_mismatch_fails_the_proof(done: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A static model holding one parameter more or less than the plan says is a verification failure."""
    from deploymtl.surgery.prune import Surgery

    expected = Surgery.expected_params
    monkeypatch.setattr(Surgery, "expected_params", lambda self: expected(self) + 1)
    rc, _, err = _run("prune", str(done["ckpt"]), "-o", str(tmp_path))
    assert rc == 1
    report = json.loads((tmp_path / "prune_report.json").read_text())
    n = report["removal"]["static_params"]
    assert f"proof of removal failed: static model has {n:,} parameters, the plan says {n + 1:,}" in err
    assert report["removal"]["params_match"] is False and not report["passed"]
    assert all(p["passed"] for p in report["parity"].values()) and not (tmp_path / "pruned.pt").exists()
