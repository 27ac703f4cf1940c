"""The StaticModel's explicit fast path (`StaticModel.infer`, running `ir.schedule.Schedule`): same values as the
node-by-node interpreter, fewer steps (ReLUs fused in place, sums accumulated into dead tensors); `forward` is always
the interpreter (autograd, hooks, tracing see every node)."""

from __future__ import annotations

import pytest
import torch
from surgery_helpers import cut_of
from test_gated_surgery import NAMES, make, plan_of

from deploymtl.ir import StaticModel
from deploymtl.surgery.builder import GraphBuilder

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _block(dilation: int = 1) -> StaticModel:
    """stem conv -> relu -> [conv -> relu -> conv] + ds -> add -> relu; the stem relu is also an output."""
    g = torch.Generator().manual_seed(0)
    b = GraphBuilder()

    def conv(name: str, x: str, cin: int, cout: int, k: int, d: int = 1) -> str:
        return b.conv(name, x, torch.randn(cout, cin, k, k, generator=g), torch.randn(cout, generator=g),
                      padding=d * (k // 2), dilation=d)

    stem = b.relu("stem_relu", conv("stem", "image", 3, 8, 3))
    h = b.relu("relu1", conv("conv1", stem, 8, 16, 3, dilation))
    h = conv("conv2", h, 16, 16, 3, dilation)
    out = b.relu("out", b.add("add", h, conv("ds", stem, 8, 16, 1)))
    b.output("feat", stem)
    b.output("y", out)
    return b.build()


def _reference(model: StaticModel, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():  # forward: the interpreter, one module call per node
        return dict(model(x))


def test_schedule_fuses_relus_and_accumulates_in_place() -> None:
    model = _block()
    x = torch.randn(2, 3, 12, 16)
    got = model.infer(x)
    plan = model._schedule
    assert plan is not None
    # 8 nodes -> 5 steps: stem+relu, conv1+relu, conv2, ds, add(into conv2)+relu. The stem's relu is an output
    # read by two convs, so it is a value of its own; nothing writes into it.
    assert [fn.__qualname__.split(".")[0] for fn, *_ in plan.steps] == ["_conv"] * 4 + ["_add"]
    assert len(plan.steps) == 5 and len(model._order) == 8
    want = _reference(model, x)
    for k in want:
        assert torch.equal(got[k], want[k]), k  # bit-identical: same ops in the same order
    assert torch.equal(got["feat"], torch.relu(torch.nn.functional.conv2d(
        x, model.layers["stem"].weight, model.layers["stem"].bias, padding=1)))


def test_input_is_not_modified() -> None:
    model = _block()
    x = torch.randn(1, 3, 12, 16)
    before = x.clone()
    model.infer(x)
    assert torch.equal(x, before)


def test_dilated_batch1_bias_added_after_the_conv_matches() -> None:
    model = _block(dilation=2)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 7, 9, generator=torch.Generator().manual_seed(batch))
        got = model.infer(x)
        want = _reference(model, x)
        for k in want:
            # batch 1: bias added after the native dilated kernel (rounding may differ); batch 3: the same call
            assert torch.allclose(got[k], want[k], rtol=0, atol=1e-5), k
            if batch > 1:
                assert torch.equal(got[k], want[k]), k


def test_forward_is_always_the_interpreter() -> None:
    """Inference mode, hooks, autograd, torch.export: `forward` calls every node's module and never compiles the
    schedule; `infer` runs the schedule and fires no hook."""
    model = _block()
    x = torch.randn(1, 3, 12, 16)
    seen: list[torch.Tensor] = []
    calls: list[str] = []
    handles = [layer.register_forward_hook(lambda _m, _i, _o, n=name: calls.append(n))
               for name, layer in model.layers.items()]
    handles.append(model.layers["conv2"].register_forward_hook(lambda _m, _i, out: seen.append(out)))
    try:
        with torch.inference_mode():
            out = model(x)
        assert calls == [layer for _, layer, _ in model._order] and model._schedule is None
        calls.clear()
        fast = model.infer(x)
        assert calls == [] and len(seen) == 1  # the schedule skips Module.__call__: hooks do not fire
    finally:
        for h in handles:
            h.remove()
    for k in out:
        assert torch.equal(fast[k], out[k]), k
    # The hooked conv2 output is the interpreter's own tensor: no later add/relu wrote into it.
    h = torch.relu(torch.nn.functional.conv2d(torch.relu(torch.nn.functional.conv2d(
        x, model.layers["stem"].weight, model.layers["stem"].bias, padding=1)), model.layers["conv1"].weight,
        model.layers["conv1"].bias, padding=1))
    assert torch.allclose(seen[0], torch.nn.functional.conv2d(h, model.layers["conv2"].weight,
                                                              model.layers["conv2"].bias, padding=1), atol=1e-5)
    out = model(x.requires_grad_())  # autograd: the interpreter, and a gradient flows
    out["y"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    program = torch.export.export(model, (torch.randn(2, 3, 12, 16),), strict=False)
    relus = [n for n in program.graph.nodes if n.op == "call_function" and "relu" in str(n.target)]
    assert len(relus) == 3  # traced: one relu per relu node, module scopes intact
    assert all(n.meta.get("nn_module_stack") for n in relus)


@pytest.mark.parametrize(("fold", "merge"), [("auto", True), ("auto", False), ("never", False), ("always", True)])
def test_gated_graph_same_values_fewer_steps(fold: str, merge: bool) -> None:
    """Merged, branches read `narrow` views of one conv's output: the plan must never write into a view."""
    model = make()
    plan = plan_of(model, seed=3)
    cut = cut_of(model, plan, NAMES, {"fold_blends": fold, "merge_convs": merge})
    cut.apply()
    static = cut.build().build()
    x = torch.randn(2, 3, 32, 40, generator=torch.Generator().manual_seed(5))
    got = static.infer(x)
    want = _reference(static, x)
    for t in NAMES:
        assert torch.equal(got[t], want[t]), t
    relus = sum(1 for n in static.spec["nodes"] if n["op"] == "relu")
    # Every relu of the gated graph reads a conv or add output read by nothing else: all fused.
    assert len(static._schedule.steps) == len(static._order) - relus


def test_a_copy_runs_its_own_weights() -> None:
    import copy

    model = _block()
    x = torch.randn(2, 3, 12, 16)
    model.infer(x)  # compiles the schedule
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.layers["conv2"].bias.add_(1.0)
    assert twin._schedule is None
    assert not torch.equal(twin.infer(x)["y"], model.infer(x)["y"])
    assert torch.equal(twin.infer(x)["y"], _reference(twin, x)["y"])


def test_views_are_never_written_in_place() -> None:
    """Two `narrow` views of one tensor: a ReLU reading the first (its only reader) must not write through it into
    the tensor the second view still reads."""
    g = torch.Generator().manual_seed(0)
    b = GraphBuilder()
    h = b.conv("conv", "image", torch.randn(8, 3, 3, 3, generator=g), torch.randn(8, generator=g), padding=1)
    r = b.relu("relu", b.narrow("first", h, 0, 4))
    b.output("y", b.add("add", r, b.narrow("again", h, 0, 4)))
    model = b.build()
    x = torch.randn(2, 3, 6, 8)
    got = model.infer(x)["y"]
    want = _reference(model, x)["y"]
    assert torch.equal(got, want) and bool((want < 0).any())  # negatives survive: the second view saw no ReLU
