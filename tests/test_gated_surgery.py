"""GatedMTL surgeon on hand-set plans: parity static vs supernet deployed, exact parameter counts, structure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from surgery_helpers import cut_of  # noqa: E402

from deploymtl.errors import DeploymtlError  # noqa: E402
from deploymtl.families import build_supernet  # noqa: E402
from deploymtl.ir import build_static  # noqa: E402
from deploymtl.models.gated import GatedSupernet  # noqa: E402
from deploymtl.tasks import TaskSpec  # noqa: E402

TASKS = [TaskSpec(name="seg", kind="segmentation", channels=5), TaskSpec(name="depth", kind="depth"),
         TaskSpec(name="cls", kind="classification", channels=4)]
NAMES = [t.name for t in TASKS]
# blocks [2,1,1,1]: layer 0 and layer 1 have identity residuals (layer 1's reads the mixture psi'),
# layers 2-4 have a ds shortcut. Widths 8, 8, 16, 32, 64.
MODEL = {"blocks": [2, 1, 1, 1], "width": 8, "head_hidden": 8}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make(head: str = "light") -> GatedSupernet:
    torch.manual_seed(0)
    model = build_supernet("gated", TASKS, {**MODEL, "head": head}, {})
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # random BN statistics so folding is really exercised
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.5, 0.5, generator=gen)
        model.beta.normal_(generator=gen)
    return model.eval()


def plan_of(model: GatedSupernet, fill=None, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    gates = {}
    for t in model.task_names:
        gates[t] = [[int(fill) if fill is not None else int(torch.rand((), generator=gen) > 0.5)
                     for _ in range(s.cout)] for s in model.slots]
    return {"rule": "alpha>0", "gates": gates}


def check(model: GatedSupernet, plan: dict, tasks: list[str] | None = None, round_channels: int = 1,
          merge: bool = True, fold: str = "auto"):
    """Build the static model and assert parity with the deployed supernet and the exact parameter count."""
    tasks = tasks or model.task_names
    options = {"round_channels": round_channels, "merge_convs": merge, "fold_blends": fold}
    cut = cut_of(model, plan, tasks, options)
    cut.apply()
    builder = cut.build()
    static = builder.build()
    x = torch.randn(3, 3, 32, 40, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = model.set_deployed(True)(x)
        got = static(x)
    assert sorted(got) == sorted(tasks)
    for t in tasks:
        err = (got[t] - want[t]).abs().max().item()
        assert err < 1e-4, f"task {t}: max abs error {err}"
    assert sum(p.numel() for p in static.parameters()) == cut.expected_params()
    return builder, static


def node_names(builder) -> list[str]:
    return [n["name"] for n in builder.nodes]


def test_all_shared_removes_every_task_branch() -> None:
    model = make()
    builder, static = check(model, plan_of(model, fill=0))
    names = node_names(builder)
    assert not [n for n in names if "_phi_" in n]
    assert {f"l{layer}_psi_conv2" for layer in range(5)} <= set(names)
    # Hand count: stem; shared blocks (conv1 + conv2 + ds, BN folded into biases); the wsum of layer 1's
    # residual (one term per channel: psi' = (sum_t w_t) psi); three heads reading 64 channels.
    count = 8 * 3 * 49 + 8
    for cin, cout, ds in [(8, 8, False), (8, 8, False), (8, 16, True), (16, 32, True), (32, 64, True)]:
        count += (cout * cin * 9 + cout) + (cout * cout * 9 + cout) + ((cout * cin + cout) if ds else 0)
    count += 8  # wsum (1, 8)
    count += 2 * (8 * 64 * 9 + 8) + (5 * 8 + 5) + (1 * 8 + 1)  # seg and depth light heads
    count += 4 * 64 + 4  # classifier
    assert sum(p.numel() for p in static.parameters()) == count
    assert [n["op"] for n in builder.nodes].count("wsum") == 1


@pytest.mark.parametrize("merge", [True, False])
def test_all_specific_removes_shared_branches_after_the_stem(merge: bool) -> None:
    model = make()
    builder, static = check(model, plan_of(model, fill=1), merge=merge)
    names = node_names(builder)
    assert not [n for n in names if "_psi" in n]
    assert "stem_conv" in names
    assert {f"l4_phi_{t}_conv2" for t in NAMES} <= set(names)
    assert not [n for n in builder.nodes if n["op"] in ("wsum", "select")]
    # Each task reads its own branch: no blend to materialise. Merged, the last layer's task branches are
    # stacked once as the input of the light heads' grouped conv; unmerged, nothing is copied at all.
    concats = [n["name"] for n in builder.nodes if n["op"] == "concat"]
    assert concats == (["l4_cat"] if merge else [])


def test_layer_whose_shared_branch_is_unused() -> None:
    model = make()
    plan = plan_of(model, seed=3)
    for t in NAMES:
        plan["gates"][t][2] = [1] * 16
    builder, _ = check(model, plan)
    names = node_names(builder)
    assert not [n for n in names if n.startswith("l2_psi")]
    assert "l3_psi_conv2" in names and "l1_psi_conv2" in names


@pytest.mark.parametrize("head", ["light", "aspp"])
@pytest.mark.parametrize("seed", [0, 1])
def test_mixed_random_gates(head: str, seed: int) -> None:
    model = make(head)
    builder, _ = check(model, plan_of(model, seed=seed))
    ops = [n["op"] for n in builder.nodes]
    assert ops.count("wsum") >= 1 and ops.count("concat") > 0
    summary = cut_of(model, plan_of(model, seed=seed), NAMES).summary()
    kept = sum(layer["kept_filters"]["shared"] + sum(layer["kept_filters"]["specific"].values())
               for layer in summary["layers"])
    assert summary["kept_filters"] == kept
    assert summary["branches_total"] == 5 * 4


def _reader_widths(builder) -> dict[str, int]:
    return {n["name"]: n["attrs"]["cin"] for n in builder.nodes if n["name"].endswith("_conv1")}


@pytest.mark.parametrize("fold", ["auto", "always", "never"])
def test_fold_modes_keep_parity(fold: str) -> None:
    """"always" folds every blend into the readers (wider convs), "never" materialises every blend, "auto"
    folds only where that does not widen the reader beyond the blend's channels."""
    model = make()
    plan = plan_of(model, seed=0)
    options = {"fold_blends": fold, "merge_convs": False}  # the modes of a branch reading a blend on its own
    cut = cut_of(model, plan, NAMES, options)
    cut.apply()
    builder = cut.build()
    static = builder.build()
    x = torch.randn(2, 3, 32, 40)
    with torch.no_grad():
        want, got = model.set_deployed(True)(x), static(x)
    assert max((got[t] - want[t]).abs().max().item() for t in NAMES) < 1e-4
    assert sum(p.numel() for p in static.parameters()) == cut.expected_params()
    blend_width = {f"l{i + 1}": s.cout for i, s in enumerate(model.slots[:-1])}
    widest = {name: cin - blend_width[name.split("_")[0]] for name, cin in _reader_widths(builder).items()
              if not name.startswith("l0_")}
    if fold == "always":
        assert max(widest.values()) > 0
    else:
        assert max(widest.values()) <= 0
    if fold == "never":
        assert [n for n in builder.nodes if n["name"].endswith("_in_mix")]


