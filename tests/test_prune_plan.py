"""The plan envelope: save/load round trip and one-line errors naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploymtl.errors import DeploymtlError
from deploymtl.families import build_supernet
from deploymtl.formats import plan as P
from deploymtl.formats.plan import PLAN_FORMAT, Plan, PlanSource, load_plan, parse_plan
from deploymtl.surgery.plan import check_plan, make_plan
from deploymtl.tasks import TaskSpec

TASKS = [TaskSpec(name="seg", kind="segmentation", channels=5), TaskSpec(name="depth", kind="depth")]
SHA = "ab" * 32


@pytest.fixture(scope="module")
def model():
    return build_supernet("adashare", TASKS, {"blocks": [1, 1, 1, 1], "width": 4, "head_hidden": 4}, {})


def _doc(**changes: object) -> dict:
    doc = {"format": PLAN_FORMAT, "family": "adashare", "tasks": ["seg"], "rule": "argmax",
           "options": {"round_channels": 8}, "decisions": {"policy": {"seg": [1, 0, 1, 1]}},
           "source": {"checkpoint": "x/supernet.pt", "sha256": SHA}}
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not None}


def test_round_trip(tmp_path: Path, model) -> None:
    plan = make_plan(model, "adashare", round_channels=8, source=PlanSource(checkpoint="c.pt", sha256=SHA))
    assert plan.tasks == ["seg", "depth"] and plan.rule == "argmax" and plan.options.round_channels == 8
    assert plan.decisions == model.decisions()
    path = P.save_plan(tmp_path / "plan.json", plan)
    data = json.loads(path.read_text())
    assert data["format"] == PLAN_FORMAT and data["source"] == {"checkpoint": "c.pt", "sha256": SHA}
    assert load_plan(path) == plan
    assert make_plan(model, "adashare", tasks=["depth"]).tasks == ["depth"]


def test_minimal_plan_gets_defaults() -> None:
    plan = parse_plan(_doc(options=None, source=None))
    assert isinstance(plan, Plan) and plan.options.round_channels == 1 and plan.source is None
    assert "source" not in plan.to_dict()


@pytest.mark.parametrize("data,message", [
    ([1, 2], "p.json: a plan must be a JSON object, got list"),
    (_doc(format="deploymtl.static/1"), "p.json: format: 'deploymtl.static/1' is not a deploymtl plan"),
    ({"family": "adashare"}, "p.json: format: None is not a deploymtl plan"),
    (_doc(family="yolo"), "p.json: family: Input should be 'adashare', 'gated' or 'auxnas'"),
    (_doc(tasks=[]), "p.json: tasks: List should have at least 1 item"),
    (_doc(tasks=["seg", "seg"]), "p.json: tasks: tasks repeated: ['seg']"),
    (_doc(options={"round_channels": 0}), "p.json: options.round_channels: Input should be greater than or equal"),
    (_doc(options={"round": 8}), "p.json: options.round: Extra inputs are not permitted"),
    (_doc(decisions=None), "p.json: decisions: Field required"),
    (_doc(decisions=[1]), "p.json: decisions: Input should be a valid dictionary"),
    (_doc(source={"checkpoint": "x", "sha256": "nope"}), "p.json: source.sha256: String should match pattern"),
    (_doc(extra=1), "p.json: extra: Extra inputs are not permitted"),
])
def test_envelope_errors_name_the_field(data: object, message: str) -> None:
    with pytest.raises(DeploymtlError) as exc:
        parse_plan(data, "p.json")
    assert exc.value.one_line().startswith(message)
    assert "\n" not in exc.value.one_line()


def test_malformed_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "deploymtl.plan/1", "family": ')
    with pytest.raises(DeploymtlError, match=r"plan .*bad.json is not valid JSON"):
        load_plan(bad)
    with pytest.raises(DeploymtlError, match=r"plan not found: .*missing.json"):
        load_plan(tmp_path / "missing.json")


def test_plan_must_fit_the_checkpoint(model) -> None:
    with pytest.raises(DeploymtlError, match=r"^edited.json: family: plan is for 'gated' but the checkpoint is "
                                             r"'adashare'"):
        check_plan(parse_plan(_doc(family="gated")), model, "adashare", "edited.json")
    with pytest.raises(DeploymtlError) as exc:
        check_plan(parse_plan(_doc(tasks=["seg", "normals"])), model, "adashare", "edited.json")
    assert exc.value.one_line() == ("edited.json: tasks: unknown task 'normals' (expected some of seg, depth)")
