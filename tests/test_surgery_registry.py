"""A new head type is one layer-registry entry, used by every family.

`ToyHead` below is a head no deploymtl module knows. The only thing this file adds to deploymtl is its registry
entry (`register(ToyHead, params=...)`: the emission and the parameter count); with it, each family's supernet
whose dense heads are ToyHeads prunes to a static model equal to the supernet in deployed mode, holding exactly
the parameters the plan says, with the proof of removal passing. Without the entry, the surgeon names the
missing layer type (a deploymtl bug, exit 3): nothing else stood in for it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deploymtl.errors import InternalError
from deploymtl.families import FAMILY_NAMES, build_supernet, family_spec
from deploymtl.models.layers import LightHead
from deploymtl.surgery.builder import GraphBuilder
from deploymtl.surgery.plan import make_plan
from deploymtl.surgery.registry import LAYERS, conv_params, conv_reading, register
from deploymtl.surgery.verify import prove_removal
from deploymtl.tasks import TaskSpec

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TASKS = [TaskSpec(name="seg", kind="segmentation", channels=5), TaskSpec(name="depth", kind="depth"),
         TaskSpec(name="normal", kind="normals")]
MODEL = {"blocks": [1, 1, 1, 1], "width": 4, "head_hidden": 6}


class ToyHead(nn.Module):
    """relu(bn(conv1x1(x))) + conv1x1'(x) -> conv3x3 -> bilinear resize: two layers read the input."""

    def __init__(self, cin: int, cout: int, hidden: int = 5) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(cin, hidden, 1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        self.skip = nn.Conv2d(cin, hidden, 1)
        self.out = nn.Conv2d(hidden, cout, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h = F.relu(self.bn(self.reduce(x))) + self.skip(x)
        return F.interpolate(self.out(h), size=size, mode="bilinear", align_corners=False)


# -- the entry: everything deploymtl needs to know about ToyHead ---------------------------------------------------
def toy_params(m: ToyHead, cin: int | None = None) -> int:
    """Both input layers read `cin` channels (what the family hands the head); BN folds into reduce's bias."""
    return conv_params(m.reduce, cin) + conv_params(m.skip, cin) + conv_params(m.out)


def emit_toy(b: GraphBuilder, m: ToyHead, x: str, prefix: str, in_map: torch.Tensor | None = None) -> str:
    h = b.relu(f"{prefix}_relu", conv_reading(b, f"{prefix}_reduce", x, m.reduce, m.bn, in_map))
    h = b.add(f"{prefix}_add", h, conv_reading(b, f"{prefix}_skip", x, m.skip, None, in_map))
    return b.resize_to_input(f"{prefix}_up", b.conv_module(f"{prefix}_out", h, m.out))


@pytest.fixture()
def toy_entry():
    register(ToyHead, params=toy_params)(emit_toy)
    yield LAYERS[ToyHead]
    del LAYERS[ToyHead]


# -- a tiny supernet of each family with ToyHeads ------------------------------------------------------------------
def _input_channels(head: nn.Module) -> int:
    return next(m for m in head.modules() if isinstance(m, (nn.Conv2d, nn.Linear))).in_channels


def toy_supernet(family: str, seed: int = 0):
    """The family's supernet with ToyHeads for seg and normal (depth keeps its LightHead), random BN statistics
    and decisions that remove something of every kind the family removes."""
    torch.manual_seed(seed)
    model = build_supernet(family, TASKS, MODEL, {})
    for t in ("seg", "normal"):
        model.heads[t] = ToyHead(_input_channels(model.heads[t]), model.heads[t].out.out_channels)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.3, 0.3, generator=gen)
    d = model.decisions()
    if family == "adashare":
        d["policy"] = {"seg": [1, 0, 1, 0], "depth": [1, 1, 0, 0], "normal": [0, 1, 1, 0]}  # none runs block 3
    elif family == "gated":
        d["gates"] = {t: [torch.randint(0, 2, (s.cout,), generator=gen).tolist() for s in model.slots]
                      for t in model.task_names}
        model.beta.data.normal_(generator=gen)
    else:
        with torch.no_grad():
            model.alpha_p.fill_(-1e4)  # every aux->primary link exactly 0: the auxiliary column goes
        d = model.decisions()
    model.set_decisions(d)
    return model.eval()


def _cut(model, options: dict | None = None):
    family = model.family
    tasks = ["seg", "depth", "normal"] if family != "auxnas" else ["seg"]
    return family_spec(family).surgeon.prepare(model, make_plan(model, family, tasks=tasks, options=options))


CASES = [(f, {}) for f in FAMILY_NAMES] + [("gated", {"fold_blends": "always"}), ("gated", {"fold_blends": "never"})]


@pytest.mark.parametrize(("family", "options"), CASES)
def test_a_toy_head_prunes_in_every_family(toy_entry, family: str, options: dict) -> None:
    model = toy_supernet(family)
    cut = _cut(model, options)
    cut.apply()
    builder = cut.build()
    static = builder.build()
    x = torch.randn(2, 3, 32, 40, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want, got = model(x), static(x)
    assert list(got) == cut.tasks
    for t in cut.tasks:
        assert got[t].shape == want[t].shape
        assert (got[t] - want[t]).abs().max().item() < 1e-4, t
    static_params = sum(p.numel() for p in static.parameters())
    assert static_params == cut.expected_params()
    names = {n["name"] for n in builder.nodes}
    assert {"head_seg_reduce", "head_seg_skip", "head_seg_add", "head_seg_out"} <= names  # the entry's nodes
    assert isinstance(model.heads["depth"], LightHead) and ("head_depth_conv" in names) == (family != "auxnas")
    if options.get("fold_blends") == "always":  # the blend is folded into both input layers of the head
        cin = {n["name"]: n["attrs"]["cin"] for n in builder.nodes if n["op"] == "conv"}
        assert cin["head_seg_reduce"] == cin["head_seg_skip"] > model.slots[-1].cout
    proof = prove_removal(model, cut.build, x, cut.tasks, static_params=static_params,
                          expected_params=cut.expected_params())
    assert proof, proof.to_dict()
    assert proof.removed_elements > 0


def test_without_its_entry_the_surgeon_names_the_missing_layer_type() -> None:
    assert ToyHead not in LAYERS
    cut = _cut(toy_supernet("adashare"))
    for step in (cut.build, cut.expected_params):
        with pytest.raises(InternalError, match="no layer type registered for ToyHead") as info:
            step()
        assert info.value.exit_code == 3


def test_the_count_is_an_independent_check_of_the_emission(toy_entry) -> None:
    """An entry whose count disagrees with what it emits fails the proof of removal: the count is derived from
    the layer shapes, never from the builder."""
    LAYERS[ToyHead] = type(toy_entry)(emit=toy_entry.emit, params=lambda m, cin=None: toy_params(m, cin) + 1)
    model = toy_supernet("gated")
    cut = _cut(model)
    cut.apply()
    static_params = sum(p.numel() for p in cut.build().build().parameters())
    assert cut.expected_params() == static_params + 2  # two ToyHeads, one parameter too many each
    proof = prove_removal(model, cut.build, torch.randn(1, 3, 32, 40), cut.tasks, static_params=static_params,
                          expected_params=cut.expected_params())
    assert not proof and not proof.params_match