def test_task_subset_keeps_only_what_the_subset_reads() -> None:
    model = make()
    plan = plan_of(model, seed=2)
    builder, static = check(model, plan, ["depth"])
    assert static.task_names == ["depth"]
    names = node_names(builder)
    assert "head_depth_conv" in names and not [n for n in names if n.startswith(("head_seg", "head_cls"))]
    # Nothing reads the other tasks' last-layer branches (the last layer has no shared output)...
    assert not [n for n in names if n.startswith(("l4_phi_seg", "l4_phi_cls"))]
    # ...but earlier they still feed the beta mixing of the shared path that depth reads.
    assert "l3_phi_seg_conv2" in names
    full = cut_of(model, plan, NAMES).expected_params()
    assert cut_of(model, plan, ["depth"]).expected_params() < full
    summary = cut_of(model, plan, ["depth"]).summary()
    assert summary["layers"][4]["kept_filters"]["specific"]["seg"] == 0
    assert "layer 4 task seg" in summary["removed"]


def test_round_channels_to_multiples_of_8() -> None:
    model = make()
    plan = plan_of(model, seed=4)
    builder, static = check(model, plan, round_channels=8)
    for node in builder.nodes:
        if node["name"].endswith(("_conv2", "_ds")) and node["name"].startswith("l"):
            cout = node["attrs"]["cout"]
            assert cout % 8 == 0, f"{node['name']} keeps {cout} filters"
    rounded, plain = (cut_of(model, plan, NAMES, {"round_channels": r}).expected_params() for r in (8, 1))
    assert rounded > plain
    # The graph is plain data: it rebuilds from spec + weights with the same outputs.
    rebuilt = build_static(builder.spec(), builder.state)
    x = torch.randn(1, 3, 32, 40)
    with torch.no_grad():
        assert all(torch.equal(rebuilt(x)[t], static(x)[t]) for t in NAMES)


