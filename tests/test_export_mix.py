"""Per-task budgets, accuracy control and the speed-aware precision mix (`--precision int8` / `auto`)."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from export_fixtures import tiny_artifact

from deploymtl.budgets import Budget, parse_budgets
from deploymtl.cli.main import main
from deploymtl.config import ExportConfig
from deploymtl.errors import DeploymtlError
from deploymtl.export import mixed
from deploymtl.export.accuracy_control import accuracy_control, rank
from deploymtl.export.options import ExportOptions
from deploymtl.onnxkit.index import GraphIndex
from deploymtl.tasks import TaskSpec
from deploymtl.verify.metrics_gate import metric_gate

# -- budgets -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "task", "value", "absolute"), [
    (0.05, "seg", 0.05, False), ("0.01", "seg", 0.01, False), ("2%", "depth", 0.02, False),
    ("seg=0.5%,depth=1%", "seg", 0.005, False), ("seg=0.5%,depth=1%", "depth", 0.01, False),
    ("seg=0.5%,depth=1%", "normal", 0.05, False),  # not named: the default 5%
    ("depth=abs:0.002", "depth", 0.002, True), ("1%, depth = abs:0.002", "seg", 0.01, False),
    ({"seg": "0.5%", "depth": 0.02}, "depth", 0.02, False), ({"depth": "abs:0.1"}, "depth", 0.1, True),
])
def test_budget_parsing(text, task, value, absolute):
    b = parse_budgets(text).for_task(task)
    assert math.isclose(b.value, value) and b.absolute is absolute


@pytest.mark.parametrize(("text", "message"), [
    ("-0.5", "--max-metric-drop -0.5 (expected a fraction >= 0, e.g. 0.01)"),
    ("nan", "--max-metric-drop nan (expected a finite number)"),
    ("seg=abs:1%", "--max-metric-drop seg 'abs:1%': an absolute budget is in the metric's unit, not a percentage"),
    ("seg=1%,seg=2%", "task 'seg' given twice"),
    ("1%,2%", "two default budgets"),
    ("seg=", "--max-metric-drop seg ''"),
    ("=1%", "names no task"),
    ("seg=lots", "--max-metric-drop seg 'lots' (expected a fraction (0.01), a percentage (1%)"),
    ("1%,,seg=2%", "empty entry"),
])
def test_bad_budgets_are_one_line_errors(text, message):
    with pytest.raises(DeploymtlError) as exc:
        ExportOptions.parse({"max_metric_drop": text})
    assert message in exc.value.one_line() and "\n" not in exc.value.one_line()


def test_recipe_budgets_validate_and_the_flag_goes_over_them():
    with pytest.raises(Exception, match="max_metric_drop"):
        ExportConfig(max_metric_drop="depth=abs:-1")
    recipe = ExportConfig(max_metric_drop={"seg": "0.5%", "depth": "abs:0.01"})
    options = ExportOptions.parse({"max_metric_drop": "depth=0.3%"}).with_recipe(recipe)
    b = options.max_metric_drop
    assert b.for_task("seg") == Budget(value=0.005)  # the recipe's
    assert b.for_task("depth") == Budget(value=0.003)  # the flag's, over the recipe's absolute one
    assert b.for_task("normal") == Budget(value=0.05) and b.uniform_relative() is None
    assert ExportOptions.parse({}).with_recipe(ExportConfig()).max_metric_drop.uniform_relative() == 0.05


def test_absolute_and_relative_losses_in_the_metric_gate():
    tasks = [TaskSpec(name="seg", kind="segmentation", channels=3), TaskSpec(name="depth", kind="depth")]
    fp32 = {"seg": {"miou": 0.50, "pixel_acc": 0.8}, "depth": {"abs_err": 0.200, "rel_err": 0.3}}
    int8 = {"seg": {"miou": 0.49, "pixel_acc": 0.8}, "depth": {"abs_err": 0.203, "rel_err": 0.3}}
    gate = metric_gate(tasks, fp32, int8, precision="int8", budgets="seg=2%,depth=abs:0.002")
    assert gate.tasks["seg"].passed and math.isclose(gate.tasks["seg"].loss, 0.02)  # relative: 0.01 / 0.5
    assert not gate.tasks["depth"].passed and math.isclose(gate.tasks["depth"].loss, 0.003)  # absolute, lower=better
    assert math.isclose(gate.tasks["depth"].drop, 0.015) and math.isclose(gate.worst_ratio, 1.5)
    assert gate.to_dict()["budgets"]["depth"] == {"value": 0.002, "kind": "absolute", "text": "abs:0.002"}
    assert gate.to_dict()["max_drop"] is None  # the budgets differ per task
    assert metric_gate(tasks, fp32, int8, precision="int8", budgets="seg=2%,depth=abs:0.003")


# -- accuracy control on a constructed case ----------------------------------------------------------------------
TASKS = [TaskSpec(name="seg", kind="segmentation", channels=3), TaskSpec(name="depth", kind="depth")]
GROUPS = ["g0", "g1", "g2", "g3"]


def _gate(float_groups, harm, budgets="seg=1%,depth=1%"):
    """The metric gate of a graph where each int8 group costs each task the given relative loss (additive)."""
    seg = sum(harm[g][0] for g in GROUPS if g not in float_groups)
    depth = sum(harm[g][1] for g in GROUPS if g not in float_groups)
    fp32 = {"seg": {"miou": 0.5, "pixel_acc": 0.5}, "depth": {"abs_err": 1.0, "rel_err": 1.0}}
    cand = {"seg": {"miou": 0.5 * (1 - seg), "pixel_acc": 0.5}, "depth": {"abs_err": 1.0 + depth, "rel_err": 1.0}}
    return metric_gate(TASKS, fp32, cand, precision="int8", budgets=budgets)


def test_ranking_puts_the_group_that_breaks_the_worst_task_first():
    # g2 alone costs depth 3% (budget 1%); the others a little of seg
    harm = {"g0": (0.002, 0.0), "g1": (0.003, 0.001), "g2": (0.0, 0.03), "g3": (0.001, 0.002)}
    calls = []

    def full(f):
        calls.append(("full", f))
        return _gate(f, harm)

    def subset(f):
        calls.append(("subset", f))
        return _gate(f, harm)

    order = rank(GROUPS, frozenset(), subset)
    assert order[0][0] == "g2" and order[0][1] < 1 < order[1][1]
    calls.clear()
    result = accuracy_control(GROUPS, full, subset)
    assert result.passed and result.float_groups == ["g2"] and len(result.steps) == 1
    assert result.steps[0].to_dict() == {"reverted": "g2", "worst_task": "seg", "worst_ratio": 0.6, "passed": True,
                                         "reranked": False}
    assert sum(kind == "subset" for kind, _ in calls) == 4  # ranked once, each group alone


def test_a_budget_that_holds_reverts_nothing():
    harm = {g: (0.001, 0.001) for g in GROUPS}
    result = accuracy_control(GROUPS, lambda f: _gate(f, harm), lambda f: pytest.fail("ranked though passing"))
    assert result.passed and result.float_groups == [] and result.steps == []


def test_a_step_that_makes_things_worse_re_ranks():
    """The subset says g1 helps most, the whole split disagrees (g1 float makes depth worse there): the next
    groups are ranked again from the new state, and the loop still ends with every budget kept."""
    harm = {"g0": (0.0, 0.02), "g1": (0.0, 0.005), "g2": (0.0, 0.004), "g3": (0.0, 0.0)}
    worse_on_full = dict(harm, g1=(0.0, -0.004))  # on the whole split, g1's int8 version is the better one

    def full(f):
        return _gate(f, worse_on_full)

    def subset(f):
        g = _gate(f, harm)
        if f == frozenset({"g1"}):  # the subset overrates g1
            g = _gate(frozenset(GROUPS), harm)
        return g

    result = accuracy_control(GROUPS, full, subset)
    assert result.float_groups[0] == "g1" and result.steps[0].reranked and len(result.rankings) == 2
    assert result.passed and "g0" in result.float_groups


def test_nothing_left_ends_with_every_group_float():
    """Every group costs depth and its budget is zero: only the all-float graph keeps it, and the loop gets there."""
    harm = {g: (0.0, 0.01) for g in GROUPS}
    result = accuracy_control(GROUPS, lambda f: _gate(f, harm, "depth=0%"), lambda f: _gate(f, harm, "depth=0%"))
    assert sorted(result.float_groups) == GROUPS and result.passed and len(result.steps) == 4
    assert [s.passed for s in result.steps] == [False, False, False, True]


# -- the real graph ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return tiny_artifact(tmp_path_factory.mktemp("mix") / "pruned.pt")


def _float_convs(proto: onnx.ModelProto) -> set[str]:
    """The Conv nodes whose weight is not dequantised (they run in float)."""
    g = GraphIndex(proto.graph)
    return {n.name for n in g.nodes if n.op_type == "Conv"
            and not (n.input[1] in g.producer and g.producer[n.input[1]].op_type == "DequantizeLinear")}


def test_int8_accuracy_control_reverts_groups_until_a_zero_budget_holds(model_path, tmp_path, capsys):
    """All-int8 loses some depth and seg under a zero budget (test_export_precision's strict case fails the gate);
    with accuracy control the export reverts groups, the file is the mixed graph, verified, and exit 0."""
    out = tmp_path / "int8"
    rc = main(["export", str(model_path), "--precision", "int8", "--for", "trt", "--batch", "1:2:4", "-o", str(out),
               "--max-metric-drop", "seg=0%,depth=0%,count=abs:0.05", "--threads", "1"])
    log = capsys.readouterr().out
    report = json.loads((out / "export_report.json").read_text())
    mix = report["precision_mix"]
    assert rc == 0 and report["passed"] and report["metrics"]["passed"], report["failures"]
    assert "accuracy control:" in log
    reverted = mix["accuracy_control"]["reverted"]
    assert reverted and mix["float_groups"] == len(reverted) and mix["int8_groups"] > 0
    assert report["budgets"]["count"] == {"value": 0.05, "kind": "absolute", "text": "abs:0.05"}
    by_name = {g["name"]: g for g in mix["groups"]}
    assert all(by_name[r]["precision"] == "float" and by_name[r]["reason"] == "budget" for r in reverted)
    proto = onnx.load(out / "model.onnx")
    float_convs = _float_convs(proto)
    layers = [g for g in mix["groups"] if g["kind"] == "layer" and "Conv" in g["name"]]
    for g in layers:  # the file holds exactly the mix the report lists
        assert (g["name"] in float_convs) == (g["precision"] == "float"), g["name"]
    assert all(t["passed"] for t in mix["final_metrics"].values())
    assert report["lint"] == [] or all(i["severity"] != "error" for i in report["lint"])  # still TensorRT-ready


def test_auto_keeps_float_where_int8_is_slower(model_path, tmp_path, monkeypatch):
    """`auto`'s decisions on timings we control: one group is faster in float, every other one in int8, and the
    mix (that group float) is the fastest candidate: the file ships it, the report says why per group."""
    seen: list[list[str]] = []

    def fake_times(graphs, image, batches, **_):
        seen.append(list(graphs))
        keys = list(graphs)
        if "<int8>" in keys:  # step 1: per-group timings
            slow_in_int8 = keys[2 + 1]  # the second group
            out = {k: {b: 10.0 for b in batches} for k in keys}
            out["<fp32>"] = {b: 20.0 for b in batches}
            out[slow_in_int8] = {b: 8.0 for b in batches}  # float there: the graph is faster
            for k in keys[2:]:
                if k != slow_in_int8:
                    out[k] = {b: 11.0 for b in batches}
            fake_times.slow = slow_in_int8
            return out
        return {"fp32": {b: 20.0 for b in batches}, "mix": {b: 8.0 for b in batches},
                **({"int8": {b: 10.0 for b in batches}} if "int8" in keys else {})}

    monkeypatch.setattr(mixed, "time_graphs", fake_times)
    out = tmp_path / "auto"
    rc = main(["export", str(model_path), "--precision", "auto", "--batch", "1:2:4", "-o", str(out),
               "--threads", "1", "-q"])
    report = json.loads((out / "export_report.json").read_text())
    mix = report["precision_mix"]
    assert rc == 0 and report["passed"] and report["precision"] == "int8" and report["requested_precision"] == "auto"
    assert mix["chosen"] == "mix" and mix["timing"]["batches"] == [1, 2]
    by_name = {g["name"]: g for g in mix["groups"]}
    slow = by_name[fake_times.slow]
    assert slow["precision"] == "float" and slow["reason"] == "speed" and slow["float_vs_int8"] == 0.8
    assert slow["graph_ms_group_float"] == {"1": 8.0, "2": 8.0} or slow["graph_ms_group_float"] == {1: 8.0, 2: 8.0}
    assert all(g["precision"] == "int8" for n, g in by_name.items() if n != fake_times.slow
               and n not in mix["accuracy_control"].get("reverted", []))
    assert mix["candidates"]["mix"]["cost_vs_fp32"] == 0.4 and mix["candidates"]["fp32"]["cost_vs_fp32"] == 1.0
    if slow["kind"] == "layer" and "Conv" in slow["name"]:
        assert slow["name"] in _float_convs(onnx.load(out / "model.onnx"))


def test_auto_ships_fp32_when_every_int8_candidate_is_slower(model_path, tmp_path, monkeypatch):
    def fake_times(graphs, image, batches, **_):
        return {k: {b: (5.0 if k in ("<fp32>", "fp32") else 9.0) for b in batches} for k in graphs}

    monkeypatch.setattr(mixed, "time_graphs", fake_times)
    out = tmp_path / "auto"
    assert main(["export", str(model_path), "--precision", "auto", "--batch", "1:2:4", "-o", str(out),
                 "--threads", "1", "-q"]) == 0
    report = json.loads((out / "export_report.json").read_text())
    proto = onnx.load(out / "model.onnx")
    assert report["precision"] == "fp32" and report["precision_mix"]["chosen"] == "fp32"
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["deploymtl.precision"]) == "fp32"
    assert all(g["reason"] == "fp32 chosen" for g in report["precision_mix"]["groups"])
    assert report["outputs"]["depth"]["tolerance"]["atol"] < 1e-3  # checked at fp32 tolerances


def test_auto_for_trt_is_not_timed_here_and_says_so(model_path, tmp_path):
    out = tmp_path / "trt"
    assert main(["export", str(model_path), "--precision", "auto", "--for", "trt", "--batch", "1:2:4",
                 "-o", str(out), "--threads", "1", "-q"]) == 0
    mix = json.loads((out / "export_report.json").read_text())["precision_mix"]
    assert mix["timing"]["skipped"] and "TensorRT" in mix["timing"]["reason"] and "candidates" not in mix


def test_a_budget_for_a_task_the_model_lacks_is_exit_2(model_path, tmp_path, capsys):
    rc = main(["export", str(model_path), "--precision", "int8", "-o", str(tmp_path / "x"),
               "--max-metric-drop", "normals=1%"])
    err = capsys.readouterr().err
    assert rc == 2 and "no task 'normals' in this model" in err and "seg, depth, count" in err
    assert not (tmp_path / "x").exists()


def test_int8_without_accuracy_control_is_all_int8(model_path, tmp_path):
    out = tmp_path / "plain"
    main(["export", str(model_path), "--precision", "int8", "--batch", "1:2:4", "-o", str(out), "--threads", "1",
          "--no-accuracy-control", "-q"])
    report = json.loads((out / "export_report.json").read_text())
    assert report["precision_mix"] is None and report["options"]["accuracy_control"] is False
    assert np.isfinite(report["metrics"]["tasks"]["depth"]["loss"])


def test_the_demo_summary_shows_the_chosen_mix():
    from deploymtl.demo import _mix_rows

    fam = {"exports": {"fp32": {"precision": "fp32", "precision_mix": None},
                       "auto": {"precision": "int8", "precision_mix": {
                           "mode": "auto", "chosen": "mix", "int8_groups": 9, "float_groups": 2,
                           "candidates": {"fp32": {"cost_vs_fp32": 1.0}, "int8": {"cost_vs_fp32": 0.62},
                                          "mix": {"cost_vs_fp32": 0.6}},
                           "final_metrics": {"depth": {"metric": "abs_err", "value": 0.31, "passed": True,
                                                       "budget": {"text": "0.3%"}}}}}}}
    header, rows = _mix_rows(fam)
    assert len(rows) == 1 and rows[0][:5] == ["auto", "int8 (mix)", "1 / 0.62 / 0.6", "9", "2"]
    assert rows[0][5] == "depth abs_err 0.31 (budget 0.3%: ok)" and header[0] == "export"
