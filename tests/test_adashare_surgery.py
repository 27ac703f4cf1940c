"""AdaShare surgeon on hand-set plans: parity with the supernet's deployed mode per task, exact parameter
counts, and the tree structure (one conv node per distinct block execution)."""

from __future__ import annotations

import json

import matplotlib
import pytest
import torch
from adashare_helpers import randomize_bn, tiny_adashare
from surgery_helpers import cut_of

from deploymtl.errors import DeploymtlError
from deploymtl.ir import build_static

matplotlib.use("Agg")
ALL = ["seg", "depth", "normal"]
# Blocks: 0 s0b0, 1 s0b1, 2 s1b0 (ds), 3 s1b1, 4 s2b0 (ds), 5 s3b0 (ds).
# Expected (block body executions, ds runs) in the tree, counted by hand from the policies.
CASES = {
    "all_shared": ({t: [1, 0, 1, 1, 0, 1] for t in ALL}, ALL, 4, 3),
    # first decision differs: {seg, normal} | {depth} at block 0, then all three apart from block 2 on
    "disjoint": ({"seg": [1, 0, 1, 0, 1, 0], "depth": [0, 1, 0, 1, 0, 1], "normal": [1, 1, 0, 0, 1, 1]}, ALL, 9, 9),
    # normal skips everything: its chain is stem -> ds(2) -> ds(4) -> ds(5)
    "task_skips_all": ({"seg": [1] * 6, "depth": [1] * 6, "normal": [0] * 6}, ALL, 6, 6),
    # seg and normal skip the downsampling block 2 (keep its ds); the ds node is shared with depth's branch
    "skipped_ds": ({"seg": [1, 1, 0, 1, 1, 1], "depth": [1] * 6, "normal": [1, 1, 0, 1, 1, 1]}, ALL, 9, 5),
    # a subset, in a different order than the model's tasks
    "subset": ({"seg": [1, 0, 1, 0, 1, 0], "depth": [0, 1, 0, 1, 0, 1], "normal": [1] * 6}, ["depth", "seg"], 6, 6),
}


@pytest.fixture(scope="module")
def model():
    m = tiny_adashare(seed=5)
    randomize_bn(m)
    return m.eval()


def _plan(model, policy: dict[str, list[int]]) -> dict:
    plan = json.loads(json.dumps(model.decisions()))  # the JSON a person would edit
    plan["policy"] = policy
    plan["rule"] = "manual"
    return plan


def _nodes(static, op: str) -> list[str]:
    return [n["name"] for n in static.spec["nodes"] if n["op"] == op]


@pytest.mark.parametrize("case", list(CASES))
def test_static_tree_matches_supernet(model, case: str) -> None:
    policy, tasks, body_runs, ds_runs = CASES[case]
    cut = cut_of(model, _plan(model, policy), tasks)
    cut.apply()
    static = cut.build().build()

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model.set_deployed(True)(x)
        out = static(x)
    assert list(out) == tasks
    for t in tasks:
        assert out[t].shape == ref[t].shape
        assert float((out[t] - ref[t]).abs().max()) < 1e-4, t

    assert sum(p.numel() for p in static.parameters()) == cut.expected_params()
    # tree: stem conv + 2 convs per body execution + 1 per ds run + 2 per light head
    assert len(_nodes(static, "conv")) == 1 + 2 * body_runs + ds_runs + 2 * len(tasks)
    assert len(_nodes(static, "add")) == body_runs
    assert not any(n["op"] in ("select", "scale", "wsum") for n in static.spec["nodes"])
    # the spec + weights rebuild the same model (what pruned.pt stores)
    rebuilt = build_static(json.loads(json.dumps(static.spec)), static.state_dict())
    with torch.no_grad():
        assert all(torch.equal(rebuilt(x)[t], out[t]) for t in tasks)