@pytest.mark.parametrize(("tasks", "edit", "message"), [
    ([], None, "^plan: tasks: List should have at least 1 item"),
    (["seg", "normal"], None, "^tasks: unknown task 'normal'"),
    (["seg"], lambda g: g["depth"].pop(), "^decisions: GatedMTL plan gates.depth: 4 layers"),
    (["seg"], lambda g: g["cls"][4].pop(), "^decisions: GatedMTL plan gates.cls\\[4\\]: 63 channels"),
    (["seg"], lambda g: g["seg"][0].__setitem__(0, 0.5), "^decisions: GatedMTL plan gates.seg\\[0\\] has value 0.5"),
    (["seg"], lambda g: g.pop("cls"), "^decisions: GatedMTL plan has no gates for task 'cls'"),
])
def test_invalid_plans_raise(tasks, edit, message: str) -> None:
    """The plan is checked once, when it is prepared: no Cut of a bad plan exists; the error names the field."""
    model = make()
    plan = plan_of(model, seed=0)
    if edit:
        edit(plan["gates"])
    with pytest.raises(DeploymtlError, match=message) as info:
        cut_of(model, plan, tasks)
    assert "\n" not in info.value.one_line()


def test_bad_options() -> None:
    model = make()
    with pytest.raises(DeploymtlError, match="options.round_channels: Input should be greater than or equal to 1"):
        cut_of(model, plan_of(model), NAMES, {"round_channels": 0})
    with pytest.raises(DeploymtlError, match="options.fold_blends: Input should be 'auto', 'always' or 'never'"):
        cut_of(model, plan_of(model), NAMES, {"fold_blends": "sometimes"})
    with pytest.raises(DeploymtlError, match="options.merge_convs: Input should be a valid boolean"):
        cut_of(model, plan_of(model), NAMES, {"merge_convs": "maybe"})
    with pytest.raises(DeploymtlError, match="options.share_prefix: Extra inputs are not permitted"):
        cut_of(model, plan_of(model), NAMES, {"share_prefix": False})  # AdaShare's option, not GatedMTL's


def test_draw_bars_per_layer_and_task() -> None:
    model = make()
    fig, ax = plt.subplots()
    cut_of(model, plan_of(model, seed=1), ["seg"]).draw(ax)
    assert len(ax.patches) == 5 * 3 * 2  # layers x tasks x (specific, shared)
    heights = [p.get_height() for p in ax.patches]
    plan = plan_of(model, seed=1)
    assert heights[0] == sum(plan["gates"]["seg"][0])
    plt.close(fig)


@pytest.mark.parametrize(("tasks", "round_channels"), [(NAMES, 1), (["depth", "cls"], 8)])
def test_proof_of_removal_on_a_mixed_plan(tasks: list[str], round_channels: int) -> None:
    """Everything the static model drops has no influence on the kept outputs, and autograd sees through the
    surgeon (no weight is made outside autograd, so nothing needs probing)."""
    from deploymtl.surgery.verify import prove_removal

    model = make("aspp")
    plan = plan_of(model, seed=5)
    cut = cut_of(model, plan, tasks, {"round_channels": round_channels})
    cut.apply()
    static = cut.build().build()
    proof = prove_removal(model, cut.build, torch.randn(2, 3, 32, 40), tasks,
                          static_params=sum(p.numel() for p in static.parameters()),
                          expected_params=cut.expected_params())
    assert proof, proof.to_dict()
    assert proof.tracking == "autograd"
    assert proof.removed_elements > 0
