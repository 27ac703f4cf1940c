"""Typed surgeon options: validated by the family, stored in the plan, reachable from the recipe's `prune.options`
and `--option KEY=VALUE` on `deploymtl prune` / `inspect`; bad ones are one-line errors (exit 2) that write nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_prune_cli import ROOT, SMALL, _run, make_checkpoint

from deploymtl.config import load_recipe
from deploymtl.errors import DeploymtlError
from deploymtl.formats.plan import PLAN_FORMAT, parse_plan
from deploymtl.formats.static import load_static

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def gated_ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("gated") / "supernet.pt", "gated")


def _nodes(path: Path) -> list[str]:
    return [n["name"] for n in load_static(path).model.spec["nodes"]]


def test_gated_options_from_the_cli_reach_the_surgeon(gated_ckpt: Path, tmp_path: Path) -> None:
    rc, _, err = _run("prune", str(gated_ckpt), "-o", str(tmp_path / "default"))
    assert rc == 0, err
    rc, _, err = _run("prune", str(gated_ckpt), "-o", str(tmp_path / "opt"), "--option", "merge_convs=false",
                      "--option", "fold_blends=never")
    assert rc == 0, err
    plan = json.loads((tmp_path / "opt" / "plan.json").read_text())
    assert plan["options"] == {"round_channels": 1, "fold_blends": "never", "merge_convs": False}
    report = json.loads((tmp_path / "opt" / "prune_report.json").read_text())
    assert report["options"]["family_options"] == {"fold_blends": "never", "merge_convs": False}
    assert report["passed"] and report["removal"]["params_match"]
    assert "fold_blends never, merge_convs False" in (tmp_path / "opt" / "prune_report.md").read_text()
    default, opt = _nodes(tmp_path / "default" / "pruned.pt"), _nodes(tmp_path / "opt" / "pruned.pt")
    assert "l0_conv1" in default and "l0_conv1" not in opt  # layer 0's branches no longer merged
    assert any(n.endswith("_in_mix") for n in opt)  # the mixture psi' materialised: nothing folded


def test_inspect_shows_the_options_and_the_plan_carries_them(gated_ckpt: Path, tmp_path: Path) -> None:
    rc, out, err = _run("inspect", str(gated_ckpt), "-o", str(tmp_path / "insp"), "--option", "fold_blends=always")
    assert rc == 0, err
    assert "surgeon options: round_channels=1, fold_blends=always, merge_convs=true" in out
    inspected = json.loads((tmp_path / "insp" / "inspect.json").read_text())
    assert inspected["options"] == {"round_channels": 1, "fold_blends": "always", "merge_convs": True}
    plan_path = tmp_path / "insp" / "plan.json"
    assert json.loads(plan_path.read_text())["options"] == {"round_channels": 1, "fold_blends": "always"}
    # the plan file's options are applied; --option overrides them
    rc, _, err = _run("prune", str(gated_ckpt), "-o", str(tmp_path / "p"), "--plan", str(plan_path),
                      "--option", "merge_convs=false")
    assert rc == 0, err
    plan = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert plan["options"] == {"round_channels": 1, "fold_blends": "always", "merge_convs": False}
    assert json.loads((tmp_path / "p" / "prune_report.json").read_text())["passed"]


def test_recipe_prune_options_and_the_cli_over_them(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "supernet.pt", "adashare", recipe={"prune.options": {"share_prefix": False}})
    rc, _, err = _run("prune", str(ckpt), "-o", str(tmp_path / "chains"))
    assert rc == 0, err
    assert json.loads((tmp_path / "chains" / "plan.json").read_text())["options"] == {
        "round_channels": 1, "share_prefix": False}
    rc, _, err = _run("prune", str(ckpt), "-o", str(tmp_path / "tree"), "--option", "share_prefix=true")
    assert rc == 0, err
    chains, tree = (json.loads((tmp_path / d / "prune_report.json").read_text()) for d in ("chains", "tree"))
    assert chains["passed"] and tree["passed"]
    assert tree["options"]["family_options"] == {"share_prefix": True}
    # one chain per task runs more block nodes for the same weights (each block stored once)
    assert len(_nodes(tmp_path / "chains" / "pruned.pt")) > len(_nodes(tmp_path / "tree" / "pruned.pt"))
    assert chains["removal"]["static_params"] == tree["removal"]["static_params"]


@pytest.mark.parametrize(("args", "message"), [
    (["--option", "merge_convs=maybe"], "--option merge_convs=maybe: Input should be a valid boolean"),
    (["--option", "fold_blends=sometimes"], "--option fold_blends=sometimes: Input should be 'auto', 'always' or "
                                            "'never'"),
    (["--option", "share_prefix=false"], "--option share_prefix: not an option of family gated (expected one of "
                                         "fold_blends, merge_convs)"),
    (["--option", "round_channels=4"], "--option round_channels: set it with --round-channels"),
    (["--option", "merge_convs"], "--option 'merge_convs' is not KEY=VALUE"),
    (["--option", "merge_convs=true", "--option", "merge_convs=false"], "--option merge_convs is given twice"),
])
@pytest.mark.parametrize("command", ["prune", "inspect"])
def test_bad_options_exit_2_on_one_line(gated_ckpt: Path, tmp_path: Path, command: str, args: list[str],
                                        message: str) -> None:
    rc, _, err = _run(command, str(gated_ckpt), "-o", str(tmp_path / "out"), *args)
    assert rc == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_a_family_without_options_says_so(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "supernet.pt", "auxnas")
    rc, _, err = _run("prune", str(ckpt), "-o", str(tmp_path / "out"), "--option", "merge_convs=false")
    assert rc == 2 and "--option merge_convs: not an option of family auxnas (auxnas has none)" in err, err


@pytest.mark.parametrize(("family", "options", "message"), [
    ("gated", {"fold_blends": "x"}, "prune.options.fold_blends: Input should be 'auto', 'always' or 'never'"),
    ("gated", {"round_channels": 2}, "prune.options.round_channels: set prune.round_channels instead"),
    ("adashare", {"merge_convs": False}, "prune.options.merge_convs: Extra inputs are not permitted"),
    ("auxnas", {"share_prefix": True}, "prune.options.share_prefix: Extra inputs are not permitted"),
])
def test_recipe_options_are_validated_by_the_family(family: str, options: dict, message: str) -> None:
    path = ROOT / "recipes" / f"{family}_tiny.yaml"
    with pytest.raises(DeploymtlError, match="^" + str(path).replace(".", r"\.") + ": " + message) as info:
        load_recipe(path, SMALL | {"prune.options": options})
    assert "\n" not in info.value.one_line()
    assert load_recipe(path, SMALL).prune.options == {}


def _plan_doc(options: dict) -> dict:
    return {"format": PLAN_FORMAT, "family": "gated", "tasks": ["seg"], "rule": "alpha>0", "options": options,
            "decisions": {"gates": {}}}


def test_plan_options_are_typed_and_old_plans_load() -> None:
    old = parse_plan(_plan_doc({"round_channels": 2}), "old.json")  # written before the family options existed
    assert type(old.options).__name__ == "GatedOptions"
    assert (old.options.round_channels, old.options.fold_blends, old.options.merge_convs) == (2, "auto", True)
    assert old.to_dict()["options"] == {"round_channels": 2}  # unset options are not written back
    new = parse_plan(_plan_doc({"merge_convs": False}), "new.json")
    assert new.to_dict()["options"] == {"round_channels": 1, "merge_convs": False}
    with pytest.raises(DeploymtlError, match=r"^p\.json: options\.merge_convs: Input should be a valid boolean"):
        parse_plan(_plan_doc({"merge_convs": "maybe"}), "p.json")
    with pytest.raises(DeploymtlError, match=r"^p\.json: options\.share_prefix: Extra inputs are not permitted"):
        parse_plan(_plan_doc({"share_prefix": True}), "p.json")
