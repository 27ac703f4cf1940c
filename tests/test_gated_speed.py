"""GatedMTL static graph built for few copies: materialised blends select from one concat per layer, and psi' is
one wsum of the phi'_t (on CPU every extra op and copy costs latency that the FLOPs do not show)."""

from __future__ import annotations

import re

import pytest
import torch
from test_gated_surgery import NAMES, make, plan_of

from deploymtl.surgery import gated as surgeon

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _build(model, plan: dict, tasks: list[str], fold: str):
    options = {"fold_blends": fold}
    surgeon.apply_plan(model, plan)
    builder = surgeon.build_graph(model, plan, tasks, options)
    static = builder.build()
    x = torch.randn(2, 3, 32, 40, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want, got = model.set_deployed(True)(x), static(x)
    err = max((got[t] - want[t]).abs().max().item() for t in tasks)
    assert err < 1e-4, f"max abs error {err}"
    assert sum(p.numel() for p in static.parameters()) == surgeon.expected_params(model, plan, tasks, options)
    return builder


@pytest.mark.parametrize("seed", [0, 1, 3])
def test_materialised_blends_share_one_concat_per_layer(seed: int) -> None:
    model = make()
    plan = plan_of(model, seed=seed)
    builder = _build(model, plan, NAMES, "never")
    nodes = {n["name"]: n for n in builder.nodes}
    # One concat per layer; the classifier head alone reads its own (it selects after pooling, fewer channels).
    concats = [n["name"] for n in builder.nodes if n["op"] == "concat"]
    assert set(concats) - {f"l{layer}_cat" for layer in range(model.num_layers)} == {"head_cls_in_cat"}
    # No select per mixing term any more: every select is a whole blend (`_in_sel`) or a residual's rows.
    selects = [n["name"] for n in builder.nodes if n["op"] == "select"]
    assert selects and not [s for s in selects if re.search(r"_sel\d+$", s)]
    mixes = [n for n in builder.nodes if n["op"] == "wsum"]
    assert len(mixes) == model.num_layers - 1  # psi' of every layer but the last, each needed by a shared branch
    for mix in mixes:
        layer = int(mix["name"][1:].split("_")[0]) - 1  # node l{l+1}_psi_in_mix holds psi'^l
        assert len(mix["inputs"]) == len(NAMES)
        weight = builder.state[f"layers.{mix['name']}.weight"]
        want = model.mixing(layer).detach().view(-1, 1).expand_as(weight)
        assert torch.allclose(weight, want)
        # The task readers of the next layer read the very nodes the mixture sums (one copy per blend).
        for t, src in zip(NAMES, mix["inputs"], strict=True):
            reader = nodes.get(f"l{layer + 1}_phi_{t}_conv1")
            if reader is not None:
                assert reader["inputs"] == [src]


def test_auto_mode_copies_less_than_one_concat_per_reader() -> None:
    """Under "auto", a task subset and a plan where some blends fold: parity and counts hold, and the
    materialised readers of a layer share its concat."""
    model = make("aspp")
    plan = plan_of(model, seed=2)
    for tasks in (NAMES, ["depth", "cls"]):
        builder = _build(model, plan, tasks, "auto")
        ops = {n["name"]: n["op"] for n in builder.nodes}
        blends = [n for n in builder.nodes if n["name"].endswith("_in_sel") and not n["name"].startswith("head_cls")]
        assert blends
        for n in blends:  # a materialised blend selects from its layer's concat (or a lone branch), not its own
            assert re.fullmatch(r"l\d_cat", n["inputs"][0]) or ops[n["inputs"][0]] == "relu", n
        # A concat of its own is made only for a reader that folds the blend into its weights.
        for n in builder.nodes:
            if n["op"] == "concat" and n["name"].endswith("_in_cat"):
                readers = [m for m in builder.nodes if n["name"] in m["inputs"]]
                assert readers and all(m["op"] in ("conv", "gap") for m in readers)
