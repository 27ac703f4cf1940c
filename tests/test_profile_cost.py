"""Params and FLOPs per artifact (graph and reports), per-task-subset cost, and the comparison's ratios."""

from __future__ import annotations

import pytest

from deploymtl.io import write_json
from deploymtl.profile.compare import compare
from deploymtl.profile.cost import artifact_cost, subset_costs
from deploymtl.runtime.toy import toy_onnx, toy_static

# The toy at width 8 on 48x64 images, by hand (FLOPs = 2 x multiply-adds of convolutions and matmuls):
STEM = 2 * (8 * 24 * 32) * (3 * 3 * 3)  # conv3x3/2, 3 -> 8
BLOCK = 2 * (8 * 24 * 32) * (8 * 3 * 3)  # conv3x3, 8 -> 8 (twice)
SEG, DEPTH, COUNT = 2 * (5 * 24 * 32) * 8, 2 * (1 * 24 * 32) * 8, 2 * 4 * 8  # 1x1 heads, then linear 8 -> 4
TRUNK_PARAMS = (8 * 27 + 8) + 2 * (8 * 72 + 8)
HEAD_PARAMS = {"seg": 5 * 8 + 5, "depth": 8 + 1, "count": 4 * 8 + 4}


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    d = tmp_path_factory.mktemp("cost")
    return {"static": toy_static(d / "a" / "pruned.pt"), "onnx": toy_onnx(d / "b" / "model.onnx"),
            "seg": toy_onnx(d / "c" / "seg.onnx", tasks=["seg"])}


def test_static_model_cost_is_exact_per_task(toys):
    c = artifact_cost(toys["static"], "static")
    assert c["flops"] == STEM + 2 * BLOCK + SEG + DEPTH + COUNT == 2_175_040
    assert c["params"] == TRUNK_PARAMS + sum(HEAD_PARAMS.values()) == 1482
    seg = c["per_task"]["seg"]
    assert seg["alone"] == {"flops": STEM + 2 * BLOCK + SEG, "params": TRUNK_PARAMS + HEAD_PARAMS["seg"]}
    assert seg["marginal"] == {"flops": SEG, "params": HEAD_PARAMS["seg"]}
    assert c["per_task"]["count"]["marginal"] == {"flops": COUNT, "params": HEAD_PARAMS["count"]}
    assert "flop_counter" in c["source"]


def test_onnx_cost_equals_the_static_models(toys):
    s, o = artifact_cost(toys["static"], "static"), artifact_cost(toys["onnx"], "onnx")
    assert (o["params"], o["flops"]) == (s["params"], s["flops"]) and o["per_task"] == s["per_task"]
    assert "ONNX graph" in o["source"]
    seg = artifact_cost(toys["seg"], "onnx")  # a model built for a subset costs what the full one's subset does
    assert seg["flops"] == s["per_task"]["seg"]["alone"]["flops"]


def test_prune_report_beside_the_artifact_wins_and_export_reports_lead_to_it(tmp_path):
    static = toy_static(tmp_path / "prune" / "pruned.pt")
    write_json(tmp_path / "prune" / "prune_report.json", {
        "params": {"before": {"total": 9000}, "masked": {"total": 5000}, "after": {"total": 1234, "seg": 1000}},
        "flops": {"before": {"total": 9e6}, "masked": {"total": 5e6}, "after": {"total": 2_000_000}}})
    c = artifact_cost(static, "static")
    assert (c["params"], c["flops"]) == (1234, 2_000_000) and c["source"] == "prune_report.json (after)"
    assert c["per_task"]["seg"]["marginal"]["flops"] == SEG  # per-task subsets still come from the graph
    onnx = toy_onnx(tmp_path / "export" / "model.onnx")
    write_json(tmp_path / "export" / "export_report.json", {"onnx": "model.onnx", "source": {"model": str(static)}})
    c = artifact_cost(onnx, "onnx")
    assert (c["params"], c["flops"]) == (1234, 2_000_000) and "via export_report.json" in c["source"]


def test_unreadable_or_partial_reports_fall_back_to_the_graph(tmp_path):
    static = toy_static(tmp_path / "pruned.pt")
    (tmp_path / "prune_report.json").write_text("{not json")
    assert artifact_cost(static, "static")["flops"] == 2_175_040
    write_json(tmp_path / "prune_report.json", {"family": "toy"})
    assert artifact_cost(static, "static")["source"].startswith("computed")


def test_subset_costs_on_a_diamond():
    #   a -> b -> out1 ; a -> c -> out2 ; b, c -> d -> out3
    cost = {"a": (1, 10), "b": (2, 20), "c": (3, 30), "d": (4, 40)}
    inputs = {"a": ["image"], "b": ["a"], "c": ["a"], "d": ["b", "c"]}
    r = subset_costs(cost, inputs, {"t1": "b", "t2": "c", "t3": "d"})
    assert r["flops"] == 100 and r["params"] == 10
    assert r["per_task"]["t3"] == {"alone": {"params": 10, "flops": 100}, "marginal": {"params": 4, "flops": 40}}
    assert r["per_task"]["t1"]["marginal"] == {"params": 0, "flops": 0}  # t3 needs b as well


def _entry(name, flops, params, p50, tasks=("a", "b")):
    return {"name": name, "kind": "static", "tasks": list(tasks), "size_bytes": 100,
            "cost": {"flops": flops, "params": params, "per_task": {"a": {}} if flops == 100 else {}},
            "sweep": [{"batch": b, "latency_ms": {"p50_ms": v}} for b, v in p50.items()],
            "memory": {"model_peak_mb": 5.0}}


def test_compare_ratios_against_the_most_expensive_artifact():
    c = compare([_entry("small", 25, 40, {1: 2.0, 8: 8.0}), _entry("dense", 100, 80, {1: 4.0, 8: 32.0}),
                 _entry("seg", 20, 30, {1: 1.0, 8: 4.0}, tasks=("a",))])
    assert c["reference"] == "dense" and c["per_task"] == {"a": {}}
    small = c["rows"][0]
    assert small["flops_ratio"] == 0.25 and small["params_ratio"] == 0.5
    assert small["latency_ratio"] == {1: 0.5, 8: 0.25}
    assert small["latency_over_flops"] == {1: 2.0, 8: 1.0}  # batch 1 realises half the saving, batch 8 all of it
    assert [t["tasks"] for t in c["task_sets"]] == [["a", "b"], ["a"]]
    assert c["task_sets"][1] == {"tasks": ["a"], "artifacts": ["seg"], "flops": 20}