def test_all_shared_plan_is_one_chain(model) -> None:
    policy, tasks, _, _ = CASES["all_shared"]
    static = cut_of(model, _plan(model, policy), tasks, {}).build().build()
    convs = _nodes(static, "conv")
    # blocks 1 and 4 are skipped by everyone: no body nodes; block 4 keeps its shortcut
    assert not any(n.startswith(("b1_", "b4_t0_conv")) for n in convs)
    assert "b4_t0_ds_conv" in convs
    heads_input = {n["inputs"][0] for n in static.spec["nodes"] if n["name"].startswith("head_")
                   and n["name"].endswith("_conv")}
    assert len(heads_input) == 1  # every head reads the same backbone node


def test_no_prefix_sharing_option(model) -> None:
    policy, tasks, _, _ = CASES["all_shared"]
    plan = _plan(model, policy)
    chains = cut_of(model, plan, tasks, {"share_prefix": False})
    static = chains.build().build()
    assert len(_nodes(static, "conv")) == 1 + 3 * (2 * 4 + 3) + 2 * 3  # one chain per task
    assert sum(p.numel() for p in static.parameters()) == chains.expected_params()
    # one chain per task recomputes the blocks but stores each block's weights once, as the tree does
    assert chains.expected_params() == cut_of(model, plan, tasks, {}).expected_params()
    tree = cut_of(model, plan, tasks, {}).build().build()
    assert len(_nodes(static, "conv")) > len(_nodes(tree, "conv"))


def test_summary_counts(model) -> None:
    policy, tasks, body_runs, _ = CASES["disjoint"]
    s = cut_of(model, _plan(model, policy), tasks).summary()
    assert s["block_runs"] == body_runs
    assert s["block_runs_per_task_chains"] == 3 + 3 + 4
    assert s["block_runs_public"] == 18
    assert s["shared_prefix_all"] == 0
    assert s["tasks"]["seg"]["shared_prefix"] == {"depth": 0, "normal": 1}
    assert s["tasks"]["normal"]["skipped"] == ["s1b0", "s1b1"]
    assert s["never_executed"] == []
    s2 = cut_of(model, _plan(model, CASES["all_shared"][0]), ALL).summary()
    assert s2["never_executed"] == ["s0b1", "s2b0"] and s2["shared_prefix_all"] == 6


@pytest.mark.parametrize(("edit", "tasks", "message"), [
    (lambda p: p["policy"].pop("depth"), ALL, "no policy for task 'depth'"),
    (lambda p: p["policy"].update(sky=[1] * 6), ALL, "unknown task 'sky'"),
    (lambda p: None, ["seg", "sky"], "unknown task 'sky'"),
    (lambda p: p["policy"]["seg"].append(1), ALL, "has 7 entries"),
    (lambda p: p["policy"]["seg"].__setitem__(3, -1), ALL, "block s1b1 is -1"),
    (lambda p: p.__setitem__("blocks", p["blocks"][:-1]), ALL, "does not match the model's blocks"),
    (lambda p: None, [], "tasks: List should have at least 1 item"),
])
def test_validate_plan_one_line_errors(model, edit, tasks, message) -> None:
    plan = _plan(model, {t: [1] * 6 for t in ALL})
    edit(plan)
    with pytest.raises(DeploymtlError, match=message) as info:
        cut_of(model, plan, tasks)
    assert "\n" not in info.value.one_line()


def test_validate_plan_allows_missing_unselected_task(model) -> None:
    plan = _plan(model, {"seg": [1] * 6, "depth": [0] * 6})
    assert set(cut_of(model, plan, ["depth"]).build().outputs) == {"depth"}


def test_draw_grid(model, tmp_path) -> None:
    import matplotlib.pyplot as plt

    policy = CASES["disjoint"][0]
    fig, ax = plt.subplots(figsize=(6, 2))
    cut_of(model, _plan(model, policy), ALL).draw(ax)
    marks = [t.get_text() for t in ax.texts]
    assert len(marks) == 18 and marks.count("\u2715") == 18 - 10
    assert [t.get_text() for t in ax.get_xticklabels()][2] == "s1b0*"
    fig.savefig(tmp_path / "policy.png")
    plt.close(fig)
    assert (tmp_path / "policy.png").stat().st_size > 1000
